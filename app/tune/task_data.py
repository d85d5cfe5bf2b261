"""The labelled rows a study trains and validates on, and the task features warm starts compare.

Rows are read with the data pool's reader (`app.pool.readers.iter_records`, which knows the quirks of the
shipped TSVs), exact duplicate texts dropped, shuffled with the study's seed, and split into a training
prefix and a validation block that never overlap.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.tune.study import StudyError, TaskData


@dataclass(frozen=True)
class TaskRows:
    """Train and validation texts with label names; labels are the sorted label names."""

    train_texts: list[str]
    train_labels: list[str]
    val_texts: list[str]
    val_labels: list[str]
    labels: list[str]


def load_rows(task: TaskData, root: str | Path = ".") -> TaskRows:
    """Read `task.path`, map labels, drop rows without text and duplicate texts, shuffle with `task.seed`,
    take n_train rows then n_val rows.

    Raises:
        StudyError: the file is missing, a column is missing, or there are fewer than n_train + n_val rows.
    """
    from app.pool.config import SourceSpec
    from app.pool.readers import iter_records

    path = Path(task.path) if Path(task.path).is_absolute() else Path(root) / task.path
    if not path.is_file():
        raise StudyError(f"task.path: {str(path)!r} does not exist")
    texts, labels, seen = [], [], set()
    for rec in iter_records(SourceSpec(path=str(path))):
        if rec.data is None:
            continue
        for col in (task.text_field, task.label_field):
            if col not in rec.data:
                raise StudyError(f"task: column {col!r} not in {path.name}; columns: {sorted(rec.data)}")
        text = str(rec.data[task.text_field]).strip()
        raw = str(rec.data[task.label_field]).strip()
        if not text or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(task.label_map.get(raw, raw))
    need = task.n_train + task.n_val
    if len(texts) < need:
        raise StudyError(f"task: {path.name} has {len(texts)} distinct rows; n_train + n_val = {need}")
    order = np.random.Generator(np.random.PCG64(task.seed)).permutation(len(texts))
    tr, va = order[: task.n_train], order[task.n_train: need]
    names = sorted(set(labels))
    return TaskRows([texts[i] for i in tr], [labels[i] for i in tr], [texts[i] for i in va],
                    [labels[i] for i in va], names)


def label_entropy(labels: list[str]) -> float:
    """H = -sum_k p_k ln p_k (nats) of the empirical label distribution."""
    n = len(labels)
    return float(-sum(c / n * math.log(c / n) for c in Counter(labels).values())) if n else 0.0


def describe_task(rows: TaskRows, model_params: int) -> dict[str, float]:
    """`app.tune.warmstart.task_features` of a classification task (text length in whitespace words)."""
    from app.tune.warmstart import task_features

    mean_len = float(np.mean([len(t.split()) for t in rows.train_texts]))
    return task_features("classification", len(rows.train_texts), len(rows.labels),
                         min(label_entropy(rows.train_labels), math.log(len(rows.labels))) if len(rows.labels) > 1
                         else 0.0, max(mean_len, 1e-6), model_params)
