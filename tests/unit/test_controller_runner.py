"""Iteration driver: a crash inside any stage resumes at that stage, finished stages never rerun."""

from datetime import datetime, timezone

import pytest

from app.controller.runner import begin, in_flight, run_stages
from app.controller.state import STAGES, IterationState, StateError, StateStore, start_iteration

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
REQUIRED = [s for s in STAGES if s not in ("tune", "merge")]  # 7 stages run when no optional one is enabled


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so the runner cannot record it (like a dead process)."""


def make_fns(calls, die_in=None):
    def fn(stage):
        def run(state):
            calls.append(stage)
            if stage == die_in:
                raise Killed(stage)
            # each stage sees its predecessors' outputs: they come back from disk after a restart
            prev = REQUIRED[REQUIRED.index(stage) - 1] if stage != "ingest" else None
            seen = state.completed[prev]["n"] if prev else 0
            return {"n": seen + 1}

        return run

    return {s: fn(s) for s in REQUIRED}


@pytest.mark.parametrize("die_in", REQUIRED)
def test_resume_from_each_stage(tmp_path, die_in):
    store = StateStore(tmp_path / "state.json")
    state, resumed = begin(store, now=NOW)
    assert (state.iteration, resumed) == (1, False)
    calls = []
    with pytest.raises(Killed):
        run_stages(store, make_fns(calls, die_in), now=lambda: NOW)
    k = REQUIRED.index(die_in)
    assert calls == REQUIRED[: k + 1]
    on_disk = store.load()
    assert list(on_disk.completed) == REQUIRED[:k] and on_disk.status == "running"

    # "restart": a new process loads the file and resumes the same iteration at the killed stage
    state, resumed = begin(store, now=NOW)
    assert (state.iteration, resumed) == (1, True)
    calls2 = []
    final = run_stages(store, make_fns(calls2), now=lambda: NOW)
    assert calls2 == REQUIRED[k:]  # nothing finished is redone
    # the chain of outputs is unbroken across the restart: stage j saw j-1 finished before it
    assert [final.completed[s]["n"] for s in REQUIRED] == list(range(1, 8))
    assert final.status == "idle" and final.skipped == ["tune", "merge"] and not in_flight(final)
    assert begin(store, now=NOW)[0].iteration == 2  # the next begin starts a new iteration


def test_exception_marks_failed_and_resume_reruns_only_that_stage(tmp_path):
    store = StateStore(tmp_path / "s.json")
    begin(store, now=NOW)
    fns = make_fns([])
    fns["train"] = lambda s: (_ for _ in ()).throw(RuntimeError("out of memory"))
    with pytest.raises(RuntimeError):
        run_stages(store, fns, now=lambda: NOW)
    s = store.load()
    assert s.status == "failed" and s.error == "train: RuntimeError: out of memory"
    assert list(s.completed) == ["ingest", "select", "label"]
    state, resumed = begin(store, now=NOW)
    assert resumed and state.status == "running" and state.error is None
    calls = []
    run_stages(store, make_fns(calls), now=lambda: NOW)
    assert calls == ["train", "evaluate", "decide", "deploy"]


def test_stop_request_finishes_current_stage_then_persists(tmp_path):
    store = StateStore(tmp_path / "s.json")
    begin(store, now=NOW)
    calls = []
    # stop is asked during "label": it completes, is saved, and "train" never starts
    final = run_stages(store, make_fns(calls), should_stop=lambda: "label" in calls, now=lambda: NOW)
    assert calls == ["ingest", "select", "label"]
    assert final.status == "stopped" and store.load() == final and list(final.completed) == calls
    events = []
    begin(store, now=NOW)
    run_stages(store, make_fns([]), on_event=lambda e, st, s: events.append((e, st)), now=lambda: NOW)
    assert events[0] == ("start", "train") and events[-1] == ("done", "deploy") and len(events) == 8  # 4 stages × 2


def test_run_stages_refuses_without_running_iteration(tmp_path):
    store = StateStore(tmp_path / "s.json")
    with pytest.raises(StateError, match="no running iteration"):
        run_stages(store, make_fns([]))
    store.save(start_iteration(IterationState(), now=NOW))
    with pytest.raises(KeyError, match="no function for stage 'ingest'"):
        run_stages(store, {}, now=lambda: NOW)
