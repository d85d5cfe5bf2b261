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


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """TIES trim (Yadav et al. 2023, https://arxiv.org/abs/2306.01708): keep the ``k = int(density * numel)``
    entries of largest |delta|, zero the rest.

    At least one entry is kept (``k = max(1, ...)``), as mergekit 0.1.5 does, so a tiny tensor with a small
    density is not zeroed out.
    """
    if density >= 1 or delta.numel() == 0:
        return delta
    n = delta.numel()
    k = max(1, int(density * n))
    w = delta.abs().reshape(-1).float()
    if k < n:
        top = torch.topk(w, k + 1, sorted=True)
        # Equal magnitudes at the cut (common: bf16 deltas, or float32 deltas quantised by the weights' ulp)
        # make the choice of survivors arbitrary; there we take the first k of the same descending argsort
        # mergekit uses, so both tools keep the same entries. Otherwise topk (no full sort) suffices.
        keep = torch.argsort(w, descending=True)[:k] if top.values[k - 1] == top.values[k] else top.indices[:k]
    else:
        keep = torch.arange(n, device=delta.device)
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[keep] = 1
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


def breadcrumbs(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795).

    With n entries sorted by |delta|: drop the ``n_top = int(gamma n)`` largest (outliers) and the
    ``n_bot = n - int(density n) - n_top`` smallest, keeping ``int(density n)`` mid-magnitude entries; if
    ``n_bot < 0`` fewer outliers are dropped so the density is met. When ``n_top == 0`` we keep the top
    entries (mergekit's slice ``[n_bot:-0]`` keeps nothing in that edge case).
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
    order = torch.argsort(delta.abs().reshape(-1).float())  # ascending
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[n_bot : n - n_top]] = 1
    masked = delta * mask.view_as(delta)
    return _l1_rescale(delta, masked) if rescale else masked
