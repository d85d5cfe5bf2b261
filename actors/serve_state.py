"""Rollout-state actor of an ensemble endpoint: routing, canary gates, drain-then-delete, traffic to the pool.

All rules live in `app.serving.rollout.Rollout`; this actor adds what needs the cluster or disk: it persists
the routing to `<store>/serving/<name>/state.json` (a restarted actor resumes it), logs rollout events to
MLflow, moves registry aliases on promotion, deletes retired member apps once drained, writes sampled
traffic to the DataPool (the `DataPool:<name>` actor when one runs, else the pool directly), and keeps
feedback labels (`<store>/serving/<name>/feedback.jsonl`, one line per label with the answering version) with
the online accuracy per version as the Ray gauge `flywheel_serve_online_accuracy`.
Side effects run on one background thread so `sync` (called by every ingress replica) stays fast.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray

log = logging.getLogger(__name__)


def state_actor_name(app_name: str) -> str:
    """Name of the rollout-state actor of the endpoint `app_name` (namespace from the config)."""
    return f"ServeRollout:{app_name}"


@ray.remote(num_cpus=0.05, max_restarts=-1, max_task_retries=-1)
class RolloutStateActor:
    def __init__(self, name: str, store: str, tracking_uri: str, experiment: str, traffic: dict[str, Any]):
        from app.serving.canary import CanaryPlan
        from app.serving.rollout import Rollout

        self.name, self.store, self.traffic = name, Path(store), traffic
        self.dir = self.store / "serving" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.lock = threading.Lock()
        self.io = ThreadPoolExecutor(max_workers=1)
        self.rollout = Rollout()
        self.samples: list[dict] = []
        self.last_flush = time.time()
        self.gc_busy = False
        self.direct_pool = None  # DataPool opened here when no DataPool actor runs
        self.run_id: str | None = None
        self.written_epoch = -1
        self.n_logged = 0  # rollout events already handed to _log_event
        from ray.util.metrics import Counter, Gauge

        self.m_online = Gauge("flywheel_serve_online_accuracy", description="feedback accuracy of a model "
                              "version over its last `feedback.window` labels", tag_keys=("endpoint", "variant",
                                                                                         "model_version"))
        self.m_feedback = Counter("flywheel_serve_feedback", description="feedback labels received",
                                  tag_keys=("endpoint", "variant", "correct"))
        saved = self.dir / "state.json"
        if saved.exists():  # a restart resumes routing; counters and windows start afresh
            s = json.loads(saved.read_text())
            r = self.rollout
            r.canary = CanaryPlan.model_validate(s["canary"])
            r.champion, r.challenger, r.step, r.epoch = s["champion"], s["challenger"], s["step"], s["epoch"] + 1
            r.settings, r.retired, r.events = s["settings"], s["retired"], s.get("events", [])
            self.n_logged = len(r.events)

    # ---- called by `jobs.serve up` ------------------------------------------------------------
    def configure(self, settings: dict[str, Any], canary: dict[str, Any], traffic: dict[str, Any]) -> int:
        from app.serving.canary import CanaryPlan

        with self.lock:
            self.traffic, self.direct_pool = traffic, None
            self.rollout.configure(settings, CanaryPlan.model_validate(canary))
            self._persist()
            return self.rollout.epoch

    def set_champion(self, variant: dict[str, Any]) -> bool:
        with self.lock:
            changed = self.rollout.set_champion(variant, time.time())
            self._after_change()
            return changed

    def start_canary(self, variant: dict[str, Any]) -> bool:
        with self.lock:
            changed = self.rollout.start_canary(variant, time.time())
            self._after_change()
            return changed

    def stop_canary(self, reason: str) -> bool:
        with self.lock:
            changed = self.rollout.stop_canary(reason, time.time())
            self._after_change()
            return changed

    # ---- called by ingress replicas -----------------------------------------------------------
    def routing(self) -> dict[str, Any]:
        with self.lock:
            return self.rollout.routing()

    def sync(self, replica_id: str, report: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        with self.lock:
            self.rollout.sync(replica_id, report, now)
            self.samples += report.get("samples", [])
            self._after_change()
            if self.samples and (len(self.samples) >= self.traffic.get("flush_rows", 50)
                                 or now - self.last_flush >= self.traffic.get("flush_s", 30.0)):
                batch, self.samples, self.last_flush = self.samples, [], now
                self.io.submit(self._write_samples, batch)
            if self.rollout.retired and not self.gc_busy:
                self.gc_busy = True
                self.io.submit(self._gc)
            return self.rollout.routing()

    def feedback(self, label: str, request_id: str | None = None, text: str | None = None,
                 index: int | None = None, answer: dict[str, Any] | None = None) -> dict[str, Any]:
        """A true label for an answered item (see `Rollout.feedback`); {"error", "status"} when unusable."""
        from app.serving.feedback import FeedbackError

        with self.lock:
            try:
                out = self.rollout.feedback(label, time.time(), request_id, text, index, answer)
            except FeedbackError as e:
                return {"error": str(e), "status": e.status}
            self._after_change()  # a failing accuracy gate has just rolled the challenger back
            online = self.rollout.online_status()
        line = {k: v for k, v in out.items() if k != "events"}
        self.io.submit(self._append, "feedback.jsonl", [{**line, "at": time.time()}])
        self.m_feedback.inc(1, tags={"endpoint": self.name, "variant": out["variant"],
                                     "correct": str(out["correct"]).lower()})
        for variant in ("champion", "challenger"):
            o = online[variant]
            if o and o["accuracy"] is not None:
                self.m_online.set(o["accuracy"], tags={"endpoint": self.name, "variant": variant,
                                                       "model_version": o["model_version"]})
        return {**line, "events": [e["event"] for e in out["events"]]}

    def online(self) -> dict[str, Any]:
        """Online (feedback) accuracy of champion, challenger and recent versions (`Rollout.online_status`)."""
        with self.lock:
            return self.rollout.online_status()

    # ---- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self.lock:
            out = self.rollout.status(time.time())
        out["pending_samples"] = len(self.samples)
        out["mlflow_run_id"] = self.run_id
        return out

    def flush(self) -> int:
        """Write buffered traffic samples now (also waits for queued side effects); returns rows written."""
        with self.lock:
            batch, self.samples, self.last_flush = self.samples, [], time.time()
        return self.io.submit(self._write_samples, batch).result() if batch else 0

    def state_path(self) -> str:
        """File the routing is persisted to."""
        return str(self.dir / "state.json")

    def drained(self) -> bool:
        """True when no retired plan is left (all old member apps deleted)."""
        with self.lock:
            pending = bool(self.rollout.retired)
            if pending and not self.gc_busy:
                self.gc_busy = True
                self.io.submit(self._gc)
        return not pending

    # ---- side effects (background thread) -----------------------------------------------------
    def _after_change(self) -> None:
        for e in self.rollout.events[self.n_logged:]:
            self.io.submit(self._log_event, dict(e))
        self.n_logged = len(self.rollout.events)
        if self.rollout.epoch != self.written_epoch:
            self._persist()

    def _persist(self) -> None:
        r = self.rollout
        state = {"canary": r.canary.model_dump(), "champion": r.champion, "challenger": r.challenger, "step": r.step,
                 "epoch": r.epoch, "settings": r.settings, "retired": r.retired, "events": r.events}
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, default=str))
        tmp.replace(self.dir / "state.json")
        self.written_epoch = r.epoch

    def _client(self):
        from mlflow.tracking import MlflowClient

        from app.tracking import ensure_experiment

        client = MlflowClient(self.tracking_uri)
        if self.run_id is None:
            exp = ensure_experiment(client, self.experiment, self.store)
            self.run_id = client.create_run(exp, run_name=f"rollout-{self.name}",
                                            tags={"flywheel.endpoint": self.name}).info.run_id
        return client

    def _log_event(self, event: dict[str, Any]) -> None:
        try:
            client = self._client()
            kind, step = event["event"], int(event["epoch"])
            client.set_tag(self.run_id, f"rollout.{kind}", f"{event.get('model_version')} {event.get('reason', '')}")
            client.log_metric(self.run_id, "challenger_percent", float(event.get("percent", 0.0)), step=step)
            client.log_metric(self.run_id, f"event.{kind}", 1.0, step=step)
            for k, v in (event.get("metrics") or {}).items():
                client.log_metric(self.run_id, f"{kind}.{k}", float(v), step=step)
            if kind == "rollback":
                client.set_tag(self.run_id, "rollout.rollback_reason", event.get("reason", ""))
            self._move_aliases(client, event)
            with open(self.dir / "events.jsonl", "a") as f:
                f.write(json.dumps(event, default=str) + "\n")
            client.log_artifact(self.run_id, str(self.dir / "events.jsonl"), "rollout")
        except Exception as e:  # noqa: BLE001 - tracking must never stop routing
            log.warning("rollout event %s not logged to MLflow: %r", event.get("event"), e)

    def _move_aliases(self, client, event: dict[str, Any]) -> None:
        """Promotion: `champion` moves to the challenger versions. Rollback: the challenger alias is removed
        (and the version tagged with the reason) so the next `up` does not canary a known-bad version again."""
        for ref in event.get("registry", []):
            if ref["alias"] == "champion":
                continue
            if event["event"] == "promoted":
                client.set_registered_model_alias(ref["name"], "champion", ref["version"])
            elif event["event"] == "rollback":
                client.set_model_version_tag(ref["name"], ref["version"], "flywheel.rollback_reason",
                                             event.get("reason", "")[:5000])
            else:
                continue
            # The alias may have been moved to a newer version since this event (side effects run late on
            # the io thread): only remove it while it still names the version the event is about.
            try:
                current = str(client.get_model_version_by_alias(ref["name"], ref["alias"]).version)
            except Exception:  # noqa: BLE001 - alias already gone
                continue
            if current == str(ref["version"]):
                client.delete_registered_model_alias(ref["name"], ref["alias"])

    def _append(self, filename: str, lines: list[dict]) -> None:
        from app.serving.traffic import append_sidecar

        try:
            append_sidecar(self.dir / filename, lines)
        except OSError as e:  # a full disk must not stop routing
            log.warning("could not append to %s: %r", filename, e)

    def _gc(self) -> None:
        from ray import serve

        try:
            with self.lock:
                ready = self.rollout.collectable(time.time())
            doomed = {app for _, apps in ready for app in apps if not self._shared(app)}
            for app in doomed:  # all at once: one blocking delete takes seconds
                serve.delete(app, _blocking=False)
            deadline = time.time() + 120
            while doomed & set(serve.status().applications) and time.time() < deadline:
                time.sleep(0.25)
            with self.lock:
                for pid, _ in ready:
                    self.rollout.forget(pid)
                self._persist()
        except Exception as e:  # noqa: BLE001 - retried on the next sync
            log.warning("deleting retired member apps failed: %r", e)
        finally:
            self.gc_busy = False

    def _shared(self, app: str) -> bool:
        with self.lock:
            r = self.rollout
            live = [v for v in (r.champion, r.challenger) if v]
        return any(app in v["apps"] for v in live)

    def _write_samples(self, samples: list[dict]) -> int:
        from app.serving.traffic import append_sidecar, to_pool_rows

        try:
            rows = to_pool_rows(samples, self.traffic.get("hard_below", 0.7))
            try:
                pool = ray.get_actor(f"DataPool:{self.traffic.get('pool_name')}", namespace="flywheel")
                ingest = lambda r, s: ray.get(pool.ingest_rows.remote(r, s))  # noqa: E731
            except ValueError:  # no DataPool actor runs: write the pool directly (the loop is not running)
                if not self.traffic.get("pool"):  # nowhere to write: keep the rows beside the routing state
                    lines = [{**x, "source": s} for s, r in rows.items() for x in r]
                    append_sidecar(self.dir / "traffic.jsonl", lines)
                    return 0
                if self.direct_pool is None:
                    from app.pool import DataPool, PoolConfig

                    self.direct_pool = DataPool.open(PoolConfig.model_validate(self.traffic["pool"]))
                direct = self.direct_pool
                ingest = lambda r, s: direct.ingest_rows(r, s, label_role="none")  # noqa: E731
            for src, r in rows.items():
                ingest(r, src)
            return sum(len(r) for r in rows.values())
        except Exception as e:  # noqa: BLE001 - losing a traffic sample must not break serving
            log.warning("traffic samples not written to the pool: %r", e)
            return 0
