"""Weighted uncertainty + diversity + difficulty, picked greedily so each batch stays spread out."""

from __future__ import annotations

import numpy as np

from app.selection.ranking import candidate_mask, covered_points, minmax, nearest_sqdist, score_1d, top_order
from app.selection.registry import SelectionInput, SelectionResult, register
from app.selection.uncertainty import entropy, select_random
from app.selection.validation import SelectionInputError, param_float

UNCERTAINTY_KEYS = ("uncertainty", "token_entropy")  # larger = more uncertain; "mean_logprob" is negated


def schedule(round_idx: int, total_rounds: int) -> tuple[float, float, float]:
    """Weights (alpha, beta, gamma) for uncertainty, diversity and difficulty in round ``round_idx``.

    With t = round_idx / (total_rounds - 1) (t = 0 for a single round):
        alpha = 0.3, beta = 0.6 - 0.5 t, gamma = 0.1 + 0.5 t        (sum = 1)
    Early on the model is weak, its uncertainty and losses are noisy, and covering the space pays most
    (beta = 0.6); by the last round coverage is largely done and hard rows matter most (gamma = 0.6).

    Args:
        round_idx: 0-based round, 0 <= round_idx < total_rounds.
        total_rounds: number of selection rounds planned, >= 1.
    """
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (round_idx, total_rounds))
    if not ints or total_rounds < 1 or not 0 <= round_idx < total_rounds:
        raise SelectionInputError(f"schedule(round_idx={round_idx!r}, total_rounds={total_rounds!r}); "
                                  "need total_rounds >= 1 and 0 <= round_idx < total_rounds")
    t = round_idx / (total_rounds - 1) if total_rounds > 1 else 0.0
    return 0.3, 0.6 - 0.5 * t, 0.1 + 0.5 * t


def _uncertainty(inp: SelectionInput, key: str | None) -> np.ndarray | None:
    if inp.probs is not None:
        return entropy(inp.probs)
    if key is not None:
        if key not in inp.scores:
            raise SelectionInputError(f"uncertainty_key={key!r} not in scores; have {sorted(inp.scores)}")
        return score_1d(inp, key)
    for k in UNCERTAINTY_KEYS:
        if k in inp.scores:
            return score_1d(inp, k)
    if "mean_logprob" in inp.scores:
        return -score_1d(inp, "mean_logprob")
    return None


