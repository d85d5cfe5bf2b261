"""Optional torch.profiler capture of a few optimiser steps, and the share of time spent communicating.

Enabled by the trainer option ``profile_dir``: every rank records steps ``profile_steps`` (default
2..4, after the first step's warm-up), writes a Chrome trace ``trace_rank<r>.json`` (open it in
chrome://tracing or Perfetto) and a summary ``summary_rank<r>.json``, and rank 0 prints the share.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

# Collective and point-to-point ops as torch.profiler names them (c10d / gloo / DeepSpeed comm wrappers)
COMM = re.compile(r"all_?reduce|all_?gather|reduce_?scatter|broadcast|all_to_all|barrier|c10d|gloo|nccl|"
                  r"\bsend\b|\brecv\b", re.IGNORECASE)


def comm_share(events: Iterable[tuple[str, float]]) -> tuple[float, float, float]:
    """Share of self CPU time in communication ops.

    Args:
        events: (op name, self CPU time in µs) per op kind, e.g. from ``prof.key_averages()``.

    Returns:
        (communication µs, total µs, share = comm / total; 0 when total is 0).
    """
    comm = total = 0.0
    for name, us in events:
        total += us
        if COMM.search(name):
            comm += us
    return comm, total, (comm / total if total else 0.0)


class StepProfiler:
    """Records optimiser steps ``first..last`` (1-based, inclusive) with torch.profiler on this rank."""

    def __init__(self, out_dir: str | Path | None, rank: int, first: int = 2, last: int = 4):
        if out_dir is not None and not 1 <= first <= last:
            raise ValueError(f"trainer.profile_steps=({first}, {last}): need 1 <= first <= last")
        self.out = Path(out_dir) if out_dir else None
        self.rank, self.first, self.last = rank, first, last
        self.prof = None
        self.summary: dict | None = None

    def before(self, step: int) -> None:
        """Call before optimiser step ``step`` (1-based) starts."""
        if self.out is None or step != self.first:
            return
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
        self.prof.__enter__()

    def after(self, step: int, plan_total: int) -> dict | None:
        """Call after step ``step``; at the last profiled step writes the trace and returns the summary."""
        if self.prof is None or (step != self.last and step != plan_total):
            return None
        self.prof.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        trace = self.out / f"trace_rank{self.rank}.json"
        self.prof.export_chrome_trace(str(trace))
        ev = [(e.key, float(e.self_cpu_time_total)) for e in self.prof.key_averages()]
        comm, total, share = comm_share(ev)
        top = sorted(((k, us) for k, us in ev if COMM.search(k)), key=lambda x: -x[1])[:5]
        self.summary = {"rank": self.rank, "steps": [self.first, step], "trace": str(trace),
                        "comm_self_cpu_ms": comm / 1e3, "total_self_cpu_ms": total / 1e3, "comm_share": share,
                        "top_comm_ops": [{"op": k, "self_cpu_ms": us / 1e3} for k, us in top]}
        (self.out / f"summary_rank{self.rank}.json").write_text(json.dumps(self.summary, indent=1))
        self.prof = None
        return self.summary
