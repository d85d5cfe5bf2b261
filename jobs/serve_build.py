"""Prepare an ensemble variant for `jobs.serve up`: resolve members, build missing ones, fit the plan.

Runs in the driver, before anything is deployed:
1. each member source (`models:/NAME@alias`, `models:/NAME/VERSION` or a path) is resolved to a local
   Flywheel classifier directory; a missing one with a `build:` section is built from the labelled data
   (`app.serving.members.build_member`), logged to MLflow and registered with the alias it was asked under;
2. every member's logits on the val split are computed once and cached under `<store>/serving/cache/`;
3. temperatures, ECE before/after and the policy are fitted (`app.serving.fitting.fit_plan`) and logged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from app.serving.config import MemberConfig, ServeEnsembleConfig, parse_source
from app.serving.data import LabelledData


class MemberError(ValueError):
    """A member cannot be resolved or built; the message names the member and what to change."""


def _local_dir(client, mv) -> Path:
    src = mv.source
    if src.startswith("file://"):
        p = Path(unquote(urlparse(src).path))
        if p.exists():
            return p  # no copy: the registry points at the very files the run logged
    if src.startswith("/") and Path(src).exists():
        return Path(src)
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}"))


def _build_and_register(m: MemberConfig, reg_name: str, alias: str, data: LabelledData, store: Path, client,
                        experiment: str, prog) -> Any:
    import mlflow

    from app.serving.members import build_member
    from app.tracking import ensure_experiment, register_model_dir

    b = m.build
    prog(f"  building member {m.name!r} ({b.backbone}, {b.train_rows} train rows) -> models:/{reg_name}@{alias}")
    tmp = Path(tempfile.mkdtemp(prefix=f"member-{m.name}-", dir=store))
    try:
        train = data.train.sample(b.train_rows, b.seed)
        info = build_member(b.backbone, tmp / "model", train, data.label_names, store / "models", b.max_length,
                            b.C, b.batch_size, torch_threads=None)
        exp = ensure_experiment(client, experiment, store)
        mlflow.set_tracking_uri(client.tracking_uri)
        with mlflow.start_run(experiment_id=exp, run_name=f"build-{m.name}") as run:
            mlflow.log_params({"member": m.name, **b.model_dump()})
            mlflow.log_metrics({"train_accuracy": info["train_accuracy"], "embed_s": info["embed_s"],
                                "fit_s": info["fit_s"]})
            mlflow.log_artifacts(str(tmp / "model"), "model")
            version = register_model_dir(client, reg_name, run.info.run_id, run.info.artifact_uri, "model",
                                         {"flywheel.task": "classify", "flywheel.base_model": b.backbone,
                                          "flywheel.built_by": "jobs.serve", "flywheel.member": m.name})
        client.set_registered_model_alias(reg_name, alias, version)
        prog(f"  registered {reg_name} v{version} with alias {alias!r} in {info['embed_s'] + info['fit_s']:.0f}s")
        return client.get_model_version(reg_name, version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_member(m: MemberConfig, client, store: Path, data: LabelledData, experiment: str,
                   alias_override: str | None = None, prog=print) -> dict[str, Any] | None:
    """Local directory and version of a member (building it if missing); None when `alias_override` is absent.

    `alias_override` asks for another alias of the same registered model (the canary's challenger): paths and
    pinned versions have none, and a registered model without that alias has no challenger either.
    """
    from app.serving.members import build_member, fingerprint
    from app.tracking import get_alias

    try:
        kind, name, ref = parse_source(m.source)
    except ValueError as e:
        raise MemberError(f"members.{m.name}.source: {e}") from None
    if kind == "path":
        if alias_override:
            return None
        p = Path(name).expanduser().resolve()
        if not (p / "flywheel_model.json").exists():
            if m.build is None:
                raise MemberError(f"members.{m.name}: {p} is not a Flywheel model directory and no build is set")
            prog(f"  building member {m.name!r} at {p}")
            b = m.build
            build_member(b.backbone, p, data.train.sample(b.train_rows, b.seed), data.label_names, store / "models",
                         b.max_length, b.C, b.batch_size)
        return {"name": m.name, "uri": m.source, "dir": str(p), "version": f"path-{fingerprint(p)}",
                "registered_name": None, "alias": None}
    if kind == "version":
        if alias_override:
            return None
        from mlflow.exceptions import MlflowException

        try:
            mv = client.get_model_version(name, ref)
        except MlflowException:
            raise MemberError(f"members.{m.name}: {m.source} does not exist in the registry") from None
        alias = None
    else:
        alias = alias_override or ref
        mv = get_alias(client, name, alias)
        if mv is None and alias_override:
            return None
        if mv is None:
            if m.build is None:
                raise MemberError(f"members.{m.name}: {m.source} does not exist and members.{m.name}.build is not "
                                  "set; add a build section or register the model first")
            mv = _build_and_register(m, name, alias, data, store, client, experiment, prog)
    d = _local_dir(client, mv)
    tags = mv.tags or {}
    if tags.get("flywheel.task", "classify") != "classify" or not (d / "flywheel_model.json").exists():
        raise MemberError(f"members.{m.name}: {m.source} (v{mv.version}) is not a Flywheel classifier directory")
    return {"name": m.name, "uri": f"models:/{name}/{mv.version}", "dir": str(d), "version": str(mv.version),
            "registered_name": name, "alias": alias}


def member_outputs(member: dict[str, Any], texts: list[str], store: Path, tag: str
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """(logits (n, K), embeddings (n, H), seconds per item) of a member on `texts`, cached on disk by content."""
    from app.serving.members import MemberModel, fingerprint

    key = hashlib.sha256(json.dumps([fingerprint(member["dir"]), texts]).encode()).hexdigest()[:16]
    path = store / "serving" / "cache" / f"{member['name']}-{tag}-{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["logits"], z["emb"], float(z["sec_per_item"])
    model = MemberModel(member["dir"])
    t0 = time.perf_counter()
    logits, emb = model.forward(texts)
    sec = (time.perf_counter() - t0) / max(1, len(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, logits=logits, emb=emb, sec_per_item=sec)
    return logits, emb, sec


def fit_variant(cfg: ServeEnsembleConfig, members: list[dict[str, Any]], data: LabelledData, store: Path,
                client, variant: str, prog=print) -> dict[str, Any]:
    """Calibrate members and fit the configured policy on the val split; log it to MLflow; return the plan."""
    import mlflow

    from app.serving.fitting import fit_plan
    from app.tracking import ensure_experiment

    val = data.val.head(cfg.data.max_val)
    outs = [member_outputs(m, val.texts, store, "val") for m in members]
    for m, mc, (_, _, sec) in zip(members, cfg.members, outs):
        m["cost"] = mc.cost if mc.cost is not None else sec
        m["seconds_per_item"] = sec
    plan = fit_plan(members, [o[0] for o in outs], [o[1] for o in outs], val.labels, data.label_names,
                    cfg.policy.name, cfg.policy.params, cfg.gate_index(), cfg.policy.calibrate, cfg.policy.ece_bins)
    for m in plan["members"]:
        prog(f"  {variant} member {m['name']} v{m['version']}: val acc {m['val_accuracy']:.3f}, ECE "
             f"{m['ece_before']:.3f} -> {m['ece_after']:.3f} (T={m['temperature']:.2f}), cost {m['cost']:.4f}")
    prog(f"  {variant} {cfg.policy.name}: val acc {plan['val']['accuracy']:.3f}, expected cost "
         f"{plan['val']['expected_cost']:.4f} on {plan['val']['n']} val items")
    exp = ensure_experiment(client, cfg.experiment, store)
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(experiment_id=exp, run_name=f"fit-{cfg.name}-{variant}") as run:
        mlflow.log_params({"policy": cfg.policy.name, "variant": variant, "calibrate": cfg.policy.calibrate,
                           **{f"policy.{k}": v for k, v in cfg.policy.params.items()},
                           **{f"member.{m['name']}": m["uri"] for m in plan["members"]}})
        for m in plan["members"]:
            mlflow.log_metrics({f"{m['name']}.{k}": float(m[k]) for k in
                                ("ece_before", "ece_after", "temperature", "val_accuracy", "cost")})
        mlflow.log_metrics({"val_accuracy": plan["val"]["accuracy"], "val_expected_cost": plan["val"]["expected_cost"]})
        mlflow.log_dict(plan, "plan.json")
        plan["fit_run_id"] = run.info.run_id
    return plan
