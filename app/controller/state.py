"""Where the current flywheel iteration stands, saved so a killed controller resumes.

An iteration runs the stages of ``STAGES`` in order; ``tune`` and ``merge`` are optional and are
*skipped* when not enabled. ``IterationState.stage_index`` is the position in ``STAGES`` just
after the last completed or skipped stage, and the invariant checked on every load is

    completed ∪ skipped == STAGES[:stage_index]   (in order, skipped ⊆ optional stages)

so a state file that was edited by hand or half-written is rejected rather than resumed.

The functions here are pure (old state in, new state out); ``StateStore`` persists a state with
write-temp + fsync + ``os.replace``, so the file on disk is always either the old or the new
state, never a mixture. One controller writes a given file; there is no locking.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.atomic_files import write_text_atomic

STAGES: tuple[str, ...] = ("ingest", "select", "label", "train", "tune", "merge", "evaluate", "decide", "deploy")
OPTIONAL_STAGES: frozenset[str] = frozenset({"tune", "merge"})
Status = Literal["idle", "running", "stopped", "failed"]
_FORMAT = 1  # bump when the file layout changes


class StateError(ValueError):
    """A transition the state machine refuses (out-of-order completion, double start, ...)."""


class StateCorruptError(ValueError):
    """The state file exists but cannot be trusted (bad JSON, checksum mismatch, broken invariant)."""


class IterationState(BaseModel):
    """Progress of the current (or last) iteration; JSON-serialisable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iteration: int = Field(0, ge=0, description="Number of the current or last iteration; 0 before the first one")
    stage_index: int = Field(0, ge=0, le=len(STAGES), description="Position in STAGES after the last completed or skipped stage")
    completed: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Completed stage -> its outputs (pool version, run id, ...), in order")
    skipped: list[str] = Field(default_factory=list, description="Optional stages skipped in this iteration, in order")
    status: Status = Field("idle", description="idle (no iteration in flight) | running | stopped | failed")
    last_decision: dict[str, Any] | None = Field(None, description="Outputs of the most recent 'decide' stage, kept across iterations")
    error: str | None = Field(None, description="Why the iteration failed (status 'failed' only)")
    updated_at: str = Field("", description="ISO-8601 UTC time of the last transition")

    @model_validator(mode="after")
    def _consistent(self) -> IterationState:
        seen = [s for s in STAGES if s in self.completed or s in self.skipped]
        expected = list(STAGES[: self.stage_index])
        in_order = list(self.completed) == [s for s in seen if s in self.completed] and self.skipped == [
            s for s in seen if s in self.skipped
        ]
        if seen != expected or not in_order:
            raise ValueError(
                f"completed {list(self.completed)} + skipped {self.skipped} must be exactly the stages "
                f"before stage_index {self.stage_index}, in order: {expected}"
            )
        if set(self.completed) & set(self.skipped):
            raise ValueError(f"stages both completed and skipped: {sorted(set(self.completed) & set(self.skipped))}")
        if not set(self.skipped) <= OPTIONAL_STAGES:
            raise ValueError(f"only optional stages {sorted(OPTIONAL_STAGES)} can be skipped, got {self.skipped}")
        if self.status == "failed" and not self.error:
            raise ValueError("status 'failed' needs an error message")
        return self


def _now(now: datetime | None) -> str:
    return (now or datetime.now(timezone.utc)).isoformat()


def _check_enabled(enabled: Iterable[str]) -> set[str]:
    enabled = set(enabled)
    unknown = enabled - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages in enabled: {sorted(unknown)}; optional stages are {sorted(OPTIONAL_STAGES)}")
    return enabled


def next_stage(state: IterationState, enabled: Iterable[str]) -> str | None:
    """The stage to run next, or None when no iteration is in flight or it has finished.

    Args:
        state: Current state (its status is not consulted: a failed or stopped iteration
            resumes at the same stage once it is set running again).
        enabled: Optional stages to run (``{"tune"}``, ``{"tune", "merge"}``, ...); required
            stages always run, so naming them is allowed and changes nothing.
    """
    enabled = _check_enabled(enabled)
    if state.iteration == 0:
        return None
    for stage in STAGES[state.stage_index :]:
        if stage not in OPTIONAL_STAGES or stage in enabled:
            return stage
    return None


def start_iteration(state: IterationState, now: datetime | None = None) -> IterationState:
    """Begin iteration ``state.iteration + 1`` at the first stage.

    Raises:
        StateError: An iteration is still running (resume it, or mark it stopped or failed).
    """
    if state.status == "running":
        raise StateError(
            f"iteration {state.iteration} is still running after {STAGES[: state.stage_index]}; "
            "resume it, or set it 'stopped'/'failed' before starting a new one"
        )
    return IterationState(
        iteration=state.iteration + 1, status="running", last_decision=state.last_decision, updated_at=_now(now)
    )


