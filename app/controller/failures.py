"""Evaluation failures → the next selection and the guideline review (7.1.5, error-driven selection).

* ``find_failures``: test items the candidate got wrong, or right with a low true-label probability.
* ``failure_bonus``: a bounded bonus for pool items near a failure (cosine similarity).
* ``reserve_for_failures``: the bounded share of the selection budget given to the highest bonuses,
  before the configured strategy fills the rest (it sees the reserved rows as ``exclude``).
* ``guideline_review_items``: failure clusters (``feedback.failure_clusters``) as review items.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def find_failures(probs: Any, target_idx: Any, low_score: float, max_failures: int) -> np.ndarray:
    """Indices of failed test items, worst first.

    failure_i  ⇔  argmax_k p_ik ≠ y_i  or  p_{i,y_i} < low_score; ordered by p_{i,y_i} ascending
    (ties by index), at most ``max_failures``.

    Args:
        probs: (n, K) class probabilities of the candidate.
        target_idx: (n,) true class index per item.
        low_score: true-label probability below which a correct item still counts.
        max_failures: most indices returned.

    Returns:
        (m,) int64 indices into the test set.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(target_idx)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probs must be (n, K) and target_idx (n,), got {p.shape} and {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"target_idx must be ints in [0, {p.shape[1]}), got {y[:5].tolist()}...")
    if not 0 < low_score <= 1 or max_failures < 1:
        raise ValueError(f"low_score must be in (0, 1] and max_failures >= 1, got {low_score}, {max_failures}")
    p_true = p[np.arange(p.shape[0]), y] if y.size else np.zeros(0)
    bad = np.flatnonzero((p.argmax(1) != y) | (p_true < low_score)) if y.size else np.zeros(0, np.int64)
    order = bad[np.argsort(p_true[bad], kind="stable")]
    return order[:max_failures].astype(np.int64)


def _unit(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"{name} must be a finite 2-D (rows, dim) array, got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norm, 1e-12))


def failure_bonus(pool_embeddings: Any, failure_embeddings: Any, k: int, max_bonus: float) -> tuple[np.ndarray, np.ndarray]:
    """Bonus of each pool item for resembling an evaluation failure.

    With unit rows x_i (pool) and f_j (failures), each failure's k nearest pool items by cosine
    (faiss ``IndexFlatIP``, exact) receive

        b_i = max_bonus · max(0, max_{j : i ∈ kNN_k(f_j)} cos(x_i, f_j)),   b_i = 0 for other items,

    so 0 ≤ b_i ≤ max_bonus: bounded, and larger for closer neighbours.

    Args:
        pool_embeddings: (n, d) pool item embeddings.
        failure_embeddings: (m, d) failed test item embeddings (same model); m may be 0.
        k: neighbours per failure (clamped to n).
        max_bonus: bonus at cosine 1.

    Returns:
        ``(bonus, nearest)``: (n,) float64 bonuses and (n,) int64 index of the failure that gave it (-1: none).
    """
    import faiss

    pool, fails = _unit("pool_embeddings", pool_embeddings), _unit("failure_embeddings", failure_embeddings)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not np.isfinite(max_bonus) or max_bonus <= 0:
        raise ValueError(f"max_bonus must be a finite number > 0, got {max_bonus!r}")
    n = pool.shape[0]
    bonus, nearest = np.zeros(n), np.full(n, -1, dtype=np.int64)
    if n == 0 or fails.shape[0] == 0:
        return bonus, nearest
    if pool.shape[1] != fails.shape[1]:
        raise ValueError(f"pool_embeddings have dim {pool.shape[1]} but failure_embeddings have dim {fails.shape[1]}")
    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(pool)
    sims, nn = index.search(fails, min(k, n))  # (m, k)
    for j in range(fails.shape[0]):  # m is small (<= feedback.max_failures): a loop keeps the argmax readable
        for s, i in zip(sims[j], nn[j]):
            if i >= 0 and s > 0 and max_bonus * s > bonus[i]:
                bonus[i], nearest[i] = max_bonus * float(s), j
    return np.minimum(bonus, max_bonus), nearest  # float32 rounding may give cos 1.0000001


def reserve_for_failures(bonus: Any, budget: int, share: float, exclude: Any = None) -> np.ndarray:
    """Rows the failure bonus claims before the strategy picks: the top ``q`` bonuses.

    q = min(⌊share · budget⌋, #{i : b_i > 0, i ∉ exclude}); ranked by b_i descending, ties by index.

    Returns:
        (q,) int64 row indices.
    """
    b = np.asarray(bonus, dtype=np.float64)
    if b.ndim != 1:
        raise ValueError(f"bonus must be 1-D, got shape {b.shape}")
    if budget < 0 or not 0 <= share <= 1:
        raise ValueError(f"budget must be >= 0 and share in [0, 1], got {budget}, {share}")
    ok = b > 0
    if exclude is not None and len(exclude):
        ok[np.asarray(exclude, dtype=np.int64)] = False
    cand = np.flatnonzero(ok)
    q = min(int(np.floor(share * budget + 1e-9)), cand.size)
    return cand[np.argsort(-b[cand], kind="stable")][:q].astype(np.int64)


def guideline_review_items(clusters: list[dict], failures: list[dict], iteration: int,
                           guideline_version: Any = None) -> list[dict[str, Any]]:
    """Failure clusters as guideline-review items (one per cluster) for the Labeler's review page.

    Args:
        clusters: ``app.controller.feedback.failure_clusters`` output (indices into ``failures``).
        failures: per failure ``{"text", "target", "pred", "p_true"}``.
        iteration: the controller iteration that produced them.
        guideline_version: the guideline the labels were written under.

    Returns:
        ``[{"id", "kind": "guideline_review", "iteration", "guideline_version", "size", "confusions",
        "examples": [{"text", "target", "pred", "p_true"}], "question"}]``, largest cluster first.
    """
    items = []
    for c in clusters:
        members = [failures[i] for i in c["indices"]]
        conf: dict[str, int] = {}
        for f in members:
            key = f"{f['target']} -> {f['pred']}"
            conf[key] = conf.get(key, 0) + 1
        top = max(conf, key=lambda k: (conf[k], k)) if conf else ""
        items.append({"id": f"iter{iteration}-cluster{c['cluster']}", "kind": "guideline_review", "iteration": iteration,
                      "guideline_version": guideline_version, "size": c["size"], "confusions": conf,
                      "examples": members[:3],
                      "question": f"{c['size']} similar test items failed (mostly {top}): does the guideline say how to label them?"})
    return items
