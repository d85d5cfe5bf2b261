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


def register(ctx: StageContext, model_dir, parent_version: str | None, extra_tags: dict | None = None,
             alias: str = "champion") -> str:
    """Log ``model_dir`` to the active run, register it with lineage tags, alias it ``alias`` (``champion``)."""
    import mlflow

    from app.tracking import register_model_dir

    c = ctx.cfg
    version = registered_for_run(ctx)
    if version is None:
        mlflow.log_artifacts(model_dir, "model")
        run = mlflow.active_run()
        version = register_model_dir(ctx.client, c.tracking.registered_model, run.info.run_id, run.info.artifact_uri,
                                     "model", registration_tags(ctx, parent_version, extra_tags))
    ctx.client.set_registered_model_alias(c.tracking.registered_model, alias, version)
    ctx.prog.say(f"  registered {c.tracking.registered_model} v{version} with alias {alias!r}")
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


class CanaryConfigError(ValueError):
    """``controller.canary.endpoint_config`` does not serve the loop's registered model."""


def canary_member(scfg, registered_model: str, where: str = "controller.canary.endpoint_config") -> str:
    """Name of the endpoint member sourced ``models:/<registered_model>@champion``.

    Raises:
        CanaryConfigError: no member (or more than one) has that source.
    """
    want = f"models:/{registered_model}@champion"
    found = [m.name for m in scfg.members if m.source == want]
    if len(found) != 1:
        raise CanaryConfigError(f"{where}: endpoint {scfg.name!r} needs exactly one member with source {want!r} "
                                f"(the loop's tracking.registered_model); members: "
                                f"{ {m.name: m.source for m in scfg.members} }")
    return found[0]


def _outcome(events: list[dict], wanted: str) -> dict | None:
    """The newest promotion or rollback of the challenger ``wanted`` (its routing model_version) in ``events``."""
    for e in reversed(events):
        if e.get("model_version") != wanted:
            continue
        if e["event"] == "promoted":
            return {"outcome": "promoted", "reason": "every canary step passed", "metrics": e.get("metrics", {})}
        if e["event"] == "rollback":
            return {"outcome": "rolled_back", "reason": e.get("reason", ""), "metrics": e.get("metrics", {})}
        if e["event"] == "canary_started":
            return None  # started again after any older outcome: that one is not this rollout's
    return None


def canary_rollout(scfg, store, tracking_uri: str, member: str, version: str, replay: list[tuple[str, str]],
                   wait_s: float, token: str = "", prog=print) -> dict:
    """Roll ``member`` version ``version`` (registry alias ``challenger``) out through the endpoint's canary.

    ``jobs.serve_up.up`` deploys the challenger beside the champion and the endpoint's rollout actor walks the
    canary steps (``app.serving.canary``: e.g. 10 → 50 → 100 % of traffic), judging each window of live
    requests and rolling back at once when a gate fails; on the last step it moves the ``champion`` alias.
    This waits for that outcome up to ``wait_s`` seconds, meanwhile posting the ``replay`` items (text, true
    label) through the endpoint and labelling each answer via ``/feedback`` (cycling), so a loop without live
    traffic still gets judged windows.

    Returns:
        {"outcome": "promoted" | "rolled_back" | "pending", "reason", "metrics", "model_version",
         "endpoint", "replayed"}; "pending": no verdict within ``wait_s`` (the canary goes on with live traffic).
    """
    import time

    import httpx

    from jobs.serve_up import status, up

    st = up(scfg, store, tracking_uri, prog=prog)[scfg.name]
    ch = st.get("challenger") or {}
    wanted = ch.get("model_version") or next(
        (e["model_version"] for e in reversed(st.get("events", [])) if f"{member}:{version}" in
         str(e.get("model_version", "")).split("+")), f"{member}:{version}")
    url = f"http://{scfg.http.host}:{scfg.http.port}{scfg.http.route_prefix.rstrip('/')}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    prog(f"  canary of {wanted} at {url}: steps {list(scfg.canary.plan.steps)} %")
    deadline, sent, verdict = time.time() + wait_s, 0, None
    with httpx.Client(timeout=60, headers=headers) as http:
        while True:
            verdict = _outcome(status([scfg.name], scfg.namespace)[scfg.name].get("events", []), wanted)
            if verdict is not None or time.time() >= deadline:
                break
            if not replay:
                time.sleep(1.0)
                continue
            for _ in range(10):  # a batch between two status reads
                text, label = replay[sent % len(replay)]
                rid = f"canary-{version}-{sent}"
                r = http.post(f"{url}/predict", json={"text": text}, headers={"x-request-id": rid})
                if r.status_code == 200:
                    http.post(f"{url}/feedback", json={"request_id": rid, "label": label})
                sent += 1
    out = verdict or {"outcome": "pending", "reason": f"no verdict within wait_s={wait_s}", "metrics": {}}
    prog(f"  canary {out['outcome']}: {out['reason']}")
    return {**out, "model_version": wanted, "endpoint": url, "replayed": sent}
