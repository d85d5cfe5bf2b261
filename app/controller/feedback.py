"""Evaluation feedback: how the failures of one iteration steer the next.

Three pure rules:

* ``priority_boost``: pool items close to misclassified test items are selected sooner
  (the "look for more data like what we got wrong" step of error-driven active learning).
* ``failure_clusters``: group the failures so a person can review the guideline per theme.
* ``adjust_training``: change a few trainer settings after a known kind of failure, and say why.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _matrix(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return np.ascontiguousarray(x)  # faiss wants C-contiguous float32


def priority_boost(pool_embeddings: Any, failure_embeddings: Any, k: int, boost: float) -> np.ndarray:
    """Priority multipliers for pool items that resemble evaluation failures.

    For every failure f_j, its k nearest pool items under squared L2 distance get multiplier
    ``boost``; every other item keeps 1:

        m_i = boost  if i ∈ ∪_j kNN_k(f_j, pool)  else 1

    For cosine similarity pass L2-normalised rows: on unit vectors ||a - b||² = 2 - 2 cos(a, b),
    so the neighbours are the same. Exact search (faiss ``IndexFlatL2``).

    Args:
        pool_embeddings: (n, d) embeddings of unlabelled pool items.
        failure_embeddings: (m, d) embeddings of misclassified test items; m may be 0.
        k: Neighbours per failure (>= 1); more than n is clamped to n.
        boost: Multiplier for the neighbours (>= 1; 1 turns the rule off).

    Returns:
        (n,) float64 multipliers, each 1 or ``boost``.
    """
    import faiss

    pool = _matrix("pool_embeddings", pool_embeddings)
    fails = _matrix("failure_embeddings", failure_embeddings)
    if fails.shape[0] and pool.shape[1] != fails.shape[1]:
        raise ValueError(f"pool_embeddings have dim {pool.shape[1]} but failure_embeddings have dim {fails.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not np.isfinite(boost) or boost < 1:
        raise ValueError(f"boost must be a finite number >= 1, got {boost!r}")
    mult = np.ones(pool.shape[0], dtype=np.float64)
    if pool.shape[0] == 0 or fails.shape[0] == 0:
        return mult
    index = faiss.IndexFlatL2(pool.shape[1])
    index.add(pool)
    _, nn = index.search(fails, min(k, pool.shape[0]))  # (m, k) pool row ids
    mult[np.unique(nn[nn >= 0])] = boost
    return mult


def failure_clusters(
    failure_embeddings: Any, texts: list[str], n_clusters: int, n_examples: int = 3, seed: int = 0
) -> list[dict[str, Any]]:
    """Group evaluation failures by k-means for guideline review.

    Args:
        failure_embeddings: (m, d) embeddings of misclassified items.
        texts: m texts, aligned with the rows.
        n_clusters: Wanted clusters; clamped to the number of distinct rows.
        n_examples: Texts shown per cluster, the ones closest to its centroid.
        seed: k-means seed (scikit-learn ``KMeans``, ``n_init=10``).

    Returns:
        ``[{"cluster": rank, "size": int, "examples": [str], "indices": [int]}, ...]``, largest
        cluster first (rank 0); ``indices`` lists every member, closest to the centroid first.
        Empty when m is 0.
    """
    from sklearn.cluster import KMeans

    x = _matrix("failure_embeddings", failure_embeddings)
    if len(texts) != x.shape[0]:
        raise ValueError(f"texts has {len(texts)} items but failure_embeddings has {x.shape[0]} rows")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters must be an int >= 1, got {n_clusters!r}")
    if x.shape[0] == 0:
        return []
    # More clusters than distinct points leaves empty clusters (and a scikit-learn warning).
    c = min(n_clusters, np.unique(x, axis=0).shape[0])
    km = KMeans(n_clusters=c, n_init=10, random_state=seed).fit(x.astype(np.float64))
    dist = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)  # (m,) to own centroid
    groups = []
    for label in range(c):
        members = np.flatnonzero(km.labels_ == label)
        members = members[np.argsort(dist[members], kind="stable")]
        groups.append(members)
    groups.sort(key=lambda g: (-len(g), int(g[0])))  # size desc; ties by first member for stability
    return [
        {"cluster": rank, "size": len(g), "examples": [texts[i] for i in g[:n_examples]], "indices": [int(i) for i in g]}
        for rank, g in enumerate(groups)
    ]


# reason -> (why, [(setting, op, amount)]). Setting names follow app.config.TrainerConfig.
# Halving the learning rate and adding warm-up are the usual first responses to a regression or
# a loss spike when fine-tuning from a good parent: smaller early steps stay near the parent.
_RULES: dict[str, tuple[str, list[tuple[str, str, float]]]] = {
    "regression": (
        "the candidate scored below the deployed model; smaller, slower-starting updates keep it closer to its parent",
        [("lr", "mul", 0.5), ("warmup_ratio", "add", 0.05)],
    ),
    "divergence": (
        "the training loss went NaN/inf or spiked; halve the step, warm up longer and clip gradients at 1.0",
        [("lr", "mul", 0.5), ("warmup_ratio", "add", 0.05), ("grad_clip", "min", 1.0)],
    ),
    "overfit": ("the eval loss rose while the train loss fell; one pass fewer over the data", [("epochs", "add", -1.0)]),
    "underfit": ("train and eval loss were still falling when training stopped; one more pass", [("epochs", "add", 1.0)]),
}
_LIMITS = {"warmup_ratio": (0.0, 0.5), "epochs": (1.0, float("inf"))}  # keep TrainerConfig-valid values


def adjust_training(prev_settings: dict[str, Any], reason: str) -> tuple[dict[str, Any], str]:
    """New trainer settings after a failure of kind ``reason``, with the explanation to record.

    Rules (``x`` is the previous value):

    =============  ===========================================================================
    regression     lr ← 0.5·x; warmup_ratio ← min(x + 0.05, 0.5)
    divergence     lr ← 0.5·x; warmup_ratio ← min(x + 0.05, 0.5); grad_clip ← min(x, 1.0)
    overfit        epochs ← max(x − 1, 1)
    underfit       epochs ← x + 1
    =============  ===========================================================================

    Args:
        prev_settings: Trainer settings (e.g. ``TrainerConfig.model_dump()``); not modified.
        reason: One of the rule names above.

    Returns:
        ``(new_settings, explanation)``: a copy with the changes applied, and one line such as
        ``"regression: lr 5e-05 -> 2.5e-05 (x0.5); warmup_ratio 0.1 -> 0.15 (+0.05). Why: ..."``.
    """
    if reason not in _RULES:
        raise ValueError(f"unknown reason {reason!r}; known reasons: {sorted(_RULES)}")
    why, steps = _RULES[reason]
    missing = [name for name, _, _ in steps if name not in prev_settings]
    if missing:
        raise ValueError(f"adjust_training({reason!r}) needs settings {missing} that prev_settings lacks")
    new = dict(prev_settings)
    changes = []
    for name, op, amount in steps:
        old = prev_settings[name]
        if isinstance(old, bool) or not isinstance(old, (int, float)) or not np.isfinite(old):
            raise ValueError(f"setting {name!r} must be a finite number, got {old!r}")
        value = {"mul": old * amount, "add": old + amount, "min": min(old, amount)}[op]
        lo, hi = _LIMITS.get(name, (-np.inf, np.inf))
        # 12 significant digits: turns 0.1 + 0.05 = 0.15000000000000002 into 0.15, keeps tiny lrs.
        value = float(f"{min(max(value, lo), hi):.12g}")
        new[name] = value
        how = {"mul": f"x{amount:g}", "add": f"{amount:+g}", "min": f"capped at {amount:g}"}[op]
        changes.append(f"{name} {old:g} -> {value:g} ({how})" if value != old else f"{name} {old:g} unchanged (at its limit)")
    return new, f"{reason}: {'; '.join(changes)}. Why: {why}"


def training_feedback(
    action: str, after: float, before: float, current: dict[str, Any]
) -> tuple[dict[str, Any], str] | None:
    """Trainer changes for the next iteration from this iteration's decision, or None to keep them.

    ==============================================  ============================================
    ``action == "adjust_training"`` (loss unstable)  ``adjust_training(current, "divergence")``
    otherwise, not deployed and ``after < before``   ``adjust_training(current, "regression")``
    otherwise                                        None
    ==============================================  ============================================

    Args:
        action: The gate's decision (``app.eval.gate``): deploy, rollback, collect_more_data,
            adjust_training, ...
        after: Candidate's metric (higher is better).
        before: Starting model's metric.
        current: Trainer settings the iteration trained with.

    Returns:
        ``(changed settings only, explanation)`` or None.
    """
    for name, v in (("after", after), ("before", before)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if action == "adjust_training":
        reason = "divergence"
    elif action != "deploy" and after < before:
        reason = "regression"
    else:
        return None
    new, why = adjust_training(current, reason)
    return {k: v for k, v in new.items() if current.get(k) != v}, why