def complete(
    state: IterationState,
    stage: str,
    outputs: dict[str, Any],
    enabled: Iterable[str] | None = None,
    now: datetime | None = None,
) -> IterationState:
    """Record that ``stage`` finished with ``outputs``; optional stages passed over are skipped.

    Completing ``decide`` also sets ``last_decision`` (a ``deploy`` output's ``canary`` outcome is added to
    it); completing the last stage sets the
    status back to ``idle``.

    Args:
        state: A running state.
        stage: One of ``STAGES``.
        outputs: JSON-serialisable dict (e.g. ``{"pool_version": "v3"}``, ``{"run_id": ...}``);
            it is copied through JSON, so later changes to the caller's dict are not seen.
        enabled: Optional stages enabled for this run; when given, passing over one of them is
            refused. None allows skipping any optional stage.
        now: Timestamp for ``updated_at`` (tests pass a fixed one).

    Raises:
        StateError: The state is not running, ``stage`` was already done, or a required (or
            enabled) stage before it has not been completed.
        ValueError: Unknown stage, or outputs that are not a JSON object.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    enabled_set = _check_enabled(enabled) if enabled is not None else set()
    if state.status != "running":
        raise StateError(f"cannot complete {stage!r}: iteration {state.iteration} is {state.status!r}, not running")
    idx = STAGES.index(stage)
    if idx < state.stage_index:
        raise StateError(
            f"stage {stage!r} of iteration {state.iteration} is already done; "
            f"done so far: {list(STAGES[: state.stage_index])}"
        )
    passed_over = STAGES[state.stage_index : idx]
    blocking = [s for s in passed_over if s not in OPTIONAL_STAGES or s in enabled_set]
    if blocking:
        raise StateError(
            f"cannot complete {stage!r} before {blocking[0]!r} (iteration {state.iteration}); "
            f"stages run in order {list(STAGES)}"
        )
    if not isinstance(outputs, dict):
        raise ValueError(f"outputs of stage {stage!r} must be a dict, got {type(outputs).__name__}")
    try:
        outputs = json.loads(json.dumps(outputs, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"outputs of stage {stage!r} are not JSON-serialisable: {e}") from None

    finished = idx == len(STAGES) - 1
    return IterationState.model_validate(  # re-validated: the invariant is checked on every step
        {
            **state.model_dump(),
            "stage_index": idx + 1,
            "completed": {**state.completed, stage: outputs},
            "skipped": [*state.skipped, *passed_over],
            # the deploy stage's canary outcome belongs to the decision it carried out
            "last_decision": outputs if stage == "decide" else (
                {**(state.last_decision or {}), "canary": outputs["canary"]}
                if stage == "deploy" and "canary" in outputs else state.last_decision),
            "status": "idle" if finished else "running",
            "updated_at": _now(now),
        }
    )


def set_status(
    state: IterationState,
    status: Literal["running", "stopped", "failed"],
    error: str | None = None,
    now: datetime | None = None,
) -> IterationState:
    """Mark the iteration stopped, failed (with ``error``) or running again (resume).

    ``idle`` is not settable: an iteration becomes idle by completing its last stage.

    Raises:
        StateError: Resuming when no unfinished iteration exists, or 'failed' without an error.
    """
    if status not in ("running", "stopped", "failed"):
        raise ValueError(f"status must be running | stopped | failed, got {status!r}")
    if status == "failed" and not error:
        raise StateError("status 'failed' needs an error message")
    if status == "running" and (state.iteration == 0 or state.stage_index == len(STAGES)):
        raise StateError("nothing to resume: no unfinished iteration; call start_iteration")
    return IterationState.model_validate(
        {**state.model_dump(), "status": status, "error": error if status == "failed" else None, "updated_at": _now(now)}
    )


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class StateStore:
    """One JSON file holding an ``IterationState``, replaced atomically on every save."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def load(self) -> IterationState:
        """The saved state, or a fresh idle one when the file does not exist yet.

        Raises:
            StateCorruptError: Unreadable JSON, unknown format, checksum mismatch (a partial or
                hand-edited file) or a state that breaks the stage invariant.
        """
        if not self.path.exists():
            return IterationState()
        try:
            envelope = json.loads(self.path.read_text(encoding="utf-8"))
            payload, digest, fmt = envelope["state"], envelope["sha256"], envelope["format"]
        except (ValueError, KeyError, TypeError) as e:
            raise StateCorruptError(f"state file {self.path} is not a valid state envelope: {e!r}") from None
        if fmt != _FORMAT:
            raise StateCorruptError(f"state file {self.path} has format {fmt!r}; this code reads format {_FORMAT}")
        if _digest(payload) != digest:
            raise StateCorruptError(f"state file {self.path} fails its sha256 check (partial write or manual edit)")
        try:
            return IterationState.model_validate(payload)
        except ValidationError as e:
            raise StateCorruptError(f"state file {self.path} holds an inconsistent state: {e}") from None

    def save(self, state: IterationState) -> None:
        """Write ``state`` so that a crash at any point leaves the old or the new file, whole
        (``app.atomic_files``: temp file, fsync, ``os.replace``, fsync of the directory)."""
        payload = state.model_dump(mode="json")
        text = json.dumps({"format": _FORMAT, "sha256": _digest(payload), "state": payload}, indent=1)
        write_text_atomic(self.path, text)
