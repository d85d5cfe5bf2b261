"""Selection over embedding shards: streaming k-means / MMR, or any registered strategy in memory.

    from app.selection.engine import select_from_shards, save_selection
    res = select_from_shards("runs/r1/emb", "kmeans", budget=200, probs=p, exclude=done)
    save_selection(res, "runs/r1/selection.json", ids=EmbeddingShards("runs/r1/emb").ids(), strategy="kmeans")

``kmeans`` and ``mmr`` stream (O(n) memory; embeddings stay memory-mapped) when ``streaming`` is True, or
by default when the float64 copy the in-memory strategies make (n * d * 8 bytes) would exceed
``STREAM_BYTES``. Every other strategy (kcenter, combined, facility_location, ...) loads the embeddings and
calls ``app.selection.select``. The per-shard passes go through ``run_blocks``, which Ray Data replaces with
a parallel ``map_batches`` (see ``actors/selection_engine.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from app.selection.registry import SelectionInput, SelectionResult, select
from app.selection.shards import EmbeddingShards
from app.selection.streaming import (
    RunBlocks, kmeans_pick, lazy_mmr, normalised_entropy, run_blocks_local, train_centroids,
)
from app.selection.validation import SelectionInputError, param_float, validate_exclude, validate_probs

logger = logging.getLogger(__name__)

STREAM_BYTES = 2 << 30  # above 2 GiB of float64 embeddings, kmeans/mmr stream instead of loading
STREAMING = ("kmeans", "mmr")


def _covered(shards: EmbeddingShards, exclude: np.ndarray, labelled: np.ndarray | None) -> np.ndarray:
    parts = [shards.take(exclude).astype(np.float64)] if exclude.size else []
    if labelled is not None and len(labelled):
        parts.append(np.asarray(labelled, dtype=np.float64))
    return np.concatenate(parts) if parts else np.zeros((0, shards.dim))


def nearest_free_row(shards: EmbeddingShards, point: np.ndarray, free: np.ndarray) -> int:
    """Row nearest (L2) to ``point`` among rows where ``free`` (n,) is True: one streaming pass.

    k-means needs it only for a centroid none of whose rows is free, which is rare, so a pass per call is fine.
    """
    best, best_d = -1, np.inf
    for rows, emb in shards.blocks():
        ok = free[rows]
        if ok.any():
            dd = ((np.asarray(emb[ok], dtype=np.float64) - point) ** 2).sum(axis=1)
            j = int(np.argmin(dd))
            if dd[j] < best_d:
                best, best_d = int(rows[ok][j]), dd[j]
    return best


def stream_kmeans(shards: EmbeddingShards, budget: int, seed: int = 0, exclude: np.ndarray | None = None,
                  labelled_embeddings: np.ndarray | None = None, niter: int = 20,
                  max_points_per_centroid: int = 256, run_blocks: RunBlocks = run_blocks_local) -> SelectionResult:
    """k-means representatives over shards (the ``kmeans`` strategy, mode "nearest", k = budget).

    Centroids come from ``faiss.Kmeans`` on the candidates, or on a uniform sample of
    budget * max_points_per_centroid of them when there are more (faiss would subsample to that anyway);
    one pass assigns every row to its nearest centroid. With at most that many candidates the result equals
    ``select("kmeans", ...)`` for the same seed.

    Scores: "cluster" (nearest centroid id), "centroid_distance" (L2).
    """
    rng = np.random.default_rng(seed)
    exclude = np.zeros(0, dtype=np.int64) if exclude is None else exclude
    mask = np.ones(shards.n, dtype=bool)
    mask[exclude] = False
    cand = np.flatnonzero(mask)
    budget = min(budget, cand.size)
    faiss_seed = int(rng.integers(2**31 - 1))  # first draw, as the in-memory strategy makes it
    cap = budget * max_points_per_centroid
    sample = cand if cand.size <= cap else np.sort(rng.choice(cand, size=cap, replace=False))
    centroids = train_centroids(shards.take(sample), budget, faiss_seed, niter, max_points_per_centroid)
    cols = run_blocks(str(shards.root), {"centroids": centroids})
    cluster, d2 = cols["cluster"], cols["d2"]

    sel, reasons = kmeans_pick(cluster, d2, centroids, mask, _covered(shards, exclude, labelled_embeddings),
                               lambda c, free: nearest_free_row(shards, centroids[c], free))
    return SelectionResult(sel, {"cluster": cluster.astype(np.float64), "centroid_distance": np.sqrt(d2)}, reasons)


def stream_mmr(shards: EmbeddingShards, budget: int, seed: int = 0, relevance: np.ndarray | None = None,
               exclude: np.ndarray | None = None, labelled_embeddings: np.ndarray | None = None, lam: float = 0.5,
               run_blocks: RunBlocks = run_blocks_local) -> SelectionResult:
    """Greedy MMR over shards with lazy updates (``streaming.lazy_mmr``); same picks as the ``mmr`` strategy.

    relevance: (n,) in [0, 1], e.g. ``normalised_entropy(probs)``; all ones (pure novelty) when None.
    Covered points (exclude rows + labelled_embeddings) enter through one pass computing each row's max
    cosine to them; a last pass computes every row's value after the final pick.

    Scores: "relevance", "mmr" (value when picked; for other rows, after the last pick).
    """
    lam = param_float("mmr lam", lam, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    rel = np.ones(shards.n) if relevance is None else np.asarray(relevance, dtype=np.float64)
    exclude = np.zeros(0, dtype=np.int64) if exclude is None else exclude
    mask = np.ones(shards.n, dtype=bool)
    mask[exclude] = False
    cov = _covered(shards, exclude, labelled_embeddings)
    max_sim0 = run_blocks(str(shards.root), {"sim_to": cov})["max_sim"] if cov.shape[0] else None
    sel, reasons, value, picks = lazy_mmr(shards.take, rel, min(budget, int(mask.sum())), lam, mask, max_sim0, rng)
    final = run_blocks(str(shards.root), {"sim_to": picks})["max_sim"]
    if max_sim0 is not None:
        final = np.maximum(final, max_sim0)
    mmr = lam * rel - (1 - lam) * final
    mmr[sel] = value[sel]
    return SelectionResult(sel, {"relevance": rel, "mmr": mmr}, reasons)


def select_from_shards(shards: EmbeddingShards | str | Path, strategy: str, budget: int, seed: int = 0,
                       probs: np.ndarray | None = None, losses: np.ndarray | None = None,
                       exclude: np.ndarray | None = None, labelled_embeddings: np.ndarray | None = None,
                       streaming: bool | None = None, run_blocks: RunBlocks = run_blocks_local,
                       **params) -> SelectionResult:
    """Run ``strategy`` on the pool whose embeddings are in ``shards`` (rows in pool order).

    Args:
        shards: an ``EmbeddingShards`` or its directory.
        strategy: a registered name; "kmeans" / "mmr" can stream (see module docstring).
        budget: rows to pick (all candidates if fewer, as ``select`` does).
        probs: (n, K), losses: (n,), exclude: labelled row indices, labelled_embeddings: (m, d).
        streaming: force the streaming path (True), the in-memory path (False), or decide by size (None).
        run_blocks: how per-shard passes run (``run_blocks_local`` or the Ray Data version).
        **params: strategy parameters (streaming kmeans: niter, max_points_per_centroid; mmr: lam).
    """
    sh = shards if isinstance(shards, EmbeddingShards) else EmbeddingShards(shards)
    if streaming is None:
        streaming = strategy in STREAMING and sh.n * sh.dim * 8 > STREAM_BYTES
    if not streaming:
        x = sh.to_array()
        return select(strategy, SelectionInput(n=sh.n, probs=probs, embeddings=x, losses=losses, exclude=exclude,
                                               labelled_embeddings=labelled_embeddings), budget, seed, **params)
    if strategy not in STREAMING:
        raise SelectionInputError(f"strategy {strategy!r} cannot stream; streaming supports {STREAMING}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise SelectionInputError(f"budget must be an integer >= 1, got {budget!r}")
    exclude = None if exclude is None else validate_exclude(exclude, sh.n)
    if exclude is not None and exclude.size == sh.n:
        raise SelectionInputError(f"no candidates: all {sh.n} rows are in exclude")
    n_cand = sh.n - (0 if exclude is None else exclude.size)
    if budget > n_cand:
        logger.warning("budget %d is larger than the %d candidate rows; taking all of them", budget, n_cand)
    if strategy == "kmeans":
        unknown = sorted(set(params) - {"niter", "max_points_per_centroid"})
        if unknown:
            raise SelectionInputError(f"streaming kmeans got unknown params {unknown}; "
                                      "accepted: ['niter', 'max_points_per_centroid']")
        return stream_kmeans(sh, budget, seed, exclude, labelled_embeddings, run_blocks=run_blocks, **params)
    unknown = sorted(set(params) - {"lam"})
    if unknown:
        raise SelectionInputError(f"streaming mmr got unknown params {unknown}; accepted: ['lam']")
    rel = None if probs is None else normalised_entropy(validate_probs(probs, sh.n))
    return stream_mmr(sh, budget, seed, rel, exclude, labelled_embeddings, run_blocks=run_blocks, **params)


def save_selection(res: SelectionResult, path: str | Path, ids: np.ndarray | None = None,
                   strategy: str = "", meta: dict | None = None) -> Path:
    """Write ``path`` (JSON) and ``<path stem>.scores.npz`` (every component score for all n rows).

    JSON: {"strategy", "meta", "n", "selected": [rows in pick order], "ids": [...], "items": [{"row", "id",
    "rank", "reason", "scores": {component: value}}], "scores_file"}. Full score vectors go to the npz,
    so the JSON stays small for a million-row pool.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(res.scores.values()))) if res.scores else 0
    npz = path.with_suffix(".scores.npz")
    np.savez_compressed(npz, **{k: np.asarray(v) for k, v in res.scores.items()})

    def _id(i: int):
        if ids is None:
            return i
        v = ids[i]
        return v.item() if hasattr(v, "item") else v

    items = [{"row": int(i), "id": _id(int(i)), "rank": r, "reason": why,
              "scores": {k: float(v[i]) for k, v in res.scores.items()}}
             for r, (i, why) in enumerate(zip(res.selected, res.reasons))]
    doc = {"strategy": strategy, "meta": meta or {}, "n": n, "selected": [int(i) for i in res.selected],
           "ids": [it["id"] for it in items], "items": items, "scores_file": npz.name}
    path.write_text(json.dumps(doc, indent=1))
    return path



