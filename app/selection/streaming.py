"""k-means and MMR for pools that live in shards: O(n) memory, embeddings read block by block.

Same algorithms and outputs as the in-memory ``kmeans`` (mode="nearest") and ``mmr`` strategies, rebuilt
around two facts: the per-row work (scoring, centroid assignment, similarity to a set of points) is one
independent pass per shard, which ``BlockScorer`` does and Ray Data can run in parallel; and MMR's per-row
value only ever falls as picks accumulate, so a stale value is an upper bound and most rows never need
recomputing (lazy evaluation, as in Minoux's accelerated greedy).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from app.selection.ranking import max_cosine, nearest_sqdist, unit_rows
from app.selection.shards import EmbeddingShards, ShardError


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """H(p) / log K in [0, 1] for (n, K) probabilities: MMR's relevance term (as in the ``mmr`` strategy)."""
    from app.selection.uncertainty import entropy

    return entropy(probs) / np.log(probs.shape[1])


class BlockScorer:
    """Per-shard pass (a Ray Data UDF, or called in a loop): batch {"shard": [i, ...]} -> per-row columns.

    Outputs "row" plus, depending on what was given:
      - centroids (k, d): "cluster" (nearest centroid) and "d2" (its squared L2 distance), via faiss;
      - head_w (d, K), head_b (K,): "relevance" = H(softmax(e W + b)) / log K (a linear scoring head);
      - sim_to (m, d): "max_sim" = max_j cos(e_i, s_j).
    Every shard is also checked for NaN/inf. Loads nothing heavy; ``threads`` caps faiss/BLAS threads so a
    1-CPU actor uses one core.
    """

    def __init__(self, root: str, centroids: np.ndarray | None = None, head_w: np.ndarray | None = None,
                 head_b: np.ndarray | None = None, sim_to: np.ndarray | None = None, threads: int | None = None):
        self.shards = EmbeddingShards(root)
        self.blocks = list(self.shards.blocks())
        self.centroids, self.head_w, self.head_b, self.sim_to = centroids, head_w, head_b, sim_to
        self.index = None
        if threads is not None:
            import faiss

            faiss.omp_set_num_threads(threads)
        if centroids is not None:
            import faiss

            self.index = faiss.IndexFlatL2(centroids.shape[1])
            self.index.add(np.ascontiguousarray(centroids, dtype=np.float32))

    def score(self, s: int) -> dict[str, np.ndarray]:
        """Columns for shard ``s``."""
        rows, emb = self.blocks[s]
        x = np.asarray(emb, dtype=np.float32)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ShardError(f"embeddings of pool rows {rows[bad][:10].tolist()} contain NaN/inf "
                             f"(shard {self.shards.names[s]}); every value must be finite")
        out = {"row": rows.astype(np.int64)}
        if self.index is not None:
            d2, idx = self.index.search(x, 1)
            out["cluster"], out["d2"] = idx[:, 0].astype(np.int64), np.maximum(d2[:, 0], 0.0).astype(np.float64)
        if self.head_w is not None:
            from scipy.special import softmax

            logits = x @ self.head_w + (0.0 if self.head_b is None else self.head_b)
            out["relevance"] = normalised_entropy(softmax(logits.astype(np.float64), axis=1))
        if self.sim_to is not None:
            out["max_sim"] = max_cosine(unit_rows(x.astype(np.float64)), self.sim_to)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = [self.score(int(s)) for s in batch["shard"]]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


RunBlocks = Callable[[str, dict], dict]  # (shard root, BlockScorer kwargs) -> {column: (n,) in row order}


def run_blocks_local(root: str, kwargs: dict) -> dict[str, np.ndarray]:
    """Run ``BlockScorer(root, **kwargs)`` over every shard in this process; columns scattered to row order."""
    scorer = BlockScorer(root, **kwargs)
    n = scorer.shards.n
    cols: dict[str, np.ndarray] = {}
    for s in range(len(scorer.blocks)):
        part = scorer.score(s)
        for k, v in part.items():
            if k != "row":
                cols.setdefault(k, np.empty(n, dtype=v.dtype))[part["row"]] = v
    return cols


