"""Sparsification of task vectors: TIES magnitude pruning, DARE random drop, breadcrumbs outlier pruning.

Each function maps a delta tensor of shape S to a tensor of shape S with a fraction ``density`` kept.
"""

from __future__ import annotations

import torch


def _l1_rescale(original: torch.Tensor, masked: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale ``masked`` so its L1 norm matches ``original`` (mergekit's ``rescale`` for magnitude pruning)."""
    before, after = original.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False,
              order: torch.Tensor | None = None) -> torch.Tensor:
    """TIES trim (Yadav et al. 2023, https://arxiv.org/abs/2306.01708): keep the ``k = int(density * numel)``
    entries of largest |delta|, zero the rest.

    At least one entry is kept (``k = max(1, ...)``), as mergekit 0.1.5 does, so a tiny tensor with a small
    density is not zeroed out. ``order``: ``argsort(|delta|, descending=True)`` if already computed
    (``sparsify_rows``).
    """
    if density >= 1 or delta.numel() == 0:
        return delta
    n = delta.numel()
    k = max(1, int(density * n))
    # The top k by selection (O(n), no sort; see _rank_band). Where equal magnitudes straddle the cut (common:
    # bf16 deltas, or float32 deltas quantised by the weights' ulp) the choice of survivors is arbitrary: there
    # we take the first k of the same descending argsort mergekit uses, so both tools keep the same entries.
    mask = _rank_mask(delta, n - k, n, descending=True, order=order) if k < n else torch.ones_like(delta)
    masked = delta * mask.view_as(delta)
    return _l1_rescale(delta, masked) if rescale else masked


def dare(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True) -> torch.Tensor:
    """DARE drop-and-rescale (Yu et al. 2024, https://arxiv.org/abs/2311.03099).

    Keep each entry independently with probability ``p = density``. The paper divides kept entries by
    ``p`` so that ``E[dare(delta)] = delta``; like mergekit 0.1.5 we instead scale the kept entries so the L1
    norm equals the original's, ``sum|kept| * c = sum|delta|`` — the same factor ``1/p`` in expectation, but
    exact per tensor, so a merge keeps each task vector's total magnitude. Seeded by ``generator`` so a
    merge is reproducible.
    """
    if density >= 1:
        return delta
    # torch.bernoulli has no float16 CPU kernel; draw the mask in float32.
    work = torch.float32 if delta.dtype == torch.float16 else delta.dtype
    probs = torch.full(delta.shape, density, dtype=work, device=delta.device)
    mask = torch.bernoulli(probs, generator=generator)
    original = delta.to(work)
    res = original * mask
    if rescale:
        res = _l1_rescale(original, res)
    return res.to(delta.dtype)


def _rank_mask(delta: torch.Tensor, lo: int, hi: int, descending: bool,
               order: torch.Tensor | None = None) -> torch.Tensor:
    """0/1 mask (delta's dtype and shape) of the entries whose ascending |delta| rank is in ``[lo, hi)``.

    By selection (``_rank_band``) where that decides the band; otherwise by slicing the full argsort
    (``order`` if given, else computed; ``descending`` says which order mergekit sorts in, since equal
    magnitudes come out in a different order each way and only the same sort keeps the same entries).
    """
    n = delta.numel()
    w = delta.abs().reshape(-1).float() if order is None else None
    keep = None if order is not None or _ties_certain(delta) else _rank_band(w, lo, hi)
    if keep is not None:
        return keep.to(delta.dtype).view_as(delta)
    if order is None:
        order = torch.argsort(w, descending=descending)
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[n - hi:n - lo] if descending else order[lo:hi]] = 1
    return mask.view_as(delta)


def _ties_certain(delta: torch.Tensor) -> bool:
    """16-bit deltas with far more entries than distinct magnitudes (< 2**15) all but always tie at a cut, so
    the selection of ``_rank_band`` would only add its cost before the argsort (the result is the same)."""
    return delta.element_size() <= 2 and delta.numel() > 1 << 18