def report_selection(res: SelectionResult, out_dir: str | Path, take: Callable[[np.ndarray], np.ndarray] | None,
                     n: int, strategy: str, ids: np.ndarray | None = None, exclude: np.ndarray | None = None,
                     title: str | None = None, meta: dict | None = None) -> dict[str, str | None]:
    """Save ``selection.json`` (+ ``selection.scores.npz``) and ``selection_map.png`` under ``out_dir``.

    The map needs embeddings (``take``: rows -> (m, d)); with ``take=None`` only the JSON is written. When
    an MLflow run is active, the JSON and npz are logged under ``selection/`` and the map under ``plots/``.

    Returns:
        {"selection_json": path, "map_png": path or None}.
    """
    from app.selection.plots import selection_map_png

    out = Path(out_dir)
    js = save_selection(res, out / "selection.json", ids=ids, strategy=strategy, meta=meta)
    png = None
    if take is not None:
        png = selection_map_png(take, n, res.selected, out / "selection_map.png",
                                title or f"{strategy}: {len(res.selected)} of {n:,} rows", exclude=exclude)
    mlflow = sys.modules.get("mlflow")  # a run can only be active if something imported mlflow
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.log_artifact(str(js), "selection")
        mlflow.log_artifact(str(js.with_suffix(".scores.npz")), "selection")
    return {"selection_json": str(js), "map_png": None if png is None else str(png)}
