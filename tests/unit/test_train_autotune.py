"""The throughput autotuner's search on an analytic cost model (no training: the model is the measurement).

Cost model of one device, per-worker batch 32 rows of T = 128 tokens per optimiser step, micro-batch m,
accumulation a = 32 / m, loader workers w (times in ms):

    micro-batch time  t(m)  = 8 + 1·m + 0.5·m²     (launch overhead, compute, memory pressure)
    step time               = a · t(m) + d(w),  d(w) = 16 / (w + 1) + 2·w   (data prep, worker overhead)
    tokens/s                = 32 · 128 / step time · 1000

    a·t(m) = 32·(8/m + 1 + 0.5·m):  m=1: 304, m=2: 192, m=4: 160, m=8: 192, m=16: 416, m=32: 832
    d(w): w=0: 16, w=1: 10, w=2: 9.333, w=4: 11.2
"""

from __future__ import annotations

import pytest

from app.train.autotune import Trial, micro_batches, search


def _tokens_per_s(trial: Trial, max_micro: int = 64) -> float | None:
    if trial.micro_batch > max_micro:  # out of memory
        return None
    m, a, w = trial.micro_batch, trial.grad_accum, trial.loader_workers
    step_ms = a * (8 + m + 0.5 * m * m) + 16 / (w + 1) + 2 * w
    return 32 * 128 / step_ms * 1000


def test_micro_batches_are_the_divisors_that_keep_the_global_batch():
    assert micro_batches(64, 2) == [1, 2, 4, 8, 16, 32]  # 64 / 2 workers = 32 rows per worker
    assert micro_batches(64, 2, max_micro=8) == [1, 2, 4, 8]
    assert micro_batches(12, 1) == [1, 2, 3, 4, 6, 12]
    with pytest.raises(ValueError, match="multiple of the 3 data-parallel"):
        micro_batches(64, 3)


def test_search_climbs_to_the_peak_then_tunes_loader_workers():
    best, hist = search(64, 2, _tokens_per_s, loader_workers=(0, 1, 2, 4))
    # climb: m = 1, 2, 4 rise; m = 8 falls (192 > 160 ms) and stops it; then w = 1, 2, 4 at m = 4
    assert [t.as_dict() for t, _ in hist] == [
        {"micro_batch": 1, "grad_accum": 32, "loader_workers": 0}, {"micro_batch": 2, "grad_accum": 16, "loader_workers": 0},
        {"micro_batch": 4, "grad_accum": 8, "loader_workers": 0}, {"micro_batch": 8, "grad_accum": 4, "loader_workers": 0},
        {"micro_batch": 4, "grad_accum": 8, "loader_workers": 1}, {"micro_batch": 4, "grad_accum": 8, "loader_workers": 2},
        {"micro_batch": 4, "grad_accum": 8, "loader_workers": 4}]
    assert best == Trial(4, 8, 2)
    # 4096 tokens / (160 + 9.333) ms = 24,189 tokens/s; 7 trials instead of the 6 × 4 grid
    assert dict(hist)[best] == pytest.approx(4096 / 169.3333 * 1000, rel=1e-4)
    grid = [Trial(m, 32 // m, w) for m in micro_batches(64, 2) for w in (0, 1, 2, 4)]
    assert max(grid, key=_tokens_per_s) == best


def test_out_of_memory_stops_the_climb_and_keeps_the_last_fitting_size():
    best, hist = search(64, 2, lambda t: _tokens_per_s(t, max_micro=2))
    assert [(t.micro_batch, v is None) for t, v in hist] == [(1, False), (2, False), (4, True)]
    assert best == Trial(2, 16, 0)
    with pytest.raises(RuntimeError, match="every trial failed"):
        search(8, 1, lambda t: None)
