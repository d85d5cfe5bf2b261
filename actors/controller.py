"""Controller actor: the long-lived, restart-safe owner of the flywheel's iteration state machine.

ingest → select → label → train → [tune] → [merge] → evaluate → decide → deploy, started by triggers
(``app.controller.triggers``). The stage bodies are ``jobs.stages`` (the same code as ``jobs.loop``),
driven by ``app.controller.runner``, which saves the state after every stage under
``<store>/controller/<loop name>/``:

* ``state.json``    where the iteration stands (``app.controller.state``), replaced atomically
* ``control.json``  mode (running / stopping / stopped / failed), critical flag, trigger baselines
* ``events.jsonl``  append-only log: controller starts, trigger firings with values, stage start/done
* ``iter-NNNN/``    per-iteration files (the MLflow run id, the chosen rows)

Ray restarts a crashed Controller (``max_restarts``); ``__init__`` reads ``control.json`` and, when
the mode is ``running``, resumes the unfinished iteration at its first unfinished stage by itself.
The actor is threaded (``max_concurrency``): one thread iterates, others answer ``status``,
``trigger`` and ``stop`` while a stage runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from pathlib import Path

import ray

from app.atomic_files import write_json_atomic
from app.config import LoopConfig
from app.controller.config import ControllerConfig
from app.controller.control import ControlStore, measure_triggers, source_signature
from app.controller.runner import begin, in_flight, run_stages
from app.controller.state import STAGES, StateStore


# a restarted Controller looks for placement groups its dead predecessor's training run asked for late
# (release_orphaned_training_pgs) every ORPHAN_POLL_S for ORPHAN_WATCH_S: the kill takes seconds to land
ORPHAN_WATCH_S = 600.0
ORPHAN_POLL_S = 2.0


def release_orphaned_training_pgs(previous_worker_ids: set[str]) -> list[str]:
    """Free the placement groups of the Ray Train runs started by earlier incarnations of the calling actor.

    Why: Ray Train v2 starts a ``TrainController`` actor from the caller (this Controller owns it)
    and that actor creates the worker group's placement group. Killing the Controller kills the
    TrainController with it, but in CI the GCS had marked it DEAD while its process lived on for
    a while: it saw its workers die, retried, and asked for a new placement group. The GCS frees a
    placement group only when its creator actor *and* its job are dead; the job (the driver that
    started the flywheel) lives on, so those groups keep their CPUs and the resumed run timed out
    waiting for them. Ray Train's own ``PlacementGroupCleaner`` goes through the state API, which a
    local cluster without a dashboard does not have. So every placement group created by a
    TrainController that an earlier worker owned (whatever the GCS says of that actor: its owner is
    dead, so nothing can use it) is removed, placed or still pending: a pending request takes CPUs as
    they free up. Callers run this again for a while after a restart, for groups asked for late.
    The owner and creator are in the GCS tables, which Ray exposes only privately
    (``ray._private.state``); callers catch errors.

    Args:
        previous_worker_ids: Hex worker ids of earlier incarnations of the calling actor.

    Returns:
        Hex ids of the placement groups removed.
    """
    if not previous_worker_ids:
        return []
    from ray._private.state import state as gstate
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    A, P = gcs_pb2.ActorTableData, gcs_pb2.PlacementGroupTableData
    accessor = gstate._connect_and_get_accessor()
    orphans = {a.actor_id for a in map(A.FromString, accessor.get_actor_table(None, None))
               if a.class_name == "TrainController" and a.owner_address.worker_id.hex() in previous_worker_ids}
    live = (P.PENDING, P.PREPARED, P.CREATED, P.RESCHEDULING)
    removed = []
    for pg in map(P.FromString, accessor.get_placement_group_table()):
        if pg.state in live and not pg.is_detached and pg.creator_actor_id in orphans:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed.append(pg.placement_group_id.hex())
    if removed:
        logging.getLogger(__name__).warning("freed %d placement group(s) left by a killed training run: %s", len(removed), removed)
    return removed


@ray.remote(max_restarts=3, max_task_retries=0, max_concurrency=8)
class Controller:
    def __init__(self, loop_cfg: dict, ctl_cfg: dict, store: str, own_cluster: bool):
        from jobs.common import Progress, set_offline_env
        from jobs.stages.context import StageContext

        set_offline_env()
        self.cfg = LoopConfig.model_validate(loop_cfg)
        self.ccfg = ControllerConfig.model_validate(ctl_cfg)
        self.store = Path(store)
        self.dir = self.store / "controller" / self.cfg.name
        self.states = StateStore(self.dir / "state.json")
        self.control = ControlStore(self.dir / "control.json")
        self.current: str | None = None
        self.last_trigger: dict | None = None
        self._wake = threading.Event()
        self._io = threading.Lock()
        self._thread: threading.Thread | None = None
        self._online_missing_logged = False
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        # detached pool and labeler: they must survive this actor's restarts (owned actors die with their owner)
        self.ctx = StageContext(self.cfg, self.store, Progress(), own_cluster, detached=True,
                                summary={"name": self.cfg.name, "task": self.cfg.task, "store": str(self.store)})
        self.ctx.open_pool()
        self._gauges = self._make_gauges() if self.ccfg.metrics else None
        mode = self.control.load().mode
        # earlier incarnations of this actor: their training runs may still hold CPUs after a kill
        self._earlier = {e.get("worker_id") for e in self.events(10_000) if e["event"] == "controller_start"} - {None}
        freed = (self._free_orphans() or []) if self.restarted else []
        self._event("controller_start", restarted=self.restarted, mode=mode,
                    worker_id=ray.get_runtime_context().get_worker_id(), freed_pgs=freed)
        if self.restarted and self._earlier:
            # the dead incarnation's TrainController can outlive the kill by seconds and ask for CPUs again;
            # from here on only this thread frees them
            threading.Thread(target=self._watch_orphans, name="flywheel-orphans", daemon=True).start()
        if mode in ("running", "stopping"):
            self._spawn()  # a restarted controller carries on by itself

    # ------------------------------------------------------------------ API
    def start(self, max_iterations: int | None = None) -> dict:
        """Iterate on triggers until ``stop`` (or ``max_iterations`` more iterations have finished)."""
        st = self.states.load()
        n = max_iterations or self.ccfg.max_iterations
        # an unfinished iteration counts as the first of the n
        last = None if n is None else st.iteration + n - (1 if in_flight(st) else 0)
        self.control.update(mode="running", stop_after_iteration=last, error=None)
        self._spawn()
        self._wake.set()
        return self.status()

    def stop(self) -> dict:
        """Finish the current stage, save, and stop iterating."""
        if self.control.load().mode in ("running",):
            self.control.update(mode="stopping")
        self._event("stop_requested")
        self._wake.set()
        return self.status()

    def trigger(self, reason: str) -> dict:
        """Set the critical-fix flag: the next trigger check fires whatever the other conditions say."""
        self.control.update(critical=True, critical_reason=reason)
        self._event("critical_flag", reason=reason)
        self._wake.set()
        return self.status()

    def status(self) -> dict:
        """State, current stage, last decision, pool version, queue depth and trigger values (JSON)."""
        st, ctl = self.states.load(), self.control.load()
        out = {"state": ctl.mode, "iteration": st.iteration, "iteration_status": st.status,
               "current_stage": self.current, "completed_stages": list(st.completed), "skipped_stages": st.skipped,
               "last_decision": st.last_decision, "pool_version": None, "queue_depth": None,
               "trigger_values": (self.last_trigger or {}).get("values"), "last_trigger": self.last_trigger,
               "critical_flag": ctl.critical, "critical_reason": ctl.critical_reason, "error": st.error or ctl.error,
               "restarted": self.restarted, "thread_alive": bool(self._thread and self._thread.is_alive())}
        try:
            out["pool_version"] = ray.get(self.ctx.pool.version.remote(), timeout=10)
            if self.ctx.labeler is None:  # a restarted, idle controller has not opened it yet
                try:
                    self.ctx.labeler = ray.get_actor(f"Labeler:{self.cfg.name}", namespace=self.cfg.ray.namespace)
                except ValueError:
                    pass
            if self.ctx.labeler is not None:
                out["queue_depth"] = ray.get(self.ctx.labeler.counts.remote(), timeout=10)["queue_depth"]
        except Exception as e:  # noqa: BLE001 - status must answer even while an actor restarts
            out["actor_error"] = f"{type(e).__name__}: {e}"[:300]
        return out

    def events(self, last: int = 200) -> list[dict]:
        """The newest ``last`` records of ``events.jsonl``."""
        p = self.dir / "events.jsonl"
        lines = p.read_text().splitlines()[-last:] if p.exists() else []
        return [json.loads(x) for x in lines]

    def _free_orphans(self) -> list[str] | None:
        """Placement groups freed (``release_orphaned_training_pgs``); None when that failed (logged)."""
        try:
            return release_orphaned_training_pgs(self._earlier)
        except Exception as e:  # noqa: BLE001 - private Ray API: if it moved, resume anyway and say so
            self._event("pg_cleanup_failed", error=f"{type(e).__name__}: {e}")
            return None

    def _watch_orphans(self) -> None:
        deadline = time.time() + ORPHAN_WATCH_S
        while time.time() < deadline:
            time.sleep(ORPHAN_POLL_S)
            freed = self._free_orphans()
            if freed is None:
                return  # logged once; the resume goes on without the watch
            if freed:
                self._event("orphan_pgs_freed", freed_pgs=freed)

    # ------------------------------------------------------------------ loop thread
    def _spawn(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._main, name="flywheel-controller", daemon=True)
            self._thread.start()

    def _main(self) -> None:
        try:
            while True:
                ctl = self.control.load()
                if ctl.mode != "running":
                    break
                st = self.states.load()
                if in_flight(st):
                    self._iterate()
                elif ctl.stop_after_iteration is not None and st.iteration >= ctl.stop_after_iteration:
                    self._event("max_iterations_done", iteration=st.iteration)
                    break
                elif self._check_triggers():
                    self._iterate()
                else:
                    self._wake.wait(self.ccfg.poll_seconds)
                    self._wake.clear()
            if self.control.load().mode != "failed":
                self.control.update(mode="stopped")
            self._event("controller_stopped", iteration=self.states.load().iteration)
        except Exception as e:  # noqa: BLE001 - recorded on disk and in status; the driver reports it
            self.control.update(mode="failed", error=f"{type(e).__name__}: {e}"[:2000])
            self._event("controller_failed", error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-4000:])
        finally:
            self.current = None
            self._gauge("stage", -1)

    def _check_triggers(self) -> bool:
        """Ingest newly arrived source data, measure the triggers, log a firing with its reasons and values."""
        ctl = self.control.load()
        sig = source_signature([s.path for s in self.cfg.pool.sources])
        if sig != ctl.source_signature:
            rep = ray.get(self.ctx.pool.ingest.remote())
            self.control.update(source_signature=sig)
            self._event("ingest_on_arrival", version=rep["version"], rows_added=rep["rows_added"])
        total = ray.get(self.ctx.pool.manifest.remote())["counts"]["total"]
        self._gauge("pool_size", total)
        metric, threshold, online = self._online_signal()
        d = measure_triggers(self.ccfg.triggers, self.control.load(), total, time.time(), metric, threshold)
        self.last_trigger = {"fire": d.fire, "reasons": d.reasons, "values": {**d.values, "online": online},
                             "at": time.time()}
        if d.fire:
            self._event("trigger", reasons=d.reasons, values=d.values)
        return d.fire

    def _online_signal(self) -> tuple[float | None, float | None, dict | None]:
        """(online metric, threshold, detail) of the configured Serve endpoint; no endpoint: (None, None, None).

        A configured endpoint that is not deployed (yet) gives no degradation signal; that is logged
        once per controller incarnation, not on every poll.
        """
        from app.controller.online import online_trigger_inputs

        oc = self.ccfg.online
        if oc.endpoint is None:
            return None, None, None
        try:
            from jobs.serve_up import online

            block = online(oc.endpoint, oc.namespace, oc.tolerance, oc.min_labels)
        except Exception as e:  # noqa: BLE001 - ValueError when not deployed; any failure means "no signal"
            if not self._online_missing_logged:
                self._event("online_signal_unavailable", endpoint=oc.endpoint, error=f"{type(e).__name__}: {e}"[:300])
                self._online_missing_logged = True
            return None, None, {"endpoint": oc.endpoint, "available": False}
        self._online_missing_logged = False  # log again if it disappears later
        metric, threshold, detail = online_trigger_inputs(block, oc, self.ccfg.triggers.degradation_threshold)
        return metric, threshold, {**detail, "available": True, "serving_verdict": block.get("degradation")}

    def _iterate(self) -> None:
        from jobs.stages.iteration import IterationStages

        st, resumed = begin(self.states)
        idir = self.dir / f"iter-{st.iteration:04d}"
        ctl = self.control.load()
        if not resumed:
            write_json_atomic(idir / "context.json", {"trigger": self.last_trigger, "critical_reason": ctl.critical_reason})
            if ctl.critical:
                self.control.update(critical=False, critical_reason=None)  # consumed by this iteration
        self._event("iteration_start", iteration=st.iteration, resumed=resumed, done=list(st.completed))
        t0 = time.time()
        stages = IterationStages(self.ctx, self.control, idir, st.iteration)
        try:
            stages.open_run()
            final = run_stages(self.states, stages.functions(), should_stop=lambda: self.control.load().mode != "running",
                               on_event=self._on_stage)
        finally:
            stages.close_run(self.states.load())
        self._event("iteration_end", iteration=final.iteration, status=final.status, wall_s=round(time.time() - t0, 1))
        self._gauge("iteration_s", time.time() - t0)

    def _on_stage(self, what: str, stage: str, state) -> None:
        self.current = stage if what == "start" else None
        self._event(f"stage_{what}", iteration=state.iteration, stage=stage)
        self._gauge("stage", STAGES.index(stage) if what == "start" else -1)
        if what == "done" and self.ctx.labeler is not None and self._gauges:
            try:
                counts = ray.get(self.ctx.labeler.counts.remote(), timeout=10)
                self._gauge("queue_depth", counts["queue_depth"])
                self._gauge("labels_per_hour", counts["labels_per_hour"])
            except Exception:  # noqa: BLE001 - a gauge must never stop the loop
                pass

    # ------------------------------------------------------------------ records
    def _event(self, event: str, **fields) -> None:
        rec = {"ts": time.time(), "event": event, **fields}
        with self._io:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / "events.jsonl", "a") as f:
                f.write(json.dumps(rec, default=str) + "\n")
        print(f"[controller] {json.dumps(rec, default=str)[:1000]}", flush=True)

    def _make_gauges(self) -> dict:
        from ray.util.metrics import Gauge

        tags = {"loop": self.cfg.name}
        g = {"stage": Gauge("flywheel_controller_stage", "index of the running stage in STAGES (-1: idle)", ("loop",)),
             "pool_size": Gauge("flywheel_pool_size", "rows in the data pool", ("loop",)),
             "queue_depth": Gauge("flywheel_review_queue_depth", "items waiting for a reviewer", ("loop",)),
             "labels_per_hour": Gauge("flywheel_labels_per_hour", "label rows written in the last hour", ("loop",)),
             "iteration_s": Gauge("flywheel_iteration_seconds", "wall time of the last iteration", ("loop",))}
        for x in g.values():
            x.set_default_tags(tags)
        return g

    def _gauge(self, name: str, value: float) -> None:
        if self._gauges:
            self._gauges[name].set(float(value))
