"""The function trainable of a study: one trial = the real trainer (app.train.runner.run, torch engine, one
process) on the study's rows, with a validation score reported after every iteration.

Why not `actors.trainer.train_in_tune_trial` as is: it reports the trainer's training metrics only, and a
study must rank trials on held-out rows. This trainable gives the same runner its own `report` hook, which
scores each checkpoint on the validation rows before handing metrics and checkpoint to `tune.report`.
Resume (Ray restarts, PBT exploits) goes through `tune.get_checkpoint()` exactly as in the trainer's entry
point: the runner resumes weights, optimiser state and step from the checkpoint it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fixed_trainer_options(study: dict[str, Any]) -> dict[str, Any]:
    """Trainer options the tuner controls: one in-process worker, one report + checkpoint per iteration."""
    spi = study["trainer"]["steps_per_iteration"]
    return {"engine": "torch", "num_workers": 1, "min_workers": None, "global_batch_size": None,
            "cpus_per_worker": 1.0, "max_steps": study["max_t"] * spi, "checkpoint_every": spi,
            "report_every": spi, "export": False, "keep_checkpoints": 1}


def tune_trial(config: dict, study: dict, space_raw: dict, rows: dict, start_model: str) -> None:
    """Ray Tune function trainable (bind the last four with `tune.with_parameters`).

    Args:
        config: the trial's Ray config (the space's sampled keys, inactive ones included).
        study: StudyConfig.model_dump().
        space_raw: the search space in YAML form (SearchSpace.to_dict()).
        rows: TaskRows as a dict (train/val texts and labels, label names).
        start_model: backbone directory.
    """
    import torch
    from ray import tune

    from app.train.run_checkpoints import load_weights
    from app.train.runner import Hooks, run
    from app.train.spec import TrainSpec
    from app.tune.space import parse_space
    from app.tune.study import StudyConfig
    from app.tune.trial_params import trainer_options
    from app.tune.val_score import ValScorer
    from jobs.tune_space_ray import resolve_trial_config

    torch.set_num_threads(max(1, int(study["trainer"]["cpus_per_trial"])))
    cfg = StudyConfig.model_validate(study)
    space = parse_space(space_raw)
    resolved = resolve_trial_config(space, config)
    opts = trainer_options(resolved, cfg.param_mapping(), cfg.trainer.overrides, fixed_trainer_options(study))
    spec = TrainSpec(task="classify", start_model=start_model, start_is_flywheel=False,
                     base_name=cfg.task.backbone, label_names=rows["labels"], inputs=rows["train_texts"],
                     targets=rows["train_labels"], max_length=cfg.task.max_length, trainer=opts)
    scorer = ValScorer(start_model, rows["labels"], rows["val_texts"], rows["val_labels"], cfg.task.max_length)

    def report(metrics: dict, d: Path | None, name: str | None) -> None:
        if d is None:  # the fixed options put a checkpoint on every report; nothing to score without one
            return
        out = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        out.update(scorer.score(load_weights(d)))
        out["step"] = int(metrics["step"])
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(d)))

    def latest() -> Path | None:
        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        p = Path(ckpt.path)
        return p if p.is_dir() else Path(ckpt.to_directory())

    run(spec, Hooks(rank=0, world_size=1, latest=latest, report=report, say=lambda msg: None))
