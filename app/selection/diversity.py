"""Diversity strategies over embeddings: k-means representatives, MMR and greedy k-center.

All three treat ``exclude`` rows and ``labelled_embeddings`` as already covered (see each docstring), and
cost O(n d) memory: nothing builds an n x n matrix.
"""

from __future__ import annotations

import numpy as np

from app.selection.ranking import candidate_mask, covered_points, max_cosine, nearest_sqdist, unit_rows
from app.selection.registry import SelectionInput, SelectionResult, register
from app.selection.uncertainty import entropy
from app.selection.validation import SelectionInputError, param_float


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, niter: int, max_points_per_centroid: int,
            weights: np.ndarray | None = None):
    import faiss

    # max_points_per_centroid caps the training sample (faiss subsamples with the seed), so large pools stay
    # fast; min_points_per_centroid=1 silences faiss's stderr warning when k is close to n.
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=int(rng.integers(2**31 - 1)), verbose=False,
        max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1,
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32),
             weights=None if weights is None else np.ascontiguousarray(weights, dtype=np.float32))
    return km


@register("kmeans", needs=("embeddings",), description="faiss k-means, k=budget; row nearest each centroid")
def select_kmeans(
    inp: SelectionInput, budget: int, rng: np.random.Generator, mode: str = "nearest",
    n_clusters: int | None = None, niter: int = 20, max_points_per_centroid: int = 256,
) -> SelectionResult:
    """k-means representatives (Lloyd's algorithm via ``faiss.Kmeans`` on the candidate rows).

    mode="nearest": k = budget clusters, pick the candidate nearest each centroid. Picks are ordered by the
    centroid's distance to the nearest covered point (exclude + labelled_embeddings, farthest first) or, with
    nothing covered, by cluster size (largest first); clustering itself uses candidates only.
    mode="stratified": ``n_clusters`` clusters (default ceil(sqrt(budget)), at most budget), then a
    uniform sample per cluster with size proportional to the cluster (largest-remainder rounding), emitted
    round-robin so any prefix of the picks stays stratified.

    Scores: "cluster" (id of each row's nearest centroid, as float), "centroid_distance" (L2).
    """
    if mode not in ("nearest", "stratified"):
        raise SelectionInputError(f"kmeans mode={mode!r}; allowed: 'nearest', 'stratified'")
    mask = candidate_mask(inp)
    cand = np.flatnonzero(mask)
    x = inp.embeddings
    if mode == "nearest":
        k = budget
    else:
        k = n_clusters if n_clusters is not None else int(np.ceil(np.sqrt(budget)))
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SelectionInputError(f"kmeans n_clusters={n_clusters!r}; need an integer >= 1")
        k = min(int(k), budget)
    km = _kmeans(x[cand], k, rng, niter, max_points_per_centroid)
    d2, assign = km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    d2, assign = np.maximum(d2[:, 0].astype(np.float64), 0.0), assign[:, 0].astype(np.int64)
    scores = {"cluster": assign.astype(np.float64), "centroid_distance": np.sqrt(d2)}
    sizes = np.bincount(assign[cand], minlength=k)
    if mode == "stratified":
        sel, reasons = _stratified(cand, assign[cand], sizes, budget, rng)
        return SelectionResult(sel, scores, reasons)

    # Nearest candidate per cluster: sort candidates by (cluster, distance) and keep each cluster's first.
    order = cand[np.lexsort((d2[cand], assign[cand]))]
    first = np.r_[True, assign[order][1:] != assign[order][:-1]]
    rep = {int(assign[i]): int(i) for i in order[first]}
    cov = covered_points(inp)
    if cov.shape[0]:
        rank_key = -nearest_sqdist(km.centroids, cov)
    else:
        rank_key = -sizes.astype(np.float64)
    taken = np.zeros(inp.n, dtype=bool)
    sel, reasons = [], []
    for c in np.argsort(rank_key, kind="stable"):
        i = rep.get(int(c))
        why = f"nearest to centroid {c} (cluster size {sizes[c]})"
        if i is None or taken[i]:  # empty centroid (or its row went to one): nearest free candidate instead
            free = np.flatnonzero(mask & ~taken)
            i = int(free[np.argmin(((x[free] - km.centroids[c]) ** 2).sum(axis=1))])
            why = f"nearest free row to centroid {c} (no free member)"
        taken[i] = True
        sel.append(i)
        reasons.append(f"{why}, distance={np.sqrt(d2[i]):.3g}")
    return SelectionResult(sel, scores, reasons)


def _stratified(cand, assign_c, sizes, budget, rng) -> tuple[list[int], list[str]]:
    quota = budget * sizes / sizes.sum()
    alloc = np.floor(quota).astype(np.int64)
    short = budget - int(alloc.sum())
    alloc[np.argsort(-(quota - alloc), kind="stable")[:short]] += 1  # largest remainder (Hamilton)
    per_cluster = {}
    for c in np.flatnonzero(alloc):
        members = cand[assign_c == c]
        per_cluster[int(c)] = rng.choice(members, size=int(alloc[c]), replace=False)
    sel, reasons = [], []
    by_size = sorted(per_cluster, key=lambda c: -sizes[c])
    for r in range(int(alloc.max())):
        for c in by_size:
            if r < len(per_cluster[c]):
                sel.append(int(per_cluster[c][r]))
                reasons.append(f"cluster {c} (size {sizes[c]}): stratified draw {r + 1} of {alloc[c]}")
    return sel, reasons