def _rank_band(w: torch.Tensor, lo: int, hi: int) -> torch.Tensor | None:
    """Boolean mask of the entries of 1-D ``w`` at ascending ranks ``[lo, hi)``, or ``None`` if ties make it
    order-dependent.

    The rank boundaries are found by selection (``torch.kthvalue``, O(n)) instead of a full O(n log n) sort:
    with ``a`` the value at rank ``lo`` and ``b`` the value at rank ``hi - 1``, the band is ``a <= w <= b``
    exactly when ``n - lo`` entries are ``>= a`` and ``hi`` entries are ``<= b``; otherwise equal values sit on
    both sides of a boundary (or NaNs, which a sort ranks last and no comparison counts) and only the sort's
    own tie order decides, so the caller sorts.
    """
    n = w.numel()
    if lo >= hi:
        return torch.zeros(n, dtype=torch.bool, device=w.device)
    keep = None
    if lo > 0:
        keep = w >= torch.kthvalue(w, lo + 1).values
        if int(keep.sum()) != n - lo:
            return None
    if hi < n:
        below = w <= torch.kthvalue(w, hi).values
        if int(below.sum()) != hi:
            return None
        keep = below if keep is None else keep.logical_and_(below)
    return keep if keep is not None else torch.ones(n, dtype=torch.bool, device=w.device)


def breadcrumbs(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False,
                order: torch.Tensor | None = None) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795).

    With n entries sorted by |delta|: drop the ``n_top = int(gamma n)`` largest (outliers) and the
    ``n_bot = n - int(density n) - n_top`` smallest, keeping ``int(density n)`` mid-magnitude entries; if
    ``n_bot < 0`` fewer outliers are dropped so the density is met. When ``n_top == 0`` we keep the top
    entries (mergekit's slice ``[n_bot:-0]`` keeps nothing in that edge case). ``order``: ``argsort(|delta|)``
    (ascending) if already computed (``sparsify_rows``).
    """
    if density >= 1:
        return delta
    n = delta.numel()
    n_keep = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - n_keep - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    # ranks [n_bot, n - n_top) by selection; where equal magnitudes straddle a cut, of mergekit's ascending argsort
    mask = _rank_mask(delta, n_bot, n - n_top, descending=False, order=order)
    masked = delta * mask.view_as(delta)
    return _l1_rescale(delta, masked) if rescale else masked


def sparsify_rows(stacked: torch.Tensor, sparsifier: str, density, gamma=None, rescale: bool = False) -> torch.Tensor:
    """In place: row i of ``stacked`` (n models, *S) becomes ``magnitude`` or ``breadcrumbs`` of itself with
    ``density[i]`` (and ``gamma[i]``); returns ``stacked``.

    Where only a full sort decides the survivors (16-bit deltas, ``_ties_certain``) the rows are argsorted in
    one call on the (n, numel) magnitudes: ATen sorts the rows of a 2-D tensor in parallel over its threads with
    the same per-row algorithm, so each row's order, ties included, is that of a 1-D argsort (mergekit's, which
    sorts one model at a time; tests/unit/test_merge_equalities.py), in about 1/threads of the wall time — the
    sort is most of a TIES merge of bf16 weights and a single 1-D sort runs on one core.
    """
    if sparsifier not in ("magnitude", "breadcrumbs"):
        raise ValueError(f"sparsify_rows: sparsifier={sparsifier!r}; allowed: 'magnitude', 'breadcrumbs'")
    n = stacked.shape[0]
    need = [i for i in range(n) if density[i] < 1 and stacked[i].numel() > 0]
    orders: dict[int, torch.Tensor] = {}
    if len(need) > 1 and _ties_certain(stacked[0]):
        flat = stacked.reshape(n, -1)
        w = (flat if len(need) == n else flat[need]).abs().float()
        rows = torch.argsort(w, dim=1, descending=sparsifier == "magnitude")
        del w
        orders = {i: rows[j] for j, i in enumerate(need)}
    for i in need:
        if sparsifier == "magnitude":
            stacked[i] = magnitude(stacked[i], density[i], rescale=rescale, order=orders.pop(i, None))
        else:
            stacked[i] = breadcrumbs(stacked[i], density[i], gamma=gamma[i], rescale=rescale,
                                     order=orders.pop(i, None))
    return stacked
