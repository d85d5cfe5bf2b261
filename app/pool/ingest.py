"""The ingest pipeline as one pure function: records -> validated, deduplicated, split new rows.

read -> ``where`` filter -> map fields -> validate (bad rows to quarantine) -> exact dedup by item_id
(against the parent snapshot too) -> near-duplicate removal (against the parent too) -> split -> labels.
Nothing here touches the disk; ``DataPool`` writes the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from app.pool.columns import SERVE_KEYS, serve_fields, table_from_columns
from app.pool.config import PoolConfig, SourceSpec
from app.pool.dedup import (
    exact_duplicates,
    minhash_signatures,
    near_duplicates_by_embedding,
    near_duplicates_from_signatures,
)
from app.pool.normalize import CONTENT_FIELDS, content_string, hash_key
from app.pool.readers import Record
from app.pool.schemas import LABEL_FIELD, map_fields, validate_row
from app.pool.split import assign_split

log = logging.getLogger(__name__)
EmbedFn = Callable[[list[str]], np.ndarray]
_MAX_EXAMPLES = 20


@dataclass
class IngestResult:
    """New rows plus the bookkeeping the report and manifest need."""

    new: pa.Table
    rows_read: int
    removed: dict[str, int]
    quarantine: list[dict]
    read_by_source: dict[str, int]
    duplicate_examples: list[dict] = field(default_factory=list)
    signatures: np.ndarray | None = None  # (parent rows + new rows, K) MinHash, for the caller's cache


def _matches(got: object, want: object) -> bool:
    if isinstance(got, str) and not isinstance(want, str):  # TSV/CSV cells are strings
        return got == (str(want).lower() if isinstance(want, bool) else str(want))
    return got == want and isinstance(got, bool) == isinstance(want, bool)  # True must not match 1


def where_ok(raw: dict, where: dict) -> bool:
    """True when every ``where`` column is present in ``raw`` and equals the wanted value."""
    return all(col in raw and _matches(raw[col], want) for col, want in where.items())


def _read(cfg: PoolConfig, inputs: list[tuple[SourceSpec, Iterable[Record]]]):
    cands, quarantine, read_by_source, where_removed = [], [], {}, 0
    for spec, records in inputs:
        q0 = len(quarantine)
        n = 0
        for rec in records:
            n += 1
            reason = rec.error
            if reason is None:
                if spec.where and not where_ok(rec.data, spec.where):
                    where_removed += 1
                    continue
                canon, reason = map_fields(cfg.task, spec, rec.data)
                if reason is None:
                    clean, reason = validate_row(cfg.task, canon, cfg)
                if reason is None:  # live traffic carries what the endpoint answered
                    served, reason = serve_fields(rec.data)
                    clean.update(served)
            if reason is not None:
                quarantine.append({"source": spec.name, "row": rec.row, "reason": reason, "raw": rec.raw})
                continue
            clean.update(_source=spec.name, _row=rec.row, _role=spec.label_role)
            cands.append(clean)
        read_by_source[spec.name] = read_by_source.get(spec.name, 0) + n
        log.info("source %s: read %d rows, %d quarantined", spec.name, n, len(quarantine) - q0)
    return cands, quarantine, read_by_source, where_removed


def build_new_rows(
    cfg: PoolConfig,
    inputs: list[tuple[SourceSpec, Iterable[Record]]],
    parent: pa.Table,
    version: int,
    embed_fn: EmbedFn | None = None,
    parent_signatures: np.ndarray | None = None,
) -> IngestResult:
    """Run the ingest pipeline over ``inputs`` against the ``parent`` snapshot.

    Args:
        cfg: pool config (task, filters, split ratios, near-dup settings).
        inputs: (source spec, its records) pairs, read lazily in order.
        parent: the current snapshot (P rows); its rows are never removed.
        version: the version the new rows will be added in (fills ``added_in``).
        embed_fn: texts -> (n, d) embeddings, required when ``cfg.near_dup == "embedding"``.
        parent_signatures: (P, K) MinHash signatures of ``parent``, if the caller has them cached.

    Returns:
        IngestResult whose ``new`` table holds only the added rows, in input order.
    """
    task, content = cfg.task, CONTENT_FIELDS[cfg.task]
    cands, quarantine, read_by_source, where_removed = _read(cfg, inputs)
    rows_read = sum(read_by_source.values())
    keys = [content_string(task, c) for c in cands]
    ids = [hash_key(k) for k in keys]
    parent_ids = parent.column("item_id").to_pylist()
    n_par = len(parent_ids)
    examples: list[dict] = []

    def note(i: int, kind: str, dup_of: str) -> None:
        if len(examples) < _MAX_EXAMPLES:
            c = cands[i]
            examples.append({"source": c["_source"], "source_row": c["_row"], "kind": kind, "dup_of": dup_of})

    all_ids = parent_ids + ids
    exact = exact_duplicates(all_ids, n_fixed=n_par)
    for j, k in exact.items():
        note(j - n_par, "exact_dup", all_ids[k])
    surv = [i for i in range(len(cands)) if i + n_par not in exact]
    log.info("exact dedup: %d of %d new rows are duplicates", len(exact), len(cands))

    near: dict[int, int] = {}
    sig = None
    if cfg.near_dup == "minhash":
        if parent_signatures is None:
            par_rows = parent.select(list(content)).to_pylist()
            par_keys = [content_string(task, r) for r in par_rows]
            parent_signatures = minhash_signatures(par_keys, cfg.minhash_perms, cfg.seed)
        new_sig = minhash_signatures([keys[i] for i in surv], cfg.minhash_perms, cfg.seed)
        sig = np.concatenate([parent_signatures, new_sig])
        near = near_duplicates_from_signatures(sig, cfg.near_dup_threshold, cfg.seed, n_fixed=n_par)
    elif cfg.near_dup == "embedding":
        par_rows = parent.select(list(content)).to_pylist()
        texts = ["\n".join(r[f] for f in content) for r in par_rows + [cands[i] for i in surv]]
        emb = np.asarray(embed_fn(texts))
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"embed_fn returned shape {emb.shape}, expected ({len(texts)}, d)")
        near = near_duplicates_by_embedding(emb, cfg.near_dup_threshold, n_fixed=n_par)
    surv_ids = parent_ids + [ids[i] for i in surv]
    for j, k in near.items():
        note(surv[j - n_par], "near_dup", surv_ids[k])
    kept = [i for pos, i in enumerate(surv) if pos + n_par not in near]
    if sig is not None:
        kept_pos = [p for p in range(len(surv)) if p + n_par not in near]
        sig = np.concatenate([sig[:n_par], sig[n_par:][kept_pos]])
    log.info("near dedup (%s): removed %d rows; adding %d", cfg.near_dup, len(near), len(kept))

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lf = LABEL_FIELD[task]
    head = ("item_id", "split", "source", "source_row", "added_in", *content)
    tail = ("gold", "label", "label_source", "label_confidence", "annotator", "labelled_at", *SERVE_KEYS)
    cols: dict[str, list] = {c: [] for c in head + tail}
    for i in kept:
        c = cands[i]
        cols["item_id"].append(ids[i])
        cols["split"].append(assign_split(ids[i], cfg.split))
        cols["source"].append(c["_source"])
        cols["source_row"].append(c["_row"])
        cols["added_in"].append(version)
        for f in content:
            cols[f].append(c[f])
        value = c.get(lf) if lf else None
        usable = value is not None and c["_role"] == "label"
        cols["gold"].append(value)  # the dataset answer stays the evaluation reference in both roles
        cols["label"].append(value if usable else None)
        cols["label_source"].append("dataset" if usable else None)
        cols["label_confidence"].append(1.0 if usable else None)
        cols["annotator"].append(f"dataset:{c['_source']}" if usable else None)
        cols["labelled_at"].append(now if usable else None)
        for k in SERVE_KEYS:
            cols[k].append(c.get(k))
    return IngestResult(
        new=table_from_columns(task, cols),
        rows_read=rows_read,
        removed={"where": where_removed, "exact_dup": len(exact), "near_dup": len(near)},
        quarantine=quarantine,
        read_by_source=read_by_source,
        duplicate_examples=examples,
        signatures=sig,
    )