def _argmax_random_tie(score: np.ndarray, rng: np.random.Generator) -> int:
    best = np.flatnonzero(score == score.max())
    return int(best[0] if best.size == 1 else best[rng.integers(best.size)])


@register("mmr", needs=("embeddings",), description="maximal marginal relevance: lam*relevance - (1-lam)*sim")
def select_mmr(inp: SelectionInput, budget: int, rng: np.random.Generator, lam: float = 0.5) -> SelectionResult:
    """Maximal Marginal Relevance (Carbonell & Goldstein 1998), greedy.

    next = argmax_{i not in S} lam * rel_i - (1 - lam) * max_{j in S u C} cos(e_i, e_j), where S is the
    picks so far and C the covered points (exclude + labelled_embeddings); the max is 0 while S u C is empty.
    rel_i = H(p_i) / log K (normalised entropy, in [0, 1]) when probs are given, else 1. Exact ties are broken
    with ``rng``. lam=1 gives pure relevance order; lam=0 pure novelty.

    Scores: "relevance", "mmr" (value when picked; for other rows, after the last pick).
    """
    lam = param_float("mmr lam", lam, 0.0, 1.0)
    u = unit_rows(inp.embeddings)
    if inp.probs is not None:
        rel = entropy(inp.probs) / np.log(inp.probs.shape[1])
    else:
        rel = np.ones(inp.n)
    cov = covered_points(inp)
    max_sim = max_cosine(u, cov) if cov.shape[0] else np.zeros(inp.n)
    avail = candidate_mask(inp)
    mmr = lam * rel - (1 - lam) * max_sim
    sel, reasons = [], []
    for _ in range(budget):
        cur = lam * rel - (1 - lam) * max_sim
        i = _argmax_random_tie(np.where(avail, cur, -np.inf), rng)
        mmr[i] = cur[i]
        reasons.append(f"mmr={cur[i]:.3g} (relevance={rel[i]:.3g}, max sim to picked/covered={max_sim[i]:.3g})")
        sel.append(i)
        avail[i] = False
        max_sim = np.maximum(max_sim, u @ u[i])
    rest = np.ones(inp.n, dtype=bool)
    rest[sel] = False
    mmr[rest] = (lam * rel - (1 - lam) * max_sim)[rest]
    return SelectionResult(sel, {"relevance": rel, "mmr": mmr}, reasons)


@register("kcenter", needs=("embeddings",), description="greedy k-center coreset (Sener & Savarese 2018)")
def select_kcenter(inp: SelectionInput, budget: int, rng: np.random.Generator) -> SelectionResult:
    """Greedy k-center coreset (Gonzalez 1985; Sener & Savarese 2018, "Active Learning for CNNs: A Core-Set
    Approach", Alg. 1): repeatedly pick u = argmax_{i not in S} min_{j in S} ||e_i - e_j||_2.

    Excluded rows and labelled_embeddings start in S. With nothing covered the first pick is a uniformly
    random candidate. The min-distance vector is updated after each pick with one (n, d) @ (d,) product, so a
    pick costs O(n d) time and the whole run O(n) memory.

    Scores: "distance" = distance to the nearest center when the row was picked (for a random first pick:
    the radius it leaves, equal to the second pick's value); for other rows, after the last pick.
    """
    x = inp.embeddings - inp.embeddings.mean(axis=0)  # centring keeps |x|^2 - 2x.c + |c|^2 well conditioned
    cov = covered_points(inp)
    d2 = nearest_sqdist(x, cov - inp.embeddings.mean(axis=0)) if cov.shape[0] else np.full(inp.n, np.inf)
    sq = np.einsum("nd,nd->n", x, x)
    avail = candidate_mask(inp)
    dist = np.zeros(inp.n)
    sel, reasons = [], []
    for t in range(budget):
        random_start = t == 0 and not cov.shape[0]
        if random_start:
            i = int(rng.choice(np.flatnonzero(avail)))
        else:
            i = int(np.argmax(np.where(avail, d2, -1.0)))
            dist[i] = np.sqrt(d2[i])
            reasons.append(f"distance to nearest center={dist[i]:.3g} (pick {t + 1})")
        sel.append(i)
        avail[i] = False
        d2 = np.minimum(d2, np.maximum(sq - 2.0 * (x @ x[i]) + sq[i], 0.0))
        d2[i] = 0.0
        if random_start:
            rest = np.where(avail, d2, 0.0)
            dist[i] = np.sqrt(rest.max()) if avail.any() else 0.0
            reasons.append(f"random first center (nothing covered), radius left={dist[i]:.3g}")
    others = np.ones(inp.n, dtype=bool)
    others[sel] = False
    dist[others] = np.sqrt(d2[others])
    return SelectionResult(sel, {"distance": dist}, reasons)
