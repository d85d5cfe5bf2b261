"""Gradient compression for data-parallel training over slow links.

* Top-k sparsification with error feedback (Stich et al. 2018, "Sparsified SGD with Memory";
  Lin et al. 2018, "Deep Gradient Compression"): each step sends only the k largest-magnitude entries
  of (gradient + residual) and keeps what was not sent as the residual for the next step, so every
  gradient coordinate is eventually applied. Torch ships no top-k DDP hook, hence this file.
* PowerSGD (Vogels et al. 2019) is torch's own ``powerSGD_hook``; :func:`powersgd_hook_state` only
  builds its state with checked arguments.

Usage::

    state = TopKHookState(TopKCompressor(ratio=0.01))
    ddp_model.register_comm_hook(state, topk_hook(state))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist


class TopKCompressor:
    """Top-k gradient sparsifier with a per-tensor error-feedback residual.

    Args:
        ratio: fraction of entries sent per tensor, in (0, 1]; k = ceil(ratio · numel), at least 1.

    Attributes:
        bytes_sent: bytes of values + indices produced by :meth:`compress` so far.
        bytes_dense: bytes the same gradients would take uncompressed.
    """

    def __init__(self, ratio: float):
        if not 0 < ratio <= 1:
            raise ValueError(f"TopKCompressor: ratio={ratio!r} must be in (0, 1]")
        self.ratio = ratio
        self.residuals: dict[str, torch.Tensor] = {}
        self.bytes_sent = 0
        self.bytes_dense = 0

    def k_for(self, numel: int) -> int:
        """Entries kept for a tensor of ``numel`` entries (rounding guards 0.3·10 = 3.0000000000000004)."""
        return max(1, math.ceil(round(self.ratio * numel, 9)))

    def compress(self, name: str, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        """Select the top-k of grad + residual[name] and keep the rest as the new residual.

        The residual is kept in fp32 and also absorbs the rounding of the sent values to ``grad.dtype``.

        Args:
            name: stable key of the tensor (parameter name or bucket id).
            grad: gradient of any shape.

        Returns:
            (values (k,) in grad.dtype, indices (k,) int32 into the flattened tensor, original shape).
        """
        flat = grad.detach().reshape(-1).float()
        residual = self.residuals.get(name)
        if residual is not None and residual.numel() != flat.numel():
            raise ValueError(f"TopKCompressor: tensor {name!r} has {flat.numel()} entries but its residual has "
                             f"{residual.numel()}; use a distinct name per tensor or reset({name!r})")
        acc = flat if residual is None else flat + residual
        k = self.k_for(acc.numel())
        indices = torch.topk(acc.abs(), k, sorted=False).indices
        values = acc[indices].to(grad.dtype)
        new_residual = acc.clone()
        new_residual[indices] -= values.float()  # 0 up to the rounding of values to grad.dtype
        self.residuals[name] = new_residual
        idx_dtype = torch.int32 if acc.numel() < 2**31 else torch.int64
        indices = indices.to(idx_dtype)
        self.bytes_sent += values.numel() * values.element_size() + indices.numel() * indices.element_size()
        self.bytes_dense += grad.numel() * grad.element_size()
        return values, indices, grad.shape

    @staticmethod
    def decompress(values: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Dense tensor of ``shape`` holding ``values`` at the flat ``indices`` and zeros elsewhere."""
        out = torch.zeros(math.prod(shape), dtype=values.dtype, device=values.device)
        out[indices.long()] = values
        return out.reshape(shape)

    def reset(self, name: str | None = None) -> None:
        """Drop the residual of one tensor (or all), e.g. after the parameter set changes."""
        if name is None:
            self.residuals.clear()
        else:
            self.residuals.pop(name, None)


@dataclass
class TopKHookState:
    """State handed to DDP with :func:`topk_hook`; ``process_group`` None means the default group."""

    compressor: TopKCompressor
    process_group: Any = None