def train_centroids(sample: np.ndarray, k: int, seed: int, niter: int = 20, max_points_per_centroid: int = 256):
    """Lloyd's k-means on ``sample`` (m, d) with ``faiss.Kmeans``; returns (k, d) float32 centroids."""
    import faiss

    km = faiss.Kmeans(sample.shape[1], k, niter=niter, seed=seed, verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return km.centroids


def kmeans_pick(cluster: np.ndarray, d2: np.ndarray, centroids: np.ndarray, mask: np.ndarray,
                covered: np.ndarray, nearest_free: Callable[[int, np.ndarray], int]) -> tuple[list[int], list[str]]:
    """One candidate per centroid: the nearest member, clusters ordered as in the ``kmeans`` strategy.

    Order: farthest centroid from the covered points first when there are any, else largest cluster first.
    A centroid with no free member takes ``nearest_free(c, taken)``, the nearest untaken candidate.

    Args:
        cluster: (n,) nearest-centroid id per row; d2: (n,) squared distance to it.
        centroids: (k, d); mask: (n,) bool candidates; covered: (m, d) covered points (m may be 0).
    """
    k = centroids.shape[0]
    cand = np.flatnonzero(mask)
    sizes = np.bincount(cluster[cand], minlength=k)
    order = cand[np.lexsort((d2[cand], cluster[cand]))]
    first = np.r_[True, cluster[order][1:] != cluster[order][:-1]]
    rep = {int(cluster[i]): int(i) for i in order[first]}
    rank_key = -nearest_sqdist(centroids.astype(np.float64), covered) if covered.shape[0] else -sizes.astype(float)
    taken = np.zeros(mask.shape[0], dtype=bool)
    sel, reasons = [], []
    for c in np.argsort(rank_key, kind="stable"):
        i = rep.get(int(c))
        why = f"nearest to centroid {c} (cluster size {sizes[c]})"
        if i is None or taken[i]:
            i = int(nearest_free(int(c), mask & ~taken))
            why = f"nearest free row to centroid {c} (no free member)"
        taken[i] = True
        sel.append(i)
        reasons.append(f"{why}, distance={np.sqrt(d2[i]):.3g}")
    return sel, reasons


def _unit32(x: np.ndarray) -> np.ndarray:
    # float32 on purpose: refreshes are (chunk, d) @ (d, picks) products, and single precision doubles their
    # speed; cosines carry ~1e-7 error, far below any real gap between MMR values
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def lazy_mmr(take: Callable[[np.ndarray], np.ndarray], rel: np.ndarray, budget: int, lam: float,
             mask: np.ndarray, max_sim: np.ndarray | None = None, rng: np.random.Generator | None = None,
             pool_size: int = 4096, chunk: int = 256) -> tuple[list[int], list[str], np.ndarray, np.ndarray]:
    """Exact greedy MMR with lazy updates (Carbonell & Goldstein 1998; lazy evaluation after Minoux 1978).

    MMR picks next = argmax_i v_i with v_i = lam rel_i - (1 - lam) max_{j in S u C} cos(e_i, e_j). Adding
    picks can only raise the max, so a value computed against an older S is an upper bound. We keep that
    bound for every row (O(n) memory) and only recompute the rows that could still win: a working set of
    the ``pool_size`` highest bounds, refreshed ``chunk`` rows at a time against the picks they have not
    seen. The top of the working set is accepted once it is exact and no bound outside it is higher, so
    the picks equal eager MMR's (first-pick ties broken with ``rng`` as the ``mmr`` strategy does; later
    exact ties go to the lowest row in the working set; cosines are computed in float32, so values agree
    with the float64 strategy to ~1e-7). Worst case O(n * budget * d) time like eager MMR, but as
    (chunk, d) x (d, t) matrix products instead of one pass over all rows per pick; never an n x n matrix.

    Args:
        take: rows (m,) -> (m, d) embeddings (e.g. ``EmbeddingShards.take`` or ``x.__getitem__``).
        rel: (n,) relevance; budget: picks; lam: trade-off in [0, 1]; mask: (n,) bool candidates.
        max_sim: (n,) max cosine to the covered points C (zeros if None).

    Returns:
        (selected rows, reasons, (n,) value of each pick when picked, (budget, d) float32 unit vectors of the
        picks).
    """
    n = rel.shape[0]
    max_sim = np.zeros(n) if max_sim is None else np.asarray(max_sim, dtype=np.float64).copy()
    ub = lam * rel - (1 - lam) * max_sim
    seen = np.zeros(n, dtype=np.int64)  # number of picks already folded into max_sim[i]
    avail = mask.copy()
    picks = None
    value = np.full(n, np.nan)
    sel, reasons = [], []
    pool, outside = np.zeros(0, dtype=np.int64), -np.inf

    def rebuild():
        cand = np.flatnonzero(avail)
        if cand.size <= pool_size:
            return cand, -np.inf
        part = np.argpartition(-ub[cand], pool_size)
        return np.sort(cand[part[:pool_size]]), ub[cand[part[pool_size]]]  # sorted: ties go to lowest row

    for t in range(budget):
        if t == 0 and rng is not None:
            # every value is exact before the first pick: mirror the mmr strategy's random tie-break
            score = np.where(avail, ub, -np.inf)
            best = np.flatnonzero(score == score.max())
            i = int(best[0] if best.size == 1 else best[rng.integers(best.size)])
        else:
            while True:
                if pool.size == 0:
                    pool, outside = rebuild()
                top = pool[np.argmax(ub[pool])]
                if seen[top] == t:
                    if ub[top] >= outside:
                        i = int(top)
                        break
                    pool, outside = rebuild()  # a row outside the working set may beat it
                    continue
                stale = pool[seen[pool] < t]
                stale = stale[np.argsort(-ub[stale], kind="stable")[:chunk]]
                u = _unit32(take(stale))
                s0 = int(seen[stale].min())
                max_sim[stale] = np.maximum(max_sim[stale], (u @ picks[s0:t].T).max(axis=1))
                seen[stale] = t
                ub[stale] = lam * rel[stale] - (1 - lam) * max_sim[stale]
        value[i] = ub[i]
        reasons.append(f"mmr={ub[i]:.3g} (relevance={rel[i]:.3g}, max sim to picked/covered={max_sim[i]:.3g})")
        sel.append(i)
        avail[i] = False
        pool = pool[pool != i]
        e = _unit32(take(np.array([i])))[0]
        if picks is None:
            picks = np.zeros((budget, e.shape[0]), dtype=np.float32)
        picks[t] = e
    return sel, reasons, value, picks
