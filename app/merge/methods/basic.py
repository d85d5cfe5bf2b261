"""Linear (weighted) averaging, SLERP and passthrough.

References: model soups (Wortsman et al. 2022, https://arxiv.org/abs/2203.05482) for ``linear``;
Shoemake 1985 for SLERP as used by mergekit (flattened tensor, linear fallback when nearly parallel).
"""

from __future__ import annotations

import numpy as np
import torch

from app.merge.registry import Param, merge_method



def weighted_sum(tensors: list[torch.Tensor], weight: list[float], normalize: bool) -> torch.Tensor:
    """``sum_i w_i x_i`` (divided by ``sum_i w_i`` when ``normalize``); tensors (n x S) -> S.

    Accumulated in place in float32 (float64 for float64 inputs) and cast back to the inputs' dtype: no
    (n, *S) stack, so one output-sized buffer instead of two n-times-larger ones, and bf16 / fp16 inputs
    are not rounded after every product. The accumulator starts as ``w_0 x_0`` (not zeros plus a mixed-dtype
    ``add_``) and a division by a weight sum of exactly 1 is skipped: the same bits (``0 + w x`` rounds
    like ``w x``, ``y / 1 == y``) for about 35 % less CPU time on bf16 inputs (bench/merge_vs_mergekit.py).
    """
    first = tensors[0]
    work = torch.float64 if first.dtype == torch.float64 else torch.float32
    res = first.to(work, copy=True).mul_(float(weight[0]))
    for x, w in zip(tensors[1:], weight[1:]):
        res.add_(x, alpha=float(w))
    total = float(sum(weight))
    if normalize and total != 1.0:
        res.div_(total)
    return res.to(first.dtype)


@merge_method(
    "linear",
    model_params={"weight": Param(help="contribution of this model")},
    global_params={"normalize": Param(True, kind="bool", help="divide by the sum of weights")},
    reference="https://arxiv.org/abs/2203.05482",
)
def linear(tensors, *, base, info, weight, normalize=True):
    """Weighted average ``theta = sum_i w_i theta_i / sum_i w_i`` (no division if ``normalize`` is false).

    Args:
        tensors: n aligned tensors, each of shape S.
        weight: n per-model weights.
    Returns:
        Tensor of shape S.
    """
    return weighted_sum(tensors, weight, normalize)


def slerp_arrays(
    t: float, v0: np.ndarray, v1: np.ndarray, dot_threshold: float = 0.9995, eps: float = 1e-8
) -> np.ndarray:
    """Spherical interpolation between two flattened tensors (any equal shapes), as mergekit computes it.

    With unit directions u0, u1 and ``theta = arccos(u0 . u1)``::

        slerp(t) = sin((1 - t) theta) / sin(theta) * v0 + sin(t theta) / sin(theta) * v1

    applied to the unnormalised ``v0``, ``v1``; if ``|u0 . u1| > dot_threshold`` the tensors are nearly
    parallel and ``(1 - t) v0 + t v1`` is returned instead (sin(theta) ~ 0 would amplify rounding).
    """
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    u0 = v0 / n0 if n0 > eps else v0
    u1 = v1 / n1 if n1 > eps else v1
    dot = np.sum(u0 * u1)
    if np.abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    s0 = np.sin(theta - theta * t) / sin_theta
    s1 = np.sin(theta * t) / sin_theta
    return s0 * v0 + s1 * v1


@merge_method(
    "slerp",
    base="required",
    min_models=1,
    max_models=1,
    global_params={"t": Param(kind="float", low=0.0, high=1.0, help="0 gives base_model, 1 the other model")},
    reference="https://en.wikipedia.org/wiki/Slerp",
)
def slerp(tensors, *, base, info, t):
    """SLERP from ``base`` (t = 0) to the single other model (t = 1), computed in float32 numpy.

    Args:
        tensors: one tensor of shape S (the non-base model).
        base: tensor of shape S.
        t: interpolation factor; a list in YAML gives a per-layer gradient.
    """
    v0 = base.detach().cpu().float().numpy()
    v1 = tensors[0].detach().cpu().float().numpy()
    return torch.from_numpy(np.asarray(slerp_arrays(t, v0, v1), dtype=np.float32)).to(base.dtype)


@merge_method("passthrough", max_models=1, reference="https://github.com/arcee-ai/mergekit")
def passthrough(tensors, *, base, info):
    """Copy the single input tensor unchanged (for ``slices`` that stack layers of one model)."""
    return tensors[0].clone()
