"""Labelled texts for building members, fitting ensemble policies and benchmarking, split like the pool.

Rows are read with the pool's readers (same `SourceSpec` format as the loop configs), mapped to (text, label),
de-duplicated by the pool's content key and assigned to train/val/test by `app.pool.split.assign_split`, so an
item is in the same split here as in the data pool built from the same files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.pool.normalize import clean_text, content_key
from app.pool.readers import iter_records
from app.pool.schemas import label_str, map_fields
from app.pool.split import assign_split


@dataclass(frozen=True)
class Split:
    """One split: texts (n,), integer labels (n,) indexing `label_names`, item ids (n,)."""

    texts: list[str]
    labels: np.ndarray
    item_ids: list[str]

    def head(self, n: int | None) -> "Split":
        """The first n rows (all when n is None)."""
        if n is None or n >= len(self.texts):
            return self
        return Split(self.texts[:n], self.labels[:n], self.item_ids[:n])

    def sample(self, n: int, seed: int) -> "Split":
        """n rows drawn without replacement (all when n >= size), in their original order."""
        if n >= len(self.texts):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self.texts), n, replace=False))
        return Split([self.texts[i] for i in idx], self.labels[idx], [self.item_ids[i] for i in idx])


@dataclass(frozen=True)
class LabelledData:
    """train / val / test splits and the class names (label i is label_names[i])."""

    train: Split
    val: Split
    test: Split
    label_names: list[str]
    skipped: int  # rows without text or with a label outside label_names, plus exact duplicates

    def get(self, split: str) -> Split:
        """The split called `split` ("train", "val" or "test")."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split = {split!r}; allowed: train, val, test")
        return getattr(self, split)


def load_labelled(sources: list, label_names: list[str], ratios: dict[str, float]) -> LabelledData:
    """Read labelled classification rows and split them by content hash.

    Args:
        sources: `app.pool.config.SourceSpec` list (fields / label_map / limit as in the loop configs).
        label_names: K class names; a row's label must map to one of them.
        ratios: {"train", "val", "test"} fractions summing to 1.

    Returns:
        LabelledData; within a split rows keep file order (first file first).

    Raises:
        FileNotFoundError: a source file is missing.
        ValueError: some split is empty (the message gives the sizes).
    """
    index = {name: i for i, name in enumerate(label_names)}
    rows: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "val": ([], [], []), "test": ([], [], [])}
    seen: set[str] = set()
    skipped = 0
    for spec in sources:
        for rec in iter_records(spec):
            mapped, err = (None, rec.error) if rec.data is None else map_fields("classify", spec, rec.data)
            if err or mapped is None or not isinstance(mapped.get("text"), str):
                skipped += 1
                continue
            text = clean_text(mapped["text"])
            lab, _ = label_str(mapped.get("label"))
            if not text or lab not in index:
                skipped += 1
                continue
            item_id = content_key("classify", {"text": text})
            if item_id in seen:
                skipped += 1
                continue
            seen.add(item_id)
            t, y, ids = rows[assign_split(item_id, ratios)]
            t.append(text)
            y.append(index[lab])
            ids.append(item_id)
    splits = {k: Split(t, np.asarray(y, dtype=np.int64), ids) for k, (t, y, ids) in rows.items()}
    sizes = {k: len(s.texts) for k, s in splits.items()}
    empty = [k for k, n in sizes.items() if n == 0 and ratios.get(k, 0) > 0]
    if empty:
        raise ValueError(f"labelled data: split(s) {empty} are empty (sizes {sizes}, {skipped} rows skipped); "
                         "add rows or change data.split")
    return LabelledData(splits["train"], splits["val"], splits["test"], list(label_names), skipped)
