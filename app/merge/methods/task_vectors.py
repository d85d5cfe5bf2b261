"""Task-vector methods: task arithmetic, TIES, DARE (linear / ties) and breadcrumbs (linear / ties).

All work on deltas from ``base_model`` (Ilharco et al. 2023, https://arxiv.org/abs/2212.04089)::

    delta_i = theta_i - theta_base
    delta_i <- sparsify(delta_i, density_i)               (TIES trim / DARE drop / breadcrumbs)
    mixed, divisor = consensus over w_i * delta_i          (or plain sum and sum_i w_i without one)
    theta = theta_base + lambda * (mixed / divisor if normalize else mixed)

with mergekit's defaults per method (``normalize`` true only for ``ties``; ``rescale`` true for DARE, an L1
norm match as in mergekit 0.1.5; ``lambda`` 1), so a mergekit config gives the same tensors — DARE's seeded
masks too, when the engine passes ``rng``, one generator seeded with ``random_seed`` and drawn in tensor-name
order as mergekit's executor does (``dare_rng: mergekit``, see app/merge/plan.py); without it each (tensor,
model) gets its own seeded generator, independent of order.
"""

from __future__ import annotations

import zlib
from functools import partial

import torch

from app.merge.methods import sparsify as sp
from app.merge.methods.consensus import MODES, resolve_signs
from app.merge.registry import MergeMethod, Param, register


def generalized_task_arithmetic(
    tensors,
    *,
    base,
    info,
    weight,
    normalize,
    lambda_,
    rescale,
    consensus,
    density=None,
    gamma=None,
    sparsifier=None,
    rng=None,
):
    """Merge task vectors (see module docstring).

    Args:
        tensors: n fine-tuned tensors of shape S (base excluded).
        base: base-model tensor of shape S.
        weight, density, gamma: n per-model values.
        consensus: ``"none"`` or a sign-resolution mode of ``consensus.resolve_signs``.
        sparsifier: ``None``, ``"magnitude"``, ``"dare"`` or ``"breadcrumbs"``.
        rng: DARE's generator shared across tensors (``dare_rng: mergekit``); None: one seeded per tensor and
            model from ``info.seed``.
    Returns:
        Tensor of shape S in ``base.dtype``.
    """
    # one (n, *S) buffer filled row by row (no list + torch.stack copy)
    stacked = base.new_empty((len(tensors), *base.shape))
    for i, x in enumerate(tensors):
        torch.sub(x.to(base.dtype), base, out=stacked[i])
        if sparsifier == "dare":
            gen = rng if rng is not None else torch.Generator(device=base.device).manual_seed(_seed(info, i))
            stacked[i] = sp.dare(stacked[i], density[i], gen, rescale=rescale)
    if sparsifier in ("magnitude", "breadcrumbs"):  # all models at once: one parallel sort (sparsify_rows)
        sp.sparsify_rows(stacked, sparsifier, density, gamma, rescale=rescale)
    w = torch.tensor(weight, dtype=stacked.dtype, device=stacked.device).view(-1, *([1] * base.dim()))
    wd = stacked.mul_(w)
    if consensus != "none":
        mixed, divisor = resolve_signs(wd, w, consensus)
    else:
        mixed = wd.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return (base + mixed).to(base.dtype)


def _seed(info, model_index: int) -> int:
    """Per (tensor, model) seed: stable across processes and workers, unlike Python's ``hash``."""
    return (info.seed * 1_000_003 + zlib.crc32(info.name.encode()) * 31 + model_index) % (2**63)


_COMMON_MODEL = {
    "weight": Param(help="weight of this model's task vector (negative removes it)"),
    "density": Param(1.0, low=0.0, high=1.0, low_open=True, help="fraction of the task vector kept"),
}
_GAMMA = {"gamma": Param(0.01, low=0.0, high=1.0, high_open=True, help="fraction of largest entries dropped")}


def _register(name, *, sparsifier, consensus, normalize, rescale, reference):
    model_params = dict(_COMMON_MODEL)
    if sparsifier == "breadcrumbs":
        model_params.update(_GAMMA)
    if sparsifier is None:
        model_params.pop("density")  # mergekit accepts density here and ignores it; so do we (see ignored)
    register(
        MergeMethod(
            name=name,
            fn=partial(generalized_task_arithmetic, sparsifier=sparsifier),
            base="required",
            model_params=model_params,
            global_params={
                "normalize": Param(normalize, kind="bool", help="divide by the (masked) sum of weights"),
                "lambda": Param(1.0, help="scale of the merged task vector"),
                "rescale": Param(rescale, kind="bool", help="DARE: divide kept entries by density"),
                "consensus": Param(consensus, kind="str", choices=("none", *MODES), help="sign-conflict resolution"),
            },
            ignored_params={
                "int8_mask": "int8_mask only changes mergekit's mask dtype (memory), not the result; ignored",
                **({"density": "density has no effect without sparsification; ignored"} if sparsifier is None else {}),
            },
            draws=sparsifier == "dare",
            reference=reference,
        )
    )


_register("task_arithmetic", sparsifier=None, consensus="none", normalize=False, rescale=False,
          reference="https://arxiv.org/abs/2212.04089")
_register("ties", sparsifier="magnitude", consensus="magnitude", normalize=True, rescale=False,
          reference="https://arxiv.org/abs/2306.01708")
_register("dare_linear", sparsifier="dare", consensus="none", normalize=False, rescale=True,
          reference="https://arxiv.org/abs/2311.03099")
_register("dare_ties", sparsifier="dare", consensus="magnitude", normalize=False, rescale=True,
          reference="https://arxiv.org/abs/2311.03099")
_register("breadcrumbs", sparsifier="breadcrumbs", consensus="none", normalize=False, rescale=False,
          reference="https://arxiv.org/abs/2312.06795")
_register("breadcrumbs_ties", sparsifier="breadcrumbs", consensus="magnitude", normalize=False, rescale=False,
          reference="https://arxiv.org/abs/2312.06795")
