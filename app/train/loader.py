"""This rank's micro-batches in training order, built in the loop or by data-loader worker processes.

Micro-batch k (k counts this rank's micro-batches, see ``runner.Plan.indices``) is a pure function of k,
so worker processes can build batches ahead of the loop in any number without changing what the model
sees: ``torch.utils.data.DataLoader`` over the indices k0, k0+1, … with ``trainer.loader_workers``
processes returns them in order. With 0 workers each batch is built when it is needed, which adaptive
curriculum pacing requires (its batch depends on the losses of the steps before).
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch


class _ByIndex(torch.utils.data.Dataset):
    def __init__(self, make: Callable[[int], tuple[dict, int]]):
        self.make = make

    def __getitem__(self, k: int) -> tuple[dict, int]:
        return self.make(k)


def _identity(x):
    return x


class MicroBatches:
    """``next()`` → (batch, epoch) of micro-batch k0, k0+1, …; ``close()`` stops the worker processes."""

    def __init__(self, make: Callable[[int], tuple[dict, int]], k0: int, workers: int = 0):
        if workers < 0:
            raise ValueError(f"trainer.loader_workers={workers}: must be >= 0")
        self.make, self.k, self.workers = make, k0, workers
        self._it = None
        if workers:
            # an endless sampler: the loop decides when to stop; prefetch_factor batches per worker in flight
            loader = torch.utils.data.DataLoader(_ByIndex(make), sampler=itertools.count(k0), batch_size=None,
                                                 num_workers=workers, collate_fn=_identity, prefetch_factor=2)
            self._it = iter(loader)

    def next(self) -> tuple[dict, int]:
        out = next(self._it) if self._it is not None else self.make(self.k)
        self.k += 1
        return out

    def close(self) -> None:
        if self._it is not None:
            self._it._shutdown_workers()
            self._it = None
