"""A study in MLflow: one parent run per study (task features, best configs, figures), one child run per
trial (config, per-iteration metrics, stop reason, PBT exploit events); and warm starts that read the
parent runs of earlier studies back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.tune.space import SearchSpace
from app.tune.study import StudyConfig

KIND_TAG, STUDY_TAG, FEATURES_TAG, BEST_TAG = "flywheel.kind", "flywheel.study", "flywheel.task_features", \
    "flywheel.best_configs"
SEEDED_TAG, NARROWED_TAG = "flywheel.warm_start_from", "flywheel.narrowed_ranges"


def _client(cfg: StudyConfig):
    from mlflow.tracking import MlflowClient

    from app.tracking import ensure_experiment, tracking_uri

    client = MlflowClient(tracking_uri(cfg.tracking.uri, cfg.store))
    return client, ensure_experiment(client, cfg.tracking.experiment, cfg.store)


def past_studies(cfg: StudyConfig) -> list[tuple[str, dict[str, float], list[dict[str, Any]], str]]:
    """(study name, task features, best configs, parent run id) of every finished study in the experiment."""
    client, exp = _client(cfg)
    runs = client.search_runs([exp], filter_string=f"tags.`{KIND_TAG}` = 'tune_study'", max_results=1000)
    out = []
    for r in runs:
        tags = r.data.tags
        if r.info.status != "FINISHED" or FEATURES_TAG not in tags or BEST_TAG not in tags:
            continue
        if tags.get(STUDY_TAG) == cfg.name:
            continue
        out.append((tags[STUDY_TAG], json.loads(tags[FEATURES_TAG]), json.loads(tags[BEST_TAG]), r.info.run_id))
    return out


def warm_start_points(cfg: StudyConfig, space: SearchSpace, features: dict[str, float]) -> tuple[list[dict], list[str]]:
    """Seed configs from the k nearest past studies (app.tune.warmstart) and the run ids that gave them."""
    from app.tune.warmstart import nearest_tasks, seed_points

    past = past_studies(cfg)
    opts = cfg.warm_start_opts
    by_name = {name: run_id for name, _, _, run_id in past}
    near = nearest_tasks(features, [(n, f, c[: opts.per_study]) for n, f, c, _ in past], k=opts.k)
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    points, seeded_by = [], []
    for nb in near:
        points += seed_points(nb.best_configs, space, rng, jitter=opts.jitter)
        seeded_by.append(by_name[nb.study_id])
    return points, seeded_by


def _metrics(history: list[dict], step_key: str = "training_iteration"):
    from mlflow.entities import Metric

    ms = int(time.time() * 1000)
    out = []
    for r in history:
        step = int(r.get(step_key, 0))
        out += [Metric(k, float(v), ms, step) for k, v in r.items()
                if k != step_key and isinstance(v, (int, float)) and np.isfinite(v)]
    return out


def log_study(cfg: StudyConfig, space: SearchSpace, result: dict, records: list[dict], features: dict[str, float],
              seeded_by: list[str], study_dir: Path) -> str:
    """Write the study's parent run and one child run per trial; returns the parent run id.

    Logging happens once, at the end of a study: an interrupted study has no runs yet, and a `--resume` of a
    study that had finished finds its parent run and writes nothing new.
    """
    from app.tracking import flatten
    from app.tune.plots import plot_curves, plot_parallel

    client, exp = _client(cfg)
    done = client.search_runs([exp], filter_string=f"tags.`{KIND_TAG}` = 'tune_study' and "
                                                   f"tags.`{STUDY_TAG}` = '{cfg.name}'", max_results=1)
    if done:
        return done[0].info.run_id
    ranked = sorted((t for t in result["trials"] if t["score"] is not None and t["status"] != "errored"),
                    key=lambda t: t["score"], reverse=cfg.mode == "max")
    tags = {KIND_TAG: "tune_study", STUDY_TAG: cfg.name, FEATURES_TAG: json.dumps(features),
            BEST_TAG: json.dumps([t["config"] for t in ranked[:5]]), SEEDED_TAG: json.dumps(seeded_by),
            "scheduler": cfg.scheduler.type, "search": cfg.search.type}
    parent = client.create_run(exp, run_name=cfg.name, tags=tags)
    pid = parent.info.run_id
    params = flatten({k: v for k, v in cfg.model_dump().items() if k != "space"})
    client.log_batch(pid, params=[_param(k, v) for k, v in params.items()][:90])
    if result["best"] is not None:
        client.log_metric(pid, f"best_{cfg.metric}", result["best"]["score"])
    client.log_metric(pid, "total_iterations", result["total_iterations"])
    client.log_dict(pid, space.to_dict(), "space.json")
    client.log_dict(pid, result, "result.json")
    curves = plot_curves(records, cfg.metric, study_dir / "curves.png")
    parallel = plot_parallel(result["trials"], study_dir / "parallel_coordinates.png")
    client.log_artifact(pid, str(curves))
    client.log_artifact(pid, str(parallel))
    summary = {t["trial_id"]: t for t in result["trials"]}
    for rec in records:
        t = summary[rec["trial_id"]]
        child = client.create_run(exp, run_name=rec["trial_id"], tags={
            "mlflow.parentRunId": pid, STUDY_TAG: cfg.name, KIND_TAG: "tune_trial", "status": t["status"],
            "stop_reason": t["stop_reason"][:5000], "exploits": json.dumps(rec.get("exploits", []))[:5000]})
        cid = child.info.run_id
        client.log_batch(cid, params=[_param(f"config.{k}", v) for k, v in flatten(t["config"]).items()])
        batch = _metrics(rec["history"])
        for i in range(0, len(batch), 900):
            client.log_batch(cid, metrics=batch[i:i + 900])
        if rec.get("exploits"):
            client.log_dict(cid, rec["exploits"], "exploits.json")
        client.set_terminated(cid, "FAILED" if t["status"] == "errored" else "FINISHED")
    client.set_terminated(pid, "FINISHED")
    return pid


def log_narrowing(cfg: StudyConfig, narrowing: dict[str, Any]) -> str | None:
    """Attach how a staged study narrowed its space to the parent run of stage 2 (`cfg`): the ranges as the
    tag `flywheel.narrowed_ranges` (one line per key) and the full record as `narrowing.json`."""
    client, exp = _client(cfg)
    runs = client.search_runs([exp], filter_string=f"tags.`{KIND_TAG}` = 'tune_study' and "
                                                   f"tags.`{STUDY_TAG}` = '{cfg.name}'", max_results=1)
    if not runs:
        return None
    pid = runs[0].info.run_id
    client.set_tag(pid, NARROWED_TAG, "\n".join(narrowing["log"])[:5000])
    client.log_dict(pid, narrowing, "narrowing.json")
    return pid


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key[:250], str(value)[:6000])