@register("combined", description="alpha*uncertainty + beta*diversity + gamma*loss, batch-aware greedy")
def select_combined(
    inp: SelectionInput, budget: int, rng: np.random.Generator, alpha: float | None = None,
    beta: float | None = None, gamma: float | None = None, round_idx: int = 0, total_rounds: int = 1,
    min_labelled: int = 0, uncertainty_key: str | None = None, prefilter: float | None = 5.0,
) -> SelectionResult:
    """score_i = alpha U_i + beta D_i + gamma H_i, each component min-max normalised to [0, 1] over the
    candidates (rows not excluded), then greedy: pick the argmax, update D, repeat.

    U: entropy(probs) if given, else scores[uncertainty_key], else scores["uncertainty"] /
       ["token_entropy"] / -scores["mean_logprob"] (first present).
    D: L2 distance to the nearest selected-or-covered point (exclude rows, labelled_embeddings), recomputed
       and re-normalised over the remaining candidates after every pick, so a batch does not pile into one
       region (all-equal while nothing is covered yet, i.e. no effect on the first pick).
    H: losses.
    Weights: alpha/beta/gamma if all three are given, else ``schedule(round_idx, total_rounds)``. Missing
    components get weight 0 and the rest are renormalised to sum to 1.
    Pre-filter (``prefilter`` = m, default 5; None: off): only the top ceil(m * budget) candidates by alpha U + gamma H may be picked
    (U, H and D are normalised over those), as in Zhdanov, "Diverse mini-batch Active Learning" (2019): the
    diversity term then spreads the batch over the uncertain region instead of trading certainty for
    far-away but easy rows. Already-labelled rows still count as covered for D.
    Cold start: with neither U nor H, or fewer than ``min_labelled`` labelled rows (len(exclude) +
    len(labelled_embeddings)), fall back to ``random``: the model's scores are not worth trusting yet.

    Scores: "uncertainty", "diversity", "difficulty" (those present, normalised) and "combined", the value
    when picked (for other rows: after the last pick).
    """
    given_w = (alpha, beta, gamma)
    given = [w is not None for w in given_w]
    if any(given) and not all(given):
        raise SelectionInputError("combined: give all of alpha, beta, gamma or none (then schedule() is used)")
    if all(given):
        weights = tuple(param_float(f"combined {k}", v, 0.0) for k, v in zip(("alpha", "beta", "gamma"), given_w))
    else:
        weights = schedule(round_idx, total_rounds)
    u = _uncertainty(inp, uncertainty_key)
    h = inp.losses
    labelled = (0 if inp.exclude is None else len(inp.exclude)) + (
        0 if inp.labelled_embeddings is None else len(inp.labelled_embeddings))
    if (u is None and h is None) or labelled < min_labelled:
        res = select_random(inp, budget, rng)
        why = "no uncertainty or loss signal"
        if labelled < min_labelled:
            why = f"{labelled} < {min_labelled} labelled"
        res.reasons = [f"cold start ({why}): random"] * len(res.selected)
        return res

    mask = candidate_mask(inp)
    if prefilter is not None:
        m = param_float("combined prefilter", prefilter, 1.0)
        part = (weights[0] * minmax(u, mask) if u is not None else 0.0) + (
            weights[2] * minmax(h, mask) if h is not None else 0.0)
        keep = top_order(np.broadcast_to(part, (inp.n,)).astype(float), mask, int(np.ceil(m * budget)))
        mask = np.zeros(inp.n, dtype=bool)
        mask[keep] = True
    w = np.array([wt if comp is not None else 0.0 for wt, comp in zip(weights, (u, inp.embeddings, h))])
    if w.sum() <= 0:
        raise SelectionInputError(f"combined weights {weights} are zero for every available component")
    w = w / w.sum()
    un = minmax(u, mask) if u is not None else np.zeros(inp.n)
    hn = minmax(h, mask) if h is not None else np.zeros(inp.n)
    fixed = w[0] * un + w[2] * hn
    scores = {}
    if u is not None:
        scores["uncertainty"] = un
    if h is not None:
        scores["difficulty"] = hn
    if inp.embeddings is None or w[1] == 0:
        sel = top_order(fixed, mask, budget)
        scores["combined"] = fixed
        reasons = [f"combined={fixed[i]:.3g} (U={un[i]:.2f}, H={hn[i]:.2f}; w={_fmt(w)})" for i in sel]
        return SelectionResult(sel.tolist(), scores, reasons)

    x = inp.embeddings - inp.embeddings.mean(axis=0)
    cov = covered_points(inp)
    d2 = nearest_sqdist(x, cov - inp.embeddings.mean(axis=0)) if cov.shape[0] else np.full(inp.n, np.inf)
    sq = np.einsum("nd,nd->n", x, x)
    avail = mask.copy()
    total = fixed.copy()
    div = np.zeros(inp.n)
    sel, reasons = [], []
    for _ in range(budget):
        dn = minmax(np.sqrt(d2), avail) if np.isfinite(d2[avail]).all() else np.zeros(inp.n)
        cur = fixed + w[1] * dn
        i = int(np.argmax(np.where(avail, cur, -np.inf)))
        total[i], div[i] = cur[i], dn[i]
        reasons.append(f"combined={cur[i]:.3g} (U={un[i]:.2f}, D={dn[i]:.2f}, H={hn[i]:.2f}; w={_fmt(w)})")
        sel.append(i)
        avail[i] = False
        d2 = np.minimum(d2, np.maximum(sq - 2.0 * (x @ x[i]) + sq[i], 0.0))
        d2[i] = 0.0
    rest = np.ones(inp.n, dtype=bool)
    rest[sel] = False
    dn = minmax(np.sqrt(d2), avail) if avail.any() else np.zeros(inp.n)
    div[rest], total[rest] = dn[rest], (fixed + w[1] * dn)[rest]
    scores["diversity"], scores["combined"] = div, total
    return SelectionResult(sel, scores, reasons)


def _fmt(w: np.ndarray) -> str:
    return "/".join(f"{v:.2f}" for v in w)
