"""The controller's own durable settings beside the iteration state: run mode, the critical flag,
when and on how much data the last training ran, and the trigger measurement.

``IterationState`` (``state.py``) says where an iteration stands; ``ControlState`` says what the
controller should do next (keep iterating, stop) and what the triggers compare against. Both are
saved atomically so a restarted controller picks up exactly where the killed one was.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.atomic_files import write_json_atomic
from app.controller.triggers import TriggerConfig, TriggerDecision, evaluate_triggers

Mode = Literal["running", "stopping", "stopped", "failed"]


class ControlState(BaseModel):
    """What the controller was told and what the triggers measure against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field("stopped", description="running: iterate on triggers; stopping: finish the stage, then stop; stopped; failed")
    critical: bool = Field(False, description="Critical-fix flag (set by `jobs.flywheel trigger`), cleared when an iteration starts")
    critical_reason: str | None = Field(None, description="Why the critical flag was set")
    stop_after_iteration: int | None = Field(None, ge=0, description="Stop once this iteration number has finished (None: never)")
    last_train_at: float | None = Field(None, description="Unix time the last training stage finished (None: never)")
    items_at_last_train: int = Field(0, ge=0, description="Pool rows when the last trained iteration ingested")
    source_signature: str = Field("", description="Size and mtime of the configured source files at the last ingest")
    error: str | None = Field(None, description="Why the controller failed (mode 'failed')")
    trainer_overrides: dict[str, Any] = Field(default_factory=dict, description="Trainer settings changed by evaluation feedback, used by the next training")
    overrides_reason: str | None = Field(None, description="Why trainer_overrides were set (app.controller.feedback.adjust_training)")


class ControlStore:
    """One JSON file holding a ``ControlState``.

    ``update`` is a read-modify-write under a lock: the controller's API threads (``trigger``,
    ``stop``) and its iteration thread share one store, and must not drop each other's changes.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> ControlState:
        if not self.path.exists():
            return ControlState()
        try:
            return ControlState.model_validate_json(self.path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"control file {self.path} is not a valid ControlState: {e}") from None

    def save(self, state: ControlState) -> None:
        write_json_atomic(self.path, state.model_dump(mode="json"))

    def update(self, **changes: Any) -> ControlState:
        """Load, change the given fields, validate, save; returns the new state."""
        with self._lock:
            new = ControlState.model_validate({**self.load().model_dump(), **changes})
            self.save(new)
            return new


def source_signature(paths: list[str]) -> str:
    """``path:size:mtime_ns`` of each source, joined: changes when data is appended or a file replaced.

    A missing file reads as ``path:missing`` so that its appearance counts as a change.
    """
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
            parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{p}:missing")
    return "|".join(parts)


def measure_triggers(
    cfg: TriggerConfig, control: ControlState, pool_total: int, now: float, online_metric: float | None = None,
    online_threshold: float | None = None,
) -> TriggerDecision:
    """Evaluate the triggers from the controller's records.

    ``online_threshold`` (from ``app.controller.online.online_trigger_inputs``) replaces
    ``cfg.degradation_threshold`` when given, e.g. the endpoint's val accuracy minus a tolerance.

    new_items = max(pool_total − items_at_last_train, 0) (pool rows that arrived since the last
    trained iteration ingested); hours_since_train = (now − last_train_at) / 3600, or ∞ when no
    training ever ran (so the time condition holds on a fresh flywheel).
    """
    if isinstance(pool_total, bool) or not isinstance(pool_total, int) or pool_total < 0:
        raise ValueError(f"pool_total must be an int >= 0, got {pool_total!r}")
    if online_threshold is not None:
        cfg = cfg.model_copy(update={"degradation_threshold": float(online_threshold)})
    hours = math.inf if control.last_train_at is None else max(0.0, (now - control.last_train_at) / 3600.0)
    return evaluate_triggers(cfg, max(pool_total - control.items_at_last_train, 0), hours, online_metric, control.critical)
