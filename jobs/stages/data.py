"""Ingest, the starting model of an iteration, and the labelled test set."""

from __future__ import annotations

from pathlib import Path

import ray

from jobs.stages.context import StageContext


def ingest(ctx: StageContext) -> dict:
    """Read the configured sources into a new pool snapshot; log the report to MLflow."""
    import mlflow

    rep = ray.get(ctx.pool.ingest.remote())
    ctx.prog.say(f"  v{rep['version']}: read {rep['rows_read']}, added {rep['rows_added']}, "
                 f"quarantined {rep['quarantined']}, removed {rep.get('removed_by_filter')}, by split {rep['by_split']}")
    mlflow.log_dict(rep, "pool/ingest_report.json")
    mlflow.log_metrics({"pool.rows_added": rep["rows_added"], "pool.quarantined": rep["quarantined"]})
    ctx.summary["ingest"] = rep
    return rep


def label_names(ctx: StageContext) -> list[str]:
    return ray.get(ctx.pool.label_names.remote()) if ctx.cfg.task == "classify" else []


def starting_model(ctx: StageContext, names: list[str]) -> tuple[str, str | None, bool]:
    """``(model_dir, champion version or None, trained)``: the registry champion, else the base model.

    ``trained`` is False for a classifier with a fresh random head (selection then cold-starts).
    """
    from app.models.backbones import _atomic_dir, resolve
    from app.tracking import get_alias, local_path

    c = ctx.cfg
    if c.model.start_from == "champion":
        mv = get_alias(ctx.client, c.tracking.registered_model)
        if mv is not None and mv.tags.get("flywheel.task") == c.task:
            return local_path(f"models:/{c.tracking.registered_model}@champion"), str(mv.version), True
    backbone = resolve(c.model.name, ctx.store / "models")
    ctx.summary["backbone"] = str(backbone)
    if c.task == "sft":
        return str(backbone), None, True  # a pretrained LM is already a model for selection and pre-labels

    def build(tmp):
        from transformers import AutoTokenizer

        from app.models.classifier import build_classifier, save_classifier

        m = build_classifier(backbone, names, seed=c.trainer.seed)
        save_classifier(m, AutoTokenizer.from_pretrained(backbone), tmp, names, c.model.max_length, c.model.name)

    tag = f"base-{Path(c.model.name).name}-{'-'.join(names)}-s{c.trainer.seed}-L{c.model.max_length}"
    return str(_atomic_dir(ctx.store / "models" / tag, build)), None, False


def test_set(ctx: StageContext) -> tuple[list[str], list[str]]:
    """(inputs, targets) of the labelled test split, at most ``eval.max_items`` (deterministic prefix)."""
    t = ray.get(ctx.pool.read.remote(split="test")).to_pylist()
    rows = [r for r in t if (r.get("gold") or r.get("label"))]
    rows = rows[: ctx.cfg.eval.max_items] if ctx.cfg.eval.max_items else rows
    key = "text" if ctx.cfg.task == "classify" else "prompt"
    return [r[key] for r in rows], [r.get("gold") or r.get("label") for r in rows]