def _pack(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    # one all_gather instead of two: int32 indices travel bit-cast as float32 next to the values
    return torch.cat([values.float(), indices.to(torch.int32).view(torch.float32)])


def decode_gathered(payloads: list[torch.Tensor], numel: int) -> torch.Tensor:
    """Average the sparse gradients gathered from every rank into one dense (numel,) fp32 tensor.

    Args:
        payloads: one packed (2k,) tensor per rank: k fp32 values then k int32 indices bit-cast.
        numel: entries of the dense bucket.
    """
    dense = torch.zeros(numel, dtype=torch.float32, device=payloads[0].device)
    for p in payloads:
        k = p.numel() // 2
        dense.index_add_(0, p[k:].view(torch.int32).long(), p[:k])
    return dense / len(payloads)


def topk_hook(state: TopKHookState) -> Callable:
    """DDP comm hook: top-k + error feedback per bucket, all_gather of values and indices, mean.

    Works with gloo and NCCL. Each rank sends 2k 4-byte words per bucket instead of numel; the
    bucket's residual is keyed by bucket index and size because DDP rebuilds its buckets after the
    first iteration.

    Args:
        state: the :class:`TopKHookState` also passed as ``state`` to ``register_comm_hook``.

    Returns:
        ``hook(state, bucket) -> Future[Tensor]`` for ``ddp_model.register_comm_hook(state, hook)``.
    """
    if not isinstance(state, TopKHookState):
        raise TypeError(f"topk_hook: state must be a TopKHookState, got {type(state).__name__}")

    # unannotated on purpose: DDP inspects the annotations and rejects the strings that
    # `from __future__ import annotations` would leave there
    def hook(state, bucket):
        group = state.process_group if state.process_group is not None else dist.group.WORLD
        world = dist.get_world_size(group)
        buf = bucket.buffer()
        if buf.numel() >= 2**31:
            raise ValueError(f"topk_hook: bucket {bucket.index()} has {buf.numel()} entries; int32 indices "
                             f"need < 2**31, lower DDP bucket_cap_mb")
        values, indices, _ = state.compressor.compress(f"bucket{bucket.index()}:{buf.numel()}", buf)
        payload = _pack(values, indices)
        gathered = [torch.empty_like(payload) for _ in range(world)]
        work = dist.all_gather(gathered, payload, group=group, async_op=True)

        def finish(_fut: torch.futures.Future) -> torch.Tensor:
            buf.copy_(decode_gathered(gathered, buf.numel()).to(buf.dtype))
            return buf

        return work.get_future().then(finish)

    return hook


def powersgd_hook_state(process_group: Any = None, rank: int = 1, warm_start: bool = True,
                        start_iter: int = 1000, use_error_feedback: bool = True,
                        min_compression_rate: float = 2.0, random_seed: int = 0):
    """Build torch's ``PowerSGDState`` (Vogels et al. 2019) for ``powerSGD_hook``.

    Args:
        process_group: None for the default group.
        rank: matrix approximation rank r; each m×n gradient is sent as (m + n)·r numbers.
        warm_start: reuse last step's Q as the power-iteration start (the paper's default).
        start_iter: plain all-reduce until this iteration (must be > 1 with error feedback or warm start).
        use_error_feedback: add what compression lost back into the next gradient.
        min_compression_rate: matrices compressing less than this are all-reduced uncompressed.
        random_seed: seed for the initial Q.

    Returns:
        The state; register with ``ddp_model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)``
        where ``powerSGD_hook`` is ``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook``.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"powersgd_hook_state: rank={rank!r} must be a positive int")
    if (use_error_feedback or warm_start) and start_iter <= 1:
        raise ValueError(f"powersgd_hook_state: start_iter={start_iter} must be > 1 when use_error_feedback "
                         f"or warm_start is on (DDP rebuilds buckets after iteration 1)")
    return powerSGD_hook.PowerSGDState(
        process_group=process_group, matrix_approximation_rank=rank, start_powerSGD_iter=start_iter,
        min_compression_rate=min_compression_rate, use_error_feedback=use_error_feedback,
        warm_start=warm_start, random_seed=random_seed)


def serialized_hook(hook: Callable) -> Callable:
    """Wrap a DDP comm hook so each bucket's communication finishes before the hook returns.

    Gloo pairs collectives by the order ranks issue them. PowerSGD issues its second and third
    all-reduce from future callbacks, which with several buckets can interleave in a different order on
    each rank; seen here as gloo's "Received data size doesn't match expected size" abort. DDP calls the
    hooks in bucket order on every rank, so waiting inside the hook restores one order everywhere, at the
    price of the overlap of communication with the rest of backward.
    """

    def wrapped(state, bucket):  # unannotated: see topk_hook
        value = hook(state, bucket).wait()
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(value)
        return fut

    return wrapped
