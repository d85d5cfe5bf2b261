"""Drive one iteration through its stages, saving the state after every stage.

The stage bodies are callables supplied by the caller (the Controller actor passes Ray-backed
ones, the unit tests plain functions), so resume logic is tested without Ray:

* ``begin``: resume the unfinished iteration if there is one, else start the next.
* ``run_stages``: run what is left in order; after each stage ``complete`` + ``StateStore.save``.
  A process killed inside a stage leaves the state at the last completed stage, so the next
  ``run_stages`` redoes only the interrupted one. An exception marks the iteration failed (and
  is re-raised); ``should_stop`` checked before each stage marks it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from app.controller.state import STAGES, IterationState, StateError, StateStore, complete, next_stage, set_status, start_iteration

StageFn = Callable[[IterationState], dict[str, Any]]


def in_flight(state: IterationState) -> bool:
    """True when an iteration has started and not finished (running, stopped or failed mid-way)."""
    return state.iteration > 0 and state.stage_index < len(STAGES) and state.status != "idle"


def begin(store: StateStore, now: datetime | None = None) -> tuple[IterationState, bool]:
    """Resume the unfinished iteration, or start the next one; saved before returning.

    Returns:
        ``(state, resumed)``; ``resumed`` is True when an unfinished iteration was picked up.
    """
    state = store.load()
    if in_flight(state):
        if state.status != "running":
            state = set_status(state, "running", now=now)
            store.save(state)
        return state, True
    state = start_iteration(state, now=now)
    store.save(state)
    return state, False


def run_stages(
    store: StateStore,
    stage_fns: Mapping[str, StageFn],
    enabled: Iterable[str] = (),
    should_stop: Callable[[], bool] = lambda: False,
    on_event: Callable[[str, str, IterationState], None] | None = None,
    now: Callable[[], datetime | None] = lambda: None,
) -> IterationState:
    """Run the remaining stages of the running iteration in ``store``.

    Args:
        store: Where the state lives; it must hold a running iteration (see ``begin``).
        stage_fns: Stage name -> ``fn(state) -> outputs``; ``state.completed`` holds the outputs
            of earlier stages (the only way a stage sees them, so a resumed stage sees the same).
        enabled: Optional stages to run; others are skipped.
        should_stop: Checked before each stage; True marks the iteration ``stopped`` and returns.
        on_event: Called with ("start" | "done", stage, state) around each stage.
        now: Clock for ``updated_at`` (tests pass a fixed one).

    Returns:
        The last saved state: ``idle`` (finished) or ``stopped``.

    Raises:
        StateError: No running iteration in the store.
        KeyError: A stage to run has no function in ``stage_fns``.
        Exception: Whatever a stage raised, after the iteration was saved as ``failed``.
    """
    enabled = set(enabled)
    state = store.load()
    if state.status != "running" or not in_flight(state):
        raise StateError(f"no running iteration to drive (iteration {state.iteration}, status {state.status!r})")
    while (stage := next_stage(state, enabled)) is not None:
        if should_stop():
            state = set_status(state, "stopped", now=now())
            store.save(state)
            return state
        if stage not in stage_fns:
            raise KeyError(f"no function for stage {stage!r}; given: {sorted(stage_fns)}")
        if on_event:
            on_event("start", stage, state)
        try:
            outputs = stage_fns[stage](state)
        except Exception as e:
            state = set_status(state, "failed", error=f"{stage}: {type(e).__name__}: {e}"[:2000], now=now())
            store.save(state)
            raise
        state = complete(state, stage, outputs, enabled=enabled, now=now())
        store.save(state)
        if on_event:
            on_event("done", stage, state)
    return state
