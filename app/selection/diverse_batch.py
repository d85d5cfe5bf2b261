"""Diverse mini-batch active learning: uncertainty pre-filter, then weighted k-means over the survivors."""

from __future__ import annotations

import numpy as np

from app.selection.diversity import _kmeans
from app.selection.ranking import candidate_mask, top_order
from app.selection.registry import SelectionInput, SelectionResult, register
from app.selection.uncertainty import entropy
from app.selection.validation import param_float


@register("diverse_batch", needs=("probs", "embeddings"),
          description="top prefilter*budget by entropy, uncertainty-weighted k-means, row nearest each centroid")
def select_diverse_batch(inp: SelectionInput, budget: int, rng: np.random.Generator, prefilter: float = 5.0,
                         niter: int = 20) -> SelectionResult:
    """Zhdanov, "Diverse mini-batch Active Learning" (arXiv:1901.05954, 2019), weighted variant.

    1. U_i = entropy(p_i); keep the top m = ceil(prefilter * budget) candidates by U (not excluded rows).
    2. k-means with k = budget over their embeddings, each row weighted by U_i (faiss ``Kmeans.train``
       weights): centroids are pulled toward the most uncertain rows of each region.
    3. Pick the kept row nearest each centroid (each row at most once), most uncertain centroid first.
    The clusters spread the batch over the uncertain region, so a batch does not spend its budget on
    near-duplicates of one confusing example; the pre-filter keeps it from spending on easy outliers.

    Scores: "uncertainty" (entropy, every row), "cluster" (centroid id for kept rows, -1 otherwise).
    """
    m = param_float("diverse_batch prefilter", prefilter, 1.0)
    u = entropy(inp.probs)
    mask = candidate_mask(inp)
    keep = top_order(u, mask, int(np.ceil(m * budget)))
    if len(keep) <= budget:  # nothing to choose between: every kept row goes in, most uncertain first
        return SelectionResult(keep.tolist(), {"uncertainty": u, "cluster": np.full(inp.n, -1.0)},
                               [f"entropy={u[i]:.3g} (pool smaller than the pre-filter)" for i in keep])
    x = np.ascontiguousarray(inp.embeddings[keep], dtype=np.float32)
    # 1e-6 floor: a zero weight would drop a row from the centroid updates entirely
    km = _kmeans(x, budget, rng, niter, max_points_per_centroid=len(keep), weights=np.maximum(u[keep], 1e-6))
    c = km.centroids
    # (m, budget) squared distances by |x|^2 - 2 x.c + |c|^2: never an (m, budget, d) tensor
    d2 = np.maximum((x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :], 0.0)
    assign = d2.argmin(axis=1)
    cluster = np.full(inp.n, -1.0)
    cluster[keep] = assign
    # centroid order: by the largest uncertainty among its members (empty clusters last)
    top_u = np.full(budget, -np.inf)
    np.maximum.at(top_u, assign, u[keep])
    taken = np.zeros(len(keep), dtype=bool)
    sel, reasons = [], []
    for k in np.argsort(-top_u, kind="stable"):
        order = np.argsort(d2[:, k], kind="stable")
        j = int(order[~taken[order]][0])
        taken[j] = True
        i = int(keep[j])
        sel.append(i)
        reasons.append(f"nearest to uncertainty-weighted centroid {k}: entropy={u[i]:.3g}, "
                       f"distance={np.sqrt(d2[j, k]):.3g}")
    return SelectionResult(sel, {"uncertainty": u, "cluster": cluster}, reasons)
