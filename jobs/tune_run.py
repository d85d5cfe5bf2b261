"""Run one study on Ray Tune: `python -m jobs.tune run --config CFG [--out result.json] [--resume STUDY]`.

Linear on purpose: check the name, read the rows, (warm start), build scheduler + search, fit, summarise,
log to MLflow. Study names are unique in a store: Ray Tune silently resumes an experiment whose name it
has seen, so a name that exists is refused unless `--resume NAME` asks for exactly that.

Layout under `store`:  studies/<name>/{study.yaml, history.json, result.json}  ray/<name>/ (Ray's files)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from app.tune.space import SearchSpace
from app.tune.study import StudyConfig, StudyError

ROOT = Path(__file__).resolve().parents[1]


class StudyExists(StudyError):
    """The study name is taken (and --resume was not given), or --resume names a study that does not exist."""


def study_dir(cfg: StudyConfig) -> Path:
    return Path(cfg.store).resolve() / "studies" / cfg.name


def ray_storage(cfg: StudyConfig) -> Path:
    """Ray Tune's storage_path of the store's studies; a study's Ray run directory is `ray_storage(cfg) / cfg.name`."""
    return Path(cfg.store).resolve() / "ray"


def claim_name(cfg: StudyConfig, resume: str | None) -> bool:
    """Create the study directory, or check that --resume may reuse it; True when resuming."""
    d = study_dir(cfg)
    if resume is not None:
        if resume != cfg.name:
            raise StudyExists(f"--resume {resume!r} does not match the config's name {cfg.name!r}")
        if not (d / "study.yaml").exists():
            raise StudyExists(f"--resume {resume!r}: no such study under {d.parent}")
        return True
    try:
        d.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise StudyExists(f"study {cfg.name!r} already exists under {d.parent}; choose a new name, or "
                          f"`--resume {cfg.name}` to continue it") from None
    (d / "study.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return False


def _rows_and_model(cfg: StudyConfig):
    from app.models.backbones import resolve as resolve_backbone
    from app.tune.task_data import load_rows

    rows = load_rows(cfg.task, ROOT)
    start = resolve_backbone(cfg.task.backbone, Path(cfg.store).resolve() / "models")
    return rows, str(start)


def _model_params(start: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModel

    with torch.device("meta"):  # count parameters without allocating them
        model = AutoModel.from_config(AutoConfig.from_pretrained(start))
    return int(sum(p.numel() for p in model.parameters()))


def run_study(cfg: StudyConfig, space: SearchSpace, resume: str | None = None,
              claimed: bool | None = None) -> dict[str, Any]:
    """Run (or resume) a study to the end and return its result JSON (see app.tune.results.study_result).

    Needs a Ray cluster (`ray.init` done by the caller). Errored trials are recorded and the study goes on.
    Progress is in `studies/<name>/history.json` while it runs (what the Tuner actor's status() reads).
    `claimed`: the caller already ran `claim_name` (True: resuming, False: new study).
    """
    if cfg.staged is not None:  # two studies, coarse then Bayesian (jobs/tune_staged.py)
        from jobs.tune_staged import run_staged

        return run_staged(cfg, space, resume=resume, claimed=claimed)
    import dataclasses
    import os

    # every iteration checkpoints, so with num_to_keep set Tune snapshots its state often and warns each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    from app.tune.results import study_result
    from app.tune.stopper import AdaptiveStopper
    from app.tune.task_data import describe_task
    from app.tune.trial_params import max_warmup_ratio
    from jobs import tune_mlflow
    from jobs.tune_ray import AdaptiveTuneStopper, ExploitLog, StudyCallback, StudyStopper, build_scheduler, \
        build_search, seeds_to_ray
    from jobs.tune_space_ray import to_ray_tune
    from jobs.tune_trainable import tune_trial

    resuming = claim_name(cfg, resume) if claimed is None else claimed
    d = study_dir(cfg)
    rows, start = _rows_and_model(cfg)
    features = describe_task(rows, _model_params(start))
    seeds, seeded_by = [], []
    seeded_file = d / "warm_start.json"
    if resuming and seeded_file.exists():
        seeded_by = json.loads(seeded_file.read_text())
    elif cfg.warm_start:
        seeds, seeded_by = tune_mlflow.warm_start_points(cfg, space, features)
        seeded_file.write_text(json.dumps(seeded_by))
    stopper = None
    if cfg.stopper.enabled:
        s = cfg.stopper
        warm = math.ceil(max_warmup_ratio(space, cfg.param_mapping(), cfg.trainer.overrides) * cfg.max_t)
        stopper = AdaptiveTuneStopper(AdaptiveStopper(cfg.metric, cfg.mode, s.min_delta, s.patience,
                                                      s.early_phase_end, s.late_phase_start, s.min_steps, warm))
    history = d / "history.json"
    old = {r["trial_id"]: r for r in json.loads(history.read_text())} if resuming and history.exists() else {}
    run_stop = stopper if cfg.target is None and cfg.budget is None else StudyStopper(
        cfg.metric, cfg.mode, cfg.target, cfg.budget, stopper)
    callback = StudyCallback(space, history, run_stop, old)
    log = ExploitLog()
    log.listeners.append(callback.on_exploit)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, study=cfg.model_dump(), space_raw=space.to_dict(),
                             rows=dataclasses.asdict(rows), start_model=start),
        {"cpu": cfg.trainer.cpus_per_trial})
    storage = str(ray_storage(cfg))
    # a study interrupted before Ray wrote its state has nothing to restore: it starts over under its name
    if resuming and (Path(storage) / cfg.name / "tuner.pkl").exists():
        tuner = tune.Tuner.restore(str(Path(storage) / cfg.name), trainable, resume_unfinished=True,
                                   resume_errored=False, param_space=to_ray_tune(space))
    else:
        population = cfg.scheduler.type in ("pbt", "pb2")
        tuner = tune.Tuner(
            trainable,
            param_space=to_ray_tune(space),
            # metric and mode live in the scheduler and the search (build_*): a scheduler may rank on another
            tune_config=TuneConfig(num_samples=cfg.num_samples,
                                   scheduler=build_scheduler(cfg, space, log),
                                   search_alg=build_search(cfg, seeds_to_ray(seeds, space)),
                                   reuse_actors=cfg.trainer.reuse_actors),
            run_config=RunConfig(
                name=cfg.name, storage_path=storage, stop=run_stop, callbacks=[callback], verbose=0,
                failure_config=FailureConfig(max_failures=0),
                # PBT restores donors' checkpoints: keep one per member of the population (FINDINGS)
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints or (
                    max(2, cfg.num_samples) if population else 1))),
        )
    tuner.fit()
    # read back from disk: on --resume, Tuner.restore runs the callback it pickled (which reloaded
    # history.json at unpickling), not `callback`
    records = json.loads(history.read_text()) if history.exists() else []
    result = study_result(cfg.name, cfg.scheduler.type, cfg.search.type, cfg.metric, cfg.mode, cfg.max_t, records,
                          seeded_by)
    (d / "result.json").write_text(json.dumps(result, indent=1))
    (d / "exploits.json").write_text(json.dumps(log.events, indent=1, default=str))  # incl. donor checkpoints
    if cfg.tracking.enabled:
        tune_mlflow.log_study(cfg, space, result, records, features, seeded_by, d)
    return result
