"""Offline evaluation of models on the labelled test set, and the decision gate."""

from __future__ import annotations

import ray

from jobs.stages.context import StageContext


def evaluate(ctx: StageContext, model_dirs, inputs, targets) -> list[dict]:
    """One metrics dict per model directory (a 1-CPU Ray task: loads each model, predicts, times p50/p99)."""
    from app.eval.metrics import evaluate_models

    c = ctx.cfg
    fn = ray.remote(num_cpus=1)(evaluate_models)
    return ray.get(fn.remote(c.task, [str(d) for d in model_dirs], inputs, targets, c.model.max_length,
                             c.eval.latency_samples))


def decide(ctx: StageContext, base: dict, cand: dict, losses: list[float]):
    """``app.eval.gate.decide`` with the configured gate; logs the decision to the active MLflow run."""
    import mlflow

    from app.eval.gate import decide as gate
    from app.eval.metrics import loss_cv

    g, m = ctx.cfg.eval.gate, cand["metric"]
    d = gate(cand[m], base[m], cand["p99_ms"], base["p99_ms"], loss_cv(losses), min_gain=g.min_gain,
             latency_tolerance=g.latency_tolerance, target=g.target, min_safety=g.min_safety,
             max_loss_cv=g.max_loss_cv, safety=cand.get("safety"))  # "rollback when safety < min_safety" once an eval reports one
    mlflow.log_dict(d.to_dict(), "decision.json")
    mlflow.set_tag("flywheel.decision", d.action)
    return d
