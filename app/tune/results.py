"""A study's outcome as plain data: per-trial records in, the result JSON of `jobs.tune run` out.

Kept apart from Ray so the contract ("best" is one of "trials" and has the best score) is tested on
hand-written records. A trial record, as the driver's callback builds it:
    {"trial_id", "config" (resolved), "history": [{"training_iteration", <metric>, ...}, ...],
     "status": "running" | "finished" | "errored", "error": str | None, "stopped_by": str | None,
     "exploits": [{"iteration", "donor", "old_config", "new_config"}, ...]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def trial_score(history: Sequence[Mapping[str, Any]], metric: str, mode: str) -> float | None:
    """Best finite value of `metric` over the trial's reports (max or min by `mode`); None without one."""
    values = [float(r[metric]) for r in history if metric in r and math.isfinite(float(r[metric]))]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def stop_reason(record: Mapping[str, Any], max_t: int) -> str:
    """Why a trial ended: "error: ...", "stopper: ...", "max_t" or "scheduler" (stopped early by ASHA,
    Hyperband or the median rule); "running" while it runs."""
    if record["status"] == "errored":
        return f"error: {record.get('error') or 'unknown'}"
    if record["status"] == "running":
        return "running"
    if record.get("stopped_by"):
        return f"stopper: {record['stopped_by']}"
    last = max((int(r.get("training_iteration", 0)) for r in record["history"]), default=0)
    return "max_t" if last >= max_t else "scheduler"


def summarize_trial(record: Mapping[str, Any], metric: str, mode: str, max_t: int) -> dict[str, Any]:
    """One entry of the result's "trials" list.

    iterations = reports the trial made (its compute, exploited trials included: each report is one
    iteration trained by this trial); exploited_from = [{"iteration", "donor"}] per PBT exploit.
    """
    return {
        "trial_id": record["trial_id"],
        "config": dict(record["config"]),
        "score": trial_score(record["history"], metric, mode),
        "iterations": len(record["history"]),
        "status": record["status"],
        "stop_reason": stop_reason(record, max_t),
        "exploited_from": [{"iteration": e["iteration"], "donor": e["donor"]} for e in record.get("exploits", [])],
    }


def pick_best(trials: Sequence[Mapping[str, Any]], mode: str) -> dict[str, Any] | None:
    """{"trial_id", "config", "score"} of the best-scoring trial that did not error (an errored trial only
    when no other has a score); ties go to the earlier trial. None when no trial has a score."""
    for pool in ([t for t in trials if t["status"] != "errored"], list(trials)):
        scored = [t for t in pool if t["score"] is not None]
        if scored:
            sign = 1.0 if mode == "max" else -1.0
            best = max(scored, key=lambda t: sign * t["score"])  # max keeps the first of equal keys
            return {"trial_id": best["trial_id"], "config": best["config"], "score": best["score"]}
    return None


def study_result(
    study: str,
    scheduler: str,
    search: str,
    metric: str,
    mode: str,
    max_t: int,
    records: Sequence[Mapping[str, Any]],
    warm_start_from: list[str] | None = None,
) -> dict[str, Any]:
    """The result JSON of a study (keys as in issue 8): best, trials, total_iterations, warm_start_from."""
    trials = [summarize_trial(r, metric, mode, max_t) for r in records]
    return {
        "study": study,
        "scheduler": scheduler,
        "search": search,
        "metric": metric,
        "mode": mode,
        "best": pick_best(trials, mode),
        "trials": trials,
        "total_iterations": sum(t["iterations"] for t in trials),
        "warm_start_from": list(warm_start_from or []),
    }


def status_counts(records: Sequence[Mapping[str, Any]], metric: str, mode: str, max_t: int) -> dict[str, Any]:
    """What `Tuner.status()` answers: trial counts by status and the best so far."""
    trials = [summarize_trial(r, metric, mode, max_t) for r in records]
    counts = {s: sum(t["status"] == s for t in trials) for s in ("running", "finished", "errored")}
    return {**counts, "best": pick_best(trials, mode), "total_iterations": sum(t["iterations"] for t in trials)}


def iterations_to_target(records: Sequence[Mapping[str, Any]], metric: str, mode: str, target: float) -> int | None:
    """Trial-iterations the study had spent, over all trials, when some trial first reported `metric` at or
    beyond `target` (>= for max, <= for min): the `report_index` (1-based arrival order) of that report.
    None when no report reached it."""
    hits = [int(r["report_index"]) for rec in records for r in rec["history"]
            if metric in r and "report_index" in r and math.isfinite(float(r[metric]))
            and (float(r[metric]) >= target if mode == "max" else float(r[metric]) <= target)]
    return min(hits) if hits else None
