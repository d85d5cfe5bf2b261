"""Canary rollout rules: traffic split, per-window statistics, the gate and the next action. No I/O.

A rollout walks `CanaryPlan.steps` (percent of traffic on the challenger). After each window of at least
`window_requests` challenger requests, `evaluate_window` compares challenger and champion and
`next_action` says "advance" (next step), "hold" (keep collecting: not enough data yet), "rollback" (a
check failed) or "done" (the last step passed). The caller (a Ray actor) owns timers and deployment.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Action = Literal["advance", "hold", "rollback", "done"]
_BUCKETS = 10_000  # split resolution: 0.01 % of traffic


class CanaryPlan(BaseModel):
    """Rollout steps and the thresholds a challenger window must meet to move on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: tuple[float, ...] = Field(
        (10, 50, 100), description="percent of traffic on the challenger per step; ends at 100")
    window_requests: int = Field(500, ge=1, description="challenger requests per window before the gate judges it")
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="highest allowed challenger error rate (errors / requests)")
    p99_ratio_max: float = Field(1.2, gt=0, description="highest allowed challenger p99 latency / champion p99 latency")
    min_agreement: float = Field(
        0.9, ge=0, le=1, description="least top-1 agreement with the champion on shadowed requests")
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="least accuracy on feedback labels; None skips the check")
    max_accuracy_drop: float | None = Field(
        0.05, ge=0, le=1, description="largest champion minus challenger feedback accuracy; checked only where "
        "both have min_samples feedback labels in the window; None skips the check")
    accuracy_drop_confidence: float | None = Field(
        None, gt=0.5, lt=1, description="roll back on accuracy only when the drop exceeds max_accuracy_drop at this "
        "one-sided confidence (Newcombe's interval on the two windows' accuracies); None compares point estimates")
    min_samples: int = Field(
        30, ge=1, description="least champion latencies / comparisons / labels before those checks count")

    @model_validator(mode="after")
    def _check_steps(self) -> "CanaryPlan":
        s = self.steps
        if not s or any(not 0 < p <= 100 for p in s) or any(b <= a for a, b in zip(s, s[1:])) or s[-1] != 100:
            raise ValueError(f"steps = {list(s)}; need strictly increasing percents in (0, 100] ending at 100, "
                             "e.g. [10, 50, 100]")
        return self


@dataclass
class WindowStats:
    """Accumulator for one model over one window; `to_dict()` is what `evaluate_window` reads."""

    count: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    compared: int = 0  # shadowed requests whose answer was compared with the champion's
    agreed: int = 0
    labelled: int = 0  # requests that later received a feedback label
    correct: int = 0

    def record(self, latency_ms: float, error: bool = False) -> None:
        """Count one served request with its latency (ms) and whether it failed."""
        if not (np.isfinite(latency_ms) and latency_ms >= 0):
            raise ValueError(f"latency_ms = {latency_ms}; must be finite and >= 0")
        self.count += 1
        self.errors += bool(error)
        self.latencies_ms.append(float(latency_ms))

    def record_agreement(self, agreed: bool) -> None:
        """Count one shadowed request: did this model's top-1 label equal the champion's?"""
        self.compared += 1
        self.agreed += bool(agreed)

    def record_feedback(self, correct: bool) -> None:
        """Count one feedback label: was this model's answer right?"""
        self.labelled += 1
        self.correct += bool(correct)

    def to_dict(self) -> dict[str, Any]:
        """Counts, rates and p50/p99 latency (numpy percentile, linear); None where there is no data."""
        lat = np.asarray(self.latencies_ms)
        return {
            "count": self.count, "errors": self.errors,
            "error_rate": self.errors / self.count if self.count else None,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "compared": self.compared, "agreement": self.agreed / self.compared if self.compared else None,
            "labelled": self.labelled, "correct": self.correct, "accuracy": self.correct / self.labelled if self.labelled else None,
        }


def _wilson(correct: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval (lo, hi) of a proportion correct / n at normal quantile z."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def accuracy_drop_lower_bound(champ_correct: int, champ_n: int, chall_correct: int, chall_n: int,
                              confidence: float) -> float:
    """One-sided lower confidence bound on champion accuracy minus challenger accuracy.

    Newcombe (1998), "Interval estimation for the difference between independent proportions", method 10:
    ``d - sqrt((p1 - l1)^2 + (u2 - p2)^2)`` with d = p1 - p2 and (l, u) Wilson score limits at z = Phi^-1(conf).
    Written here because scipy/scikit-learn have no difference-of-proportions interval and it is five lines;
    it keeps its coverage on the small windows a canary judges, where the Wald interval does not.
    """
    z = NormalDist().inv_cdf(confidence)
    p1, p2 = champ_correct / champ_n, chall_correct / chall_n
    l1, _ = _wilson(champ_correct, champ_n, z)
    _, u2 = _wilson(chall_correct, chall_n, z)
    return (p1 - p2) - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)


@dataclass(frozen=True)
class GateResult:
    """Verdict on one window. `reasons` lists failed checks, or (when `insufficient`) the missing data."""

    passed: bool
    reasons: list[str]
    metrics: dict[str, Any]
    insufficient: bool = False


