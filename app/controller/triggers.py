"""When to start a new flywheel iteration.

Four conditions are measured every time the controller wakes up:

=============  ==========================================================================
``volume``     ``new_items >= min_new_items`` (items added to the pool since the last training run)
``time``       ``hours_since_train >= max_wait_hours``
``degraded``   ``online_metric < degradation_threshold`` (off when the threshold is None;
               False while no online metric is known)
``critical``   ``critical_flag`` (a person or an alert flagged a critical failure)
=============  ==========================================================================

A policy combines them. Every policy is written as OR of AND-clauses, and ``critical`` is a
clause of its own in each one: a flagged critical failure must never wait for a schedule.

===============  ==========================================================================
``seed``         ``critical or degraded or (volume and time)`` (default)
``any``          ``critical or degraded or volume or time``
``all``          ``critical or (volume and time and degraded)``
``volume_only``  ``critical or volume``
===============  ==========================================================================

``seed`` is the seed chapter's "any(conditions) or all(first two)". Read literally, that
expression equals ``any`` (both of the first two true implies any true), so the reading kept
here is: any of the *urgent* conditions (degraded, critical), or both of the first two
(enough new data *and* enough time). That spaces routine retrains at least ``max_wait_hours``
apart and never retrains on a trickle of data, while a regression still retrains at once.
``any`` is the literal reading, for whoever wants it.

When ``degradation_threshold`` is None the ``degraded`` condition is *disabled*: it is removed
from every clause (a clause left empty is dropped), so ``all`` becomes ``critical or (volume
and time)`` rather than "never".
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PolicyName = Literal["seed", "any", "all", "volume_only"]

# Each policy as OR over AND-clauses of condition names (see the module docstring).
POLICIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "seed": (("critical",), ("degraded",), ("volume", "time")),
    "any": (("critical",), ("degraded",), ("volume",), ("time",)),
    "all": (("critical",), ("volume", "time", "degraded")),
    "volume_only": (("critical",), ("volume",)),
}
_ORDER = ("critical", "degraded", "volume", "time")  # order of reasons in a decision


class TriggerConfig(BaseModel):
    """When the controller starts a new iteration (see the module docstring for the policies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_new_items: int = Field(500, ge=1, description="Items added to the pool since the last training run that satisfy the volume condition")
    max_wait_hours: float = Field(24.0, ge=0, allow_inf_nan=False, description="Hours since the last training run that satisfy the time condition")
    degradation_threshold: float | None = Field(
        0.85, allow_inf_nan=False, description="Online metric strictly below this fires the degraded condition; None disables it"
    )
    policy: PolicyName = Field("seed", description="How conditions combine: seed | any | all | volume_only")


@dataclass(frozen=True)
class TriggerDecision:
    """Outcome of one trigger evaluation.

    Attributes:
        fire: True when a new iteration should start.
        reasons: One line per condition in the satisfied clauses, e.g.
            ``"volume: 612 new items >= 500"``; empty when ``fire`` is False.
        values: Every input and threshold, plus ``conditions`` (name -> bool or None when
            disabled) and ``policy``, so a log line or MLflow tag can replay the decision.
    """

    fire: bool
    reasons: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


def _check_number(name: str, value: float | None, *, allow_none: bool) -> None:
    if value is None:
        if not allow_none:
            raise ValueError(f"{name} must be a number, got None")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")


def evaluate_triggers(
    cfg: TriggerConfig,
    new_items: int,
    hours_since_train: float,
    online_metric: float | None,
    critical_flag: bool,
) -> TriggerDecision:
    """Decide whether to start a new iteration.

    Args:
        cfg: Thresholds and policy.
        new_items: Items added to the pool since the last training run (>= 0).
        hours_since_train: Hours since the last training run (>= 0); ``math.inf`` when no
            model was ever trained, which satisfies the time condition.
        online_metric: Latest online quality metric (e.g. accuracy of served predictions
            against later labels), or None while none is known.
        critical_flag: True when a critical failure was flagged.

    Returns:
        A ``TriggerDecision``. ``fire`` is the policy's OR over its clauses; ``reasons``
        lists the conditions of every satisfied clause, in the order critical, degraded,
        volume, time.

    Raises:
        ValueError: A negative count or duration, a NaN, or a non-bool flag.
    """
    if isinstance(new_items, bool) or not isinstance(new_items, numbers.Integral) or new_items < 0:
        raise ValueError(f"new_items must be an int >= 0, got {new_items!r}")
    _check_number("hours_since_train", hours_since_train, allow_none=False)
    if hours_since_train < 0:
        raise ValueError(f"hours_since_train must be >= 0, got {hours_since_train!r}")
    _check_number("online_metric", online_metric, allow_none=True)
    if not isinstance(critical_flag, bool):
        raise ValueError(f"critical_flag must be a bool, got {critical_flag!r}")

    threshold = cfg.degradation_threshold
    conditions: dict[str, bool | None] = {
        "critical": critical_flag,
        "degraded": None if threshold is None else (online_metric is not None and online_metric < threshold),
        "volume": new_items >= cfg.min_new_items,
        "time": hours_since_train >= cfg.max_wait_hours,
    }
    texts = {
        "critical": "critical: a critical failure was flagged",
        "degraded": f"degraded: online metric {online_metric} < threshold {threshold}",
        "volume": f"volume: {new_items} new items >= {cfg.min_new_items}",
        "time": f"time: {hours_since_train:g} h since last training >= {cfg.max_wait_hours:g} h",
    }

    satisfied: set[str] = set()
    for clause in POLICIES[cfg.policy]:
        active = tuple(c for c in clause if conditions[c] is not None)  # drop disabled ones
        if active and all(conditions[c] for c in active):
            satisfied.update(active)
    values = {
        "policy": cfg.policy,
        "new_items": new_items,
        "min_new_items": cfg.min_new_items,
        "hours_since_train": hours_since_train,
        "max_wait_hours": cfg.max_wait_hours,
        "online_metric": online_metric,
        "degradation_threshold": threshold,
        "critical_flag": critical_flag,
        "conditions": conditions,
    }
    reasons = [texts[c] for c in _ORDER if c in satisfied]
    return TriggerDecision(fire=bool(satisfied), reasons=reasons, values=values)
