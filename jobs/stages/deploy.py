"""Register a model version with its lineage tags, and put the champion behind Ray Serve."""

from __future__ import annotations

import json
import urllib.request

import ray

from jobs.stages.context import StageContext


def registration_tags(ctx: StageContext, parent_version: str | None, extra: dict | None = None) -> dict[str, str]:
    """The registry tags of a new version: the loop's own keys plus ``app.controller.lineage`` tags.

    ``flywheel.parent_models`` names the champion the run started from (``[]`` from the base model);
    ``flywheel.label_version`` records the guideline version, label rows per source and final labels per source.
    """
    from app.controller.lineage import lineage_tags, model_uri

    c = ctx.cfg
    manifest = ray.get(ctx.pool.manifest.remote())
    lc = ray.get(ctx.labeler.counts.remote())
    tags = {"flywheel.task": c.task, "flywheel.data_version": str(manifest["version"]),
            "flywheel.data_hash": manifest.get("content_hash", ""), "flywheel.guideline_version": lc["guideline_version"],
            "flywheel.label_sources": json.dumps(lc["final_source"]), "flywheel.run_id": ctx.run_id,
            "flywheel.parent_model": parent_version or "base", "flywheel.base_model": c.model.name}
    label_version = {"guideline_version": lc["guideline_version"],
                     "annotators": {k: v for k, v in lc["source"].items() if v},
                     "counts": {k: v for k, v in lc["final_source"].items() if v}}
    parent = model_uri(c.tracking.registered_model, parent_version) if parent_version else None
    tags.update(lineage_tags(str(manifest["version"]), label_version, ctx.run_id, parent))
    tags.update(extra or {})
    return {k: str(v) for k, v in tags.items()}


def registered_for_run(ctx: StageContext) -> str | None:
    """The version already registered from this MLflow run, if any (a resumed deploy must not register twice)."""
    name = ctx.cfg.tracking.registered_model
    try:
        found = ctx.client.search_model_versions(f"name = '{name}' and run_id = '{ctx.run_id}'")
    except Exception:  # noqa: BLE001 - no such registered model yet
        return None
    return str(max(int(v.version) for v in found)) if found else None


def register(ctx: StageContext, model_dir, parent_version: str | None, extra_tags: dict | None = None) -> str:
    """Log ``model_dir`` to the active run, register it with lineage tags, alias it ``champion``."""
    import mlflow

    from app.tracking import register_model_dir

    c = ctx.cfg
    version = registered_for_run(ctx)
    if version is None:
        mlflow.log_artifacts(model_dir, "model")
        run = mlflow.active_run()
        version = register_model_dir(ctx.client, c.tracking.registered_model, run.info.run_id, run.info.artifact_uri,
                                     "model", registration_tags(ctx, parent_version, extra_tags))
    ctx.client.set_registered_model_alias(c.tracking.registered_model, "champion", version)
    ctx.prog.say(f"  registered {c.tracking.registered_model} v{version} with alias 'champion'")
    return version


def serve(ctx: StageContext, sample_inputs) -> None:
    """Deploy the registry champion with Ray Serve and send one request through HTTP."""
    from actors.serving import deploy
    from app.tracking import get_alias, local_path

    c = ctx.cfg
    mv = get_alias(ctx.client, c.tracking.registered_model)
    if mv is None or mv.tags.get("flywheel.task") != c.task:
        ctx.prog.say("  no champion in the registry yet: nothing to serve")
        return
    model_dir = local_path(f"models:/{c.tracking.registered_model}@champion")
    url = deploy(model_dir, str(mv.version), c.serve.host, c.serve.port, c.serve.app_name, c.serve.num_cpus,
                 c.serve.max_text_chars, c.serve.max_batch)
    ctx.serving = True
    req = urllib.request.Request(f"{url}/predict", data=json.dumps({"text": sample_inputs[0]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.loads(resp.read())
    ctx.prog.say(f"  POST {url}/predict {{'text': {sample_inputs[0][:60]!r}}} → {answer['predictions'][0]}")
    ctx.summary["endpoint"] = url
    ctx.summary["served_version"] = str(mv.version)
