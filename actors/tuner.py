"""The Tuner: a named, long-lived actor that runs studies on the cluster and answers `status()`.

All the work is `jobs.tune_run.run_study`; the actor runs each study in a thread of its own (so `status()`
answers while a study runs) and reads progress from the study's `history.json`, which the study's
callback rewrites as results arrive. A restarted actor therefore still reports every study in its store.

    tuner = get_or_create(store=".flywheel/tune")
    ray.get(tuner.start.remote(study_dict))             # -> "tune-demo"
    ray.get(tuner.status.remote("tune-demo"))           # {"state", "running", "finished", "errored", "best", ...}
    ray.get(tuner.wait.remote("tune-demo"))             # the result JSON
"""

from __future__ import annotations

import json
import threading
import traceback
from pathlib import Path
from typing import Any

import ray

NAME, NAMESPACE = "tuner", "flywheel"


@ray.remote(num_cpus=0.25, max_restarts=1, max_concurrency=8)
class Tuner:
    """Runs studies (app.tune.study configs) with Ray Tune; one thread per study.

    Args:
        store: the default study store (a study's own `store` field wins).
    """

    def __init__(self, store: str = ".flywheel/tune"):
        self.store = str(Path(store).resolve())
        self.threads: dict[str, threading.Thread] = {}
        self.outcome: dict[str, dict[str, Any]] = {}  # name -> {"result"} or {"error"}
        self.dirs: dict[str, Path] = {}

    def start(self, study: dict[str, Any], resume: str | None = None, base_dir: str = ".") -> str:
        """Validate `study` (a StudyConfig mapping) and start running it; returns the study name.

        Raises:
            StudyError: invalid config, a study name already taken (unless `resume` names it), or the study
                is already running in this actor.
        """
        from app.tune.study import StudyError, parse_study
        from jobs.tune_run import claim_name, study_dir

        cfg, space = parse_study({"store": self.store} | dict(study), base_dir)
        if cfg.name in self.threads and self.threads[cfg.name].is_alive():
            raise StudyError(f"study {cfg.name!r} is already running")
        resuming = claim_name(cfg, resume)  # refuse a reused name here, in the caller's call, not in the thread
        self.dirs[cfg.name] = study_dir(cfg)
        self.outcome.pop(cfg.name, None)

        def work():
            from jobs.tune_run import run_study

            try:
                self.outcome[cfg.name] = {"result": run_study(cfg, space, claimed=resuming)}
            except Exception as e:  # reported by status() / wait(); the actor stays up for other studies
                self.outcome[cfg.name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}

        t = threading.Thread(target=work, name=f"study-{cfg.name}", daemon=True)
        self.threads[cfg.name] = t
        t.start()
        return cfg.name

    def status(self, name: str | None = None) -> dict[str, Any]:
        """{"state": running | finished | failed | unknown, "running", "finished", "errored" trial counts,
        "best" so far, "total_iterations"}; without `name`, {study: status} for every study of this actor."""
        if name is None:
            return {n: self.status(n) for n in self.dirs}
        from app.tune.results import status_counts
        from app.tune.study import StudyConfig

        d = self.dirs.get(name) or Path(self.store) / "studies" / name
        if not (d / "study.yaml").exists():
            return {"state": "unknown"}
        import yaml

        cfg = StudyConfig.model_validate(yaml.safe_load((d / "study.yaml").read_text()))
        # a staged study's trials live in its stages' studies while it runs (jobs/tune_staged.py)
        hists = [d / "history.json"] if cfg.staged is None else [
            d.parent / f"{name}.stage{i}" / "history.json" for i in (1, 2)]
        records = [r for h in hists if h.exists() for r in json.loads(h.read_text())]
        out = status_counts(records, cfg.metric, cfg.mode, cfg.max_t)
        if name in self.outcome:
            out["state"] = "failed" if "error" in self.outcome[name] else "finished"
            if "error" in self.outcome[name]:
                out["error"] = self.outcome[name]["error"]
        elif name in self.threads and self.threads[name].is_alive():
            out["state"] = "running"
        else:  # run by an earlier actor or another process
            out["state"] = "finished" if (d / "result.json").exists() else "interrupted"
        return out

    def wait(self, name: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Block until study `name` ends; its result JSON (RuntimeError with the reason if it failed)."""
        t = self.threads.get(name)
        if t is not None:
            t.join(timeout_s)
        out = self.outcome.get(name)
        if out is None:
            raise TimeoutError(f"study {name!r} still running after {timeout_s} s")
        if "error" in out:
            raise RuntimeError(f"study {name!r} failed: {out['error']}")
        return out["result"]


def get_or_create(store: str = ".flywheel/tune", cpus: float = 0.25):
    """The named Tuner actor of namespace "flywheel" (created on first use, found afterwards)."""
    return Tuner.options(name=NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                         num_cpus=cpus).remote(store)
