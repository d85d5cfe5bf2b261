"""Guards against bad training input: non-finite losses, unusable preference pairs, over-long rows."""

from __future__ import annotations

import logging
import math
from typing import Sequence

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimiser steps had a NaN/inf loss."""


class BadRowError(ValueError):
    """A training row cannot be used."""


def finite_on_all_ranks(loss, world: int) -> bool:
    """Whether the loss is finite on every rank: each rank votes, the votes are all-reduced (MIN) when
    ``world > 1``, so every rank takes the same skip-or-step branch and no collective is left waiting.

    Args:
        loss: this rank's loss tensor, or None on a rank that holds no loss (a pipeline stage before the
            last), which votes finite.
        world: number of ranks in the default process group.
    """
    import torch

    ok = torch.tensor([1.0 if loss is None or bool(torch.isfinite(loss.detach()).all()) else 0.0])
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


class NanGuard:
    """Skip steps whose loss is NaN/inf, and stop after ``max_consecutive`` of them in a row.

    An isolated non-finite loss (one bad batch, an fp16 overflow) is worth skipping; a run of them
    means the model has diverged and continuing wastes the cluster.

    Args:
        max_consecutive: consecutive non-finite steps tolerated; the next one raises.
    """

    def __init__(self, max_consecutive: int = 5):
        if not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ValueError(f"NanGuard: max_consecutive={max_consecutive!r} must be an int >= 1")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0
        self.steps = 0

    def check(self, loss, step: int | None = None) -> bool:
        """True when the step may proceed; False when it must be skipped (no backward / no update).

        Args:
            loss: float or 0-dim tensor (``float()`` is applied; on GPU this synchronises).
            step: optimiser step, for the message; defaults to the count of calls.

        Raises:
            NonFiniteLossError: on the ``max_consecutive + 1``-th non-finite loss in a row.
        """
        step = self.steps if step is None else step
        self.steps += 1
        value = float(loss)
        if math.isfinite(value):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteLossError(
                f"loss was {value} for {self.consecutive} consecutive steps (up to step {step}; limit "
                f"max_consecutive={self.max_consecutive}); the run has diverged: lower the learning rate, "
                f"use bf16 instead of fp16, or check the data around this step")
        log.warning("step %s: non-finite loss %s, skipping (%d in a row, %d skipped in total)",
                    step, value, self.consecutive, self.skipped)
        return False


def check_pair(chosen: str | Sequence[int], rejected: str | Sequence[int], row: int | str) -> None:
    """Reject a preference pair that carries no signal.

    Args:
        chosen, rejected: response texts or token ids.
        row: row id for the message.

    Raises:
        BadRowError: a side is missing/empty, or both sides are identical (the DPO log-ratio
            difference is then 0 whatever the model does).
    """
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None or (isinstance(value, str) and not value.strip()) or len(value) == 0:
            raise BadRowError(f"row {row}: field {field!r} is empty ({value!r}); a preference pair needs "
                              f"two non-empty responses")
    same = chosen.strip() == rejected.strip() if isinstance(chosen, str) and isinstance(rejected, str) \
        else list(chosen) == list(rejected)
    if same:
        raise BadRowError(f"row {row}: 'chosen' and 'rejected' are identical ({str(chosen)[:60]!r}); "
                          f"the pair carries no preference")


class TruncationCounter:
    """Count sequences longer than ``max_len`` that get cut, and warn once when too many are.

    Args:
        max_len: token budget per sequence.
        warn_fraction: warn when more than this fraction of sequences seen so far was truncated.
    """

    def __init__(self, max_len: int, warn_fraction: float = 0.05):
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"TruncationCounter: max_len={max_len!r} must be an int >= 1")
        self.max_len, self.warn_fraction = max_len, warn_fraction
        self.seen = self.truncated = self.tokens_dropped = 0
        self._warned = False

    def truncate(self, ids: Sequence[int]) -> Sequence[int]:
        """``ids[:max_len]``, counting the cut."""
        self.seen += 1
        if len(ids) > self.max_len:
            self.truncated += 1
            self.tokens_dropped += len(ids) - self.max_len
            ids = ids[: self.max_len]
        if not self._warned and self.fraction > self.warn_fraction and self.seen >= 20:
            self._warned = True  # once: the summary carries the final numbers
            log.warning("%d of %d sequences (%.1f%%) exceed max_len=%d and are truncated; raise max_len",
                        self.truncated, self.seen, 100 * self.fraction, self.max_len)
        return ids

    @property
    def fraction(self) -> float:
        """Share of sequences truncated so far (0 before any)."""
        return self.truncated / self.seen if self.seen else 0.0

    def summary(self) -> dict[str, float]:
        """``{"seen", "truncated", "tokens_dropped", "fraction"}`` for logging."""
        return {"seen": self.seen, "truncated": self.truncated, "tokens_dropped": self.tokens_dropped,
                "fraction": self.fraction}