def evaluate_window(plan: CanaryPlan, champion_stats: dict[str, Any] | WindowStats,
                    challenger_stats: dict[str, Any] | WindowStats) -> GateResult:
    """Judge a challenger window against the champion.

    Checks (each on a full window only): error_rate <= max_error_rate; p99_ch / p99_champ <= p99_ratio_max;
    agreement >= min_agreement; accuracy >= min_accuracy (when set); champion accuracy - challenger accuracy
    <= max_accuracy_drop (feedback labels, only when both have min_samples of them; with
    accuracy_drop_confidence, the drop's Newcombe lower bound must exceed it to fail). A check without enough data
    (fewer than `min_samples` champion latencies, comparisons or labels) makes the result insufficient
    (hold) unless another check failed outright (rollback).

    Args:
        plan: the rollout plan with the thresholds.
        champion_stats: `WindowStats.to_dict()` (or the WindowStats) of the current model.
        challenger_stats: the same for the candidate model.
    """
    champ = champion_stats.to_dict() if isinstance(champion_stats, WindowStats) else champion_stats
    chall = challenger_stats.to_dict() if isinstance(challenger_stats, WindowStats) else challenger_stats
    metrics: dict[str, Any] = {"challenger_count": chall["count"], "error_rate": chall["error_rate"],
                               "p99_ratio": None, "agreement": chall["agreement"], "accuracy": chall["accuracy"]}
    if chall["count"] < plan.window_requests:
        return GateResult(False, [f"challenger served {chall['count']} requests; window_requests is "
                                  f"{plan.window_requests}"], metrics, insufficient=True)
    failed: list[str] = []
    missing: list[str] = []
    if chall["error_rate"] > plan.max_error_rate:
        failed.append(f"error_rate {chall['error_rate']:.4f} > max_error_rate {plan.max_error_rate}")
    if champ["count"] < plan.min_samples or champ["p99_ms"] is None:
        missing.append(f"champion has {champ['count']} latencies; min_samples is {plan.min_samples}")
    else:
        # A zero champion p99 (clock resolution) compares as 1 when both are zero, else as infinitely slower.
        ratio = chall["p99_ms"] / champ["p99_ms"] if champ["p99_ms"] > 0 else (1.0 if chall["p99_ms"] == 0 else np.inf)
        metrics["p99_ratio"] = float(ratio)
        if ratio > plan.p99_ratio_max:
            failed.append(f"p99 latency ratio {ratio:.3f} > p99_ratio_max {plan.p99_ratio_max} "
                          f"(challenger {chall['p99_ms']:.1f} ms, champion {champ['p99_ms']:.1f} ms)")
    if chall["compared"] < plan.min_samples:
        missing.append(f"challenger has {chall['compared']} shadowed comparisons; min_samples is {plan.min_samples}")
    elif chall["agreement"] < plan.min_agreement:
        failed.append(f"agreement {chall['agreement']:.4f} < min_agreement {plan.min_agreement}")
    if plan.min_accuracy is not None:
        if chall["labelled"] < plan.min_samples:
            missing.append(f"challenger has {chall['labelled']} feedback labels; min_samples is {plan.min_samples}")
        elif chall["accuracy"] < plan.min_accuracy:
            failed.append(f"accuracy {chall['accuracy']:.4f} < min_accuracy {plan.min_accuracy}")
    if plan.max_accuracy_drop is not None and min(chall["labelled"], champ["labelled"]) >= plan.min_samples:
        # Feedback labels arrive late and only for some requests, so this check only runs where they exist
        # (it never holds a window waiting for them); `min_accuracy` is the check that demands labels.
        drop = champ["accuracy"] - chall["accuracy"]
        metrics["champion_accuracy"], metrics["accuracy_drop"] = champ["accuracy"], drop
        if plan.accuracy_drop_confidence is None:
            if drop > plan.max_accuracy_drop:
                failed.append(f"feedback accuracy {chall['accuracy']:.4f} is {drop:.4f} below the champion's "
                              f"{champ['accuracy']:.4f} > max_accuracy_drop {plan.max_accuracy_drop}")
        else:
            # Two windows answer different requests: identical models differ by chance on small windows, so
            # the drop must be established at the stated confidence, not merely observed.
            lo = accuracy_drop_lower_bound(champ["correct"], champ["labelled"], chall["correct"],
                                           chall["labelled"], plan.accuracy_drop_confidence)
            metrics["accuracy_drop_lower_bound"] = lo
            if lo > plan.max_accuracy_drop:
                failed.append(f"feedback accuracy {chall['accuracy']:.4f} is {drop:.4f} below the champion's "
                              f"{champ['accuracy']:.4f}; at {plan.accuracy_drop_confidence:.0%} confidence the "
                              f"drop is at least {lo:.4f} > max_accuracy_drop {plan.max_accuracy_drop}")
    if failed:
        return GateResult(False, failed, metrics)
    return GateResult(not missing, missing, metrics, insufficient=bool(missing))


def next_action(plan: CanaryPlan, current_step_index: int, gate_result: GateResult) -> Action:
    """Decide what the rollout does after a window at `plan.steps[current_step_index]`.

    Returns:
        "rollback" if a check failed, "hold" if data was insufficient, else "advance" to the next step,
        or "done" when the last step (100 %) passed.
    """
    if not 0 <= current_step_index < len(plan.steps):
        raise ValueError(f"current_step_index = {current_step_index}; allowed 0..{len(plan.steps) - 1}")
    if not gate_result.passed:
        return "hold" if gate_result.insufficient else "rollback"
    return "done" if current_step_index == len(plan.steps) - 1 else "advance"


def route_to_challenger(request_id: str, percent: float, salt: str = "") -> bool:
    """Deterministic, sticky traffic split: True for about `percent` % of request ids.

    bucket = blake2b(salt + ":" + request_id) mod 10000; routed iff bucket < percent * 100. The same id always
    gets the same answer, and an id routed at p % stays routed at every larger percent (buckets are nested),
    so users don't flip between models as the rollout advances. Use a new `salt` per rollout so each
    canary sees a different slice of users.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent = {percent}; allowed 0..100")
    digest = hashlib.blake2b(f"{salt}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS < round(percent * _BUCKETS / 100)
