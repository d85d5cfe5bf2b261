"""Train on every labelled train item (Ray Train + DeepSpeed) and draw the learning curves."""

from __future__ import annotations

import ray

from jobs.stages.context import StageContext


def train(ctx: StageContext, start_dir, r: int, label_names: list[str], run_name: str | None = None,
          trainer_overrides: dict | None = None) -> dict:
    """Fine-tune ``start_dir`` for round ``r``; returns ``actors.trainer.run_training``'s summary.

    ``run_name`` defaults to ``<name>-<run id[:8]>-r<r>``: running again with the same name resumes
    from the newest verified checkpoint (how a restarted controller avoids retraining from scratch).
    ``trainer_overrides`` replace trainer settings (e.g. a lower lr after evaluation feedback).
    """
    from actors.trainer import TrainSpec, run_training

    c = ctx.cfg
    t = ray.get(ctx.pool.read.remote(split="train", labelled=True))
    key = "text" if c.task == "classify" else "prompt"
    spec = TrainSpec(task=c.task, start_model=str(start_dir), start_is_flywheel=c.task == "classify",
                     base_name=c.model.name, label_names=label_names, inputs=t.column(key).to_pylist(),
                     targets=t.column("label").to_pylist(), max_length=c.model.max_length,
                     trainer={**c.trainer.model_dump(), **(trainer_overrides or {})}, mlflow_uri=ctx.uri,
                     mlflow_run_id=ctx.run_id, metric_prefix=f"round{r}/train")
    out_dir = ctx.store / "models" / "runs" / ctx.run_id / f"round{r}"
    out = run_training(spec, ctx.store / "ray_results", run_name or f"{c.name}-{ctx.run_id[:8]}-r{r}", out_dir)
    ctx.prog.say(f"  {len(spec.inputs)} labelled examples, {out['steps']} steps, final loss {out['final_loss']:.4f}, "
                 f"checkpoint {out['checkpoint']}")
    ctx.summary.setdefault("checkpoints", []).append(out["checkpoint"])
    return out


def learning_curve(ctx: StageContext, history: list[dict]) -> None:
    """Plot each round's loss per optimizer step to ``<store>/runs/<run>/learning_curve.png`` and MLflow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for h in history:
        ax.plot(range(1, len(h["losses"]) + 1), h["losses"], label=f"round {h['round']} ({h['labels']} new labels)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{ctx.cfg.name}: learning curves")
    ax.legend()
    fig.tight_layout()
    path = ctx.store / "runs" / ctx.run_id / "learning_curve.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    mlflow.log_artifact(str(path), "plots")
    ctx.summary["learning_curve"] = str(path)
