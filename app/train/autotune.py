"""Throughput autotuning of micro-batch, gradient accumulation and loader workers (seed 7.5.5).

The global batch G is part of the optimisation problem, not of the speed problem, so it is held fixed:
with W data-parallel workers a micro-batch m needs accumulation a = G / (m·W), and only the divisors m
of G/W are candidates. Throughput in m is unimodal on a device (it rises while the device fills, then
falls or the step runs out of memory), so the search climbs m in ascending order and stops at the first
drop or failure, then tries the loader-worker counts at the best m — a handful of trials instead of
the full grid (DeepSpeed's autotuner prunes the same way, "fast" mode).

``measure(trial)`` runs a short real training trial and returns tokens/s, or None when it failed
(out of memory, a worker crash); :func:`search` is pure given ``measure``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable


@dataclass(frozen=True)
class Trial:
    """One setting: per-worker micro-batch, gradient accumulation, data-loader worker processes."""

    micro_batch: int
    grad_accum: int
    loader_workers: int

    def as_dict(self) -> dict:
        return asdict(self)


def micro_batches(global_batch: int, world: int, max_micro: int | None = None) -> list[int]:
    """Ascending micro-batch sizes m with m·world·a == global_batch for an integer a (divisors of G/W)."""
    if global_batch < 1 or world < 1 or global_batch % world:
        raise ValueError(f"autotune: the global batch {global_batch} must be a positive multiple of the "
                         f"{world} data-parallel workers")
    per = global_batch // world
    return [m for m in range(1, per + 1) if per % m == 0 and (max_micro is None or m <= max_micro)]


def search(global_batch: int, world: int, measure: Callable[[Trial], float | None],
           loader_workers: Iterable[int] = (0,), max_micro: int | None = None,
           tolerance: float = 0.0) -> tuple[Trial, list[tuple[Trial, float | None]]]:
    """Best (micro-batch, accumulation, loader workers) by measured tokens/s at a constant global batch.

    Args:
        measure: tokens/s of a short trial, None when the trial failed.
        loader_workers: counts tried at the best micro-batch (the first is used while climbing).
        tolerance: a micro-batch must beat the best by more than this fraction to count as a rise
            (trial noise), otherwise the climb stops.

    Returns:
        (best trial, every (trial, tokens/s) measured, in order). Raises RuntimeError if every trial failed.
    """
    per = global_batch // max(1, world)
    workers = list(loader_workers) or [0]
    history: list[tuple[Trial, float | None]] = []
    best: tuple[Trial, float] | None = None
    for m in micro_batches(global_batch, world, max_micro):
        trial = Trial(m, per // m, workers[0])
        tps = measure(trial)
        history.append((trial, tps))
        if tps is None or (best is not None and tps <= best[1] * (1 + tolerance)):
            break  # out of memory, or past the peak of a unimodal curve
        best = (trial, tps)
    if best is None:
        raise RuntimeError(f"autotune: every trial failed: {[t.as_dict() for t, _ in history]}")
    for w in workers[1:]:
        trial = Trial(best[0].micro_batch, best[0].grad_accum, w)
        tps = measure(trial)
        history.append((trial, tps))
        if tps is not None and tps > best[1] * (1 + tolerance):
            best = (trial, tps)
    return best[0], history
