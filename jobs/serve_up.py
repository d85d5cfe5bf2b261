"""`up`, `status` and `down` of an ensemble endpoint on a running Ray cluster (used by jobs.serve and tests).

Layout on the cluster, for an endpoint called NAME:
- Serve app NAME (route `http.route_prefix`): `EnsembleIngress`, deployed once; only `--redeploy` rolls its
  replicas (new ones up before old ones go, see `_deploy_ingress`);
- one Serve app per member and deployment generation, `NAME-<member>-<hash>`, no HTTP route;
- detached actor `ServeRollout:NAME` (config namespace) with the routing; ingress replicas sync with it.
`up` deploys new member apps beside the old ones, then switches routing; the rollout actor deletes the old
apps after every ingress replica has drained them. So updates, `--redeploy` and rollbacks drop no request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from app.serving.config import ServeEnsembleConfig


def _apps_running() -> dict[str, str]:
    from ray import serve

    return {name: str(a.status) for name, a in serve.status().applications.items()}


def _variant(cfg: ServeEnsembleConfig, members: list[dict], nonce: str, deployed: dict[str, str]) -> list[dict]:
    """Attach Serve app / deployment names.

    `deploy_key` hashes what a replica depends on (version, model files, member options). A member whose key
    matches one already deployed (`deployed`: key -> app) keeps that app, so a plain `up` after `--redeploy`
    does not roll again; `nonce` (set by `--redeploy`) makes every app new.
    """
    from app.serving.members import fingerprint

    out = []
    for m, mc in zip(members, cfg.members):
        key = json.dumps([m["version"], fingerprint(m["dir"]), mc.model_dump(exclude={"cost", "build"})])
        dkey = hashlib.sha256(key.encode()).hexdigest()[:16]
        app = deployed.get(dkey) if not nonce else None
        if app is None:
            app = f"{cfg.name}-{mc.name}-{hashlib.sha256((dkey + nonce).encode()).hexdigest()[:8]}"
        out.append({**m, "deploy_key": dkey, "app": app, "deployment": f"member-{mc.name}"})
    return out


def _deployed_apps(cfg: ServeEnsembleConfig) -> dict[str, str]:
    """deploy_key -> app name of the members the endpoint routes to now (empty for a new endpoint)."""
    import ray

    from actors.serve_state import state_actor_name

    try:
        routing = ray.get(ray.get_actor(state_actor_name(cfg.name), namespace=cfg.namespace).routing.remote())
    except ValueError:
        return {}
    running = _apps_running()
    return {m["deploy_key"]: m["app"] for v in (routing["champion"], routing["challenger"]) if v
            for m in v["plan"]["members"] if "deploy_key" in m and running.get(m["app"], "").endswith("RUNNING")}


def _deploy_members(cfg: ServeEnsembleConfig, plan: dict[str, Any], prog) -> None:
    from ray import serve

    from actors.serve_members import MemberServer

    running = _apps_running()
    targets = []
    for m, mc in zip(plan["members"], cfg.members):
        if running.get(m["app"], "").endswith("RUNNING"):
            continue
        scale = ({"autoscaling_config": mc.autoscaling.model_dump()} if mc.autoscaling
                 else {"num_replicas": mc.num_replicas})
        dep = MemberServer.options(name=m["deployment"], ray_actor_options={"num_cpus": mc.num_cpus},
                                   max_ongoing_requests=mc.max_ongoing_requests, **scale)
        targets.append(serve.RunTarget(dep.bind(m["dir"], mc.name, m["version"], mc.torch_threads,
                                                mc.batch.max_batch_size, mc.batch.wait_ms / 1000), name=m["app"],
                                       route_prefix=None))
    if targets:
        t0 = time.time()
        serve.run_many(targets, wait_for_applications_running=True)
        prog(f"  started member apps {[t.name for t in targets]} in {time.time() - t0:.1f}s")


def _settings(cfg: ServeEnsembleConfig) -> dict[str, Any]:
    token = os.environ.get(cfg.http.auth_token_env or "", "") if cfg.http.auth_token_env else ""
    return {"max_text_chars": cfg.http.max_text_chars, "max_batch": cfg.http.max_batch,
            "member_timeout_s": cfg.http.member_timeout_s, "shadow_fraction": cfg.canary.shadow_fraction,
            "sample_rate": cfg.traffic.sample_rate, "feedback_window": cfg.feedback.window,
            "feedback_remember": cfg.feedback.remember,
            "auth_sha256": hashlib.sha256(token.encode()).hexdigest() if token else ""}


def state_actor(cfg: ServeEnsembleConfig, store: Path, tracking_uri: str):
    """The endpoint's rollout-state actor, created (detached) if it does not exist."""
    from actors.serve_state import RolloutStateActor, state_actor_name

    traffic = cfg.traffic.model_dump()
    if traffic["pool_config"]:
        from app.config import load_config
        from jobs.loop_stages import _pool_cfg  # the pool exactly where `jobs.loop` keeps it

        traffic["pool"] = _pool_cfg(load_config(traffic["pool_config"]), store)
    return RolloutStateActor.options(name=state_actor_name(cfg.name), namespace=cfg.namespace, lifetime="detached",
                                     get_if_exists=True).remote(cfg.name, str(store), tracking_uri, cfg.experiment,
                                                                traffic), traffic


def prepare(cfg: ServeEnsembleConfig, store: Path, client, redeploy: bool, prog) -> tuple[dict, dict | None]:
    """Resolve (and build) members for the champion and, if any, the challenger; fit both plans."""
    from app.serving.data import load_labelled
    from jobs.serve_build import fit_variant, resolve_member

    data = load_labelled(cfg.data.sources, cfg.data.labels, cfg.data.split)
    nonce = str(time.time_ns()) if redeploy else ""
    deployed = _deployed_apps(cfg)
    champ = [resolve_member(m, client, store, data, cfg.experiment, prog=prog) for m in cfg.members]
    plans = {"champion": fit_variant(cfg, _variant(cfg, champ, nonce, deployed), data, store, client, "champion",
                                     prog)}
    if cfg.canary.enabled:
        alias = cfg.canary.challenger_alias
        chall = [resolve_member(m, client, store, data, cfg.experiment, alias, prog) for m in cfg.members]
        if any(c is not None for c in chall):
            mixed = [c if c is not None else m for c, m in zip(chall, champ)]
            if [m["version"] for m in mixed] != [m["version"] for m in champ]:
                plans["challenger"] = fit_variant(cfg, _variant(cfg, mixed, nonce, deployed), data, store, client,
                                                  "challenger", prog)
    return plans["champion"], plans.get("challenger")


def as_variant(plan: dict[str, Any]) -> dict[str, Any]:
    """Routing entry of a fitted plan: id, human model version, plan, app names."""
    version = "+".join(f"{m['name']}:{m['version']}" for m in plan["members"])
    apps = [m["app"] for m in plan["members"]]
    pid = hashlib.sha256(json.dumps([version, apps, plan["policy"]], sort_keys=True).encode()).hexdigest()[:12]
    return {"plan_id": pid, "model_version": version, "plan": plan, "apps": apps}


def _deploy_ingress(cfg: ServeEnsembleConfig, roll: bool, generation: str, prog) -> None:
    """Start the HTTP ingress app, or roll its replicas to a new `generation` with new ones up before old go.

    Serve's own rolling update stops an old replica before it starts the new one (at most `rollout_size`
    replicas in transition), which leaves a one-replica ingress with nothing to serve for a while. So the roll
    asks for 2n replicas of the new generation first: with n old ones running, Serve starts n new ones before
    it may stop any old one, then replaces the rest. A second, lightweight update (replica count only, same
    version) scales back to n; Serve stops the newest replicas first, and each drains before it stops.
    """
    from ray import serve

    from actors.serve_ensemble import EnsembleIngress
    from actors.serve_state import state_actor_name

    n = cfg.http.ingress_replicas
    counts = [2 * n, n] if roll else [n]
    for count in counts:
        ingress = EnsembleIngress.options(num_replicas=count, ray_actor_options={"num_cpus": cfg.http.ingress_cpus},
                                          graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=60)
        t0 = time.time()
        serve.run(ingress.bind(state_actor_name(cfg.name), cfg.namespace, generation), name=cfg.name,
                  route_prefix=cfg.http.route_prefix)
        prog(f"  ingress {cfg.name!r}: {count} replica(s) of generation {generation} in {time.time() - t0:.1f}s")
    prog(f"  ingress {cfg.name!r} at http://{cfg.http.host}:{cfg.http.port}{cfg.http.route_prefix}")


def up(cfg: ServeEnsembleConfig, store: Path, tracking_uri: str, redeploy: bool = False, wait_s: float = 120.0,
       prog=print) -> dict[str, Any]:
    """Deploy or update the endpoint in place on the connected cluster; returns `status`."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import serve

    client = MlflowClient(tracking_uri)
    champion, challenger = prepare(cfg, store, client, redeploy, prog)
    actor, traffic = state_actor(cfg, store, tracking_uri)
    ray.get(actor.configure.remote(_settings(cfg), cfg.canary.plan.model_dump(), traffic))
    # before any serve.run: the first start of Serve fixes the proxy's host and port
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    _deploy_members(cfg, champion, prog)
    if challenger:
        _deploy_members(cfg, challenger, prog)
    ray.get(actor.set_champion.remote(as_variant(champion)))
    if challenger:
        ray.get(actor.start_canary.remote(as_variant(challenger)))
    else:
        ray.get(actor.stop_canary.remote("no challenger alias in the registry"))
    running = _apps_running().get(cfg.name, "").endswith("RUNNING")
    if redeploy or not running:
        _deploy_ingress(cfg, roll=redeploy and running, generation=str(time.time_ns()), prog=prog)
    deadline = time.time() + wait_s
    while not ray.get(actor.drained.remote()) and time.time() < deadline:
        time.sleep(0.5)
    return status([cfg.name], cfg.namespace)


def status(names: list[str] | None = None, namespace: str = "flywheel") -> dict[str, Any]:
    """JSON-safe status of endpoints (all found when `names` is None): routing, counters, Serve replicas."""
    import ray
    from ray import serve

    from actors.serve_state import state_actor_name

    if names is None:
        found = ray.util.list_named_actors(all_namespaces=True)
        names = sorted(a["name"].split(":", 1)[1] for a in found
                       if a["name"].startswith("ServeRollout:") and a["namespace"] == namespace)
    apps = serve.status().applications
    out = {}
    for name in names:
        try:
            st = ray.get(ray.get_actor(state_actor_name(name), namespace=namespace).status.remote())
        except ValueError:
            out[name] = {"error": f"no endpoint {name!r} in namespace {namespace!r}"}
            continue
        mine = [name] + [a for v in (st["champion"], st["challenger"]) if v for a in v["apps"]]
        mine += [a for r in st["retired"].values() for a in r["apps"]]
        st["serve"] = {a: {"status": str(apps[a].status), "deployments": {
            d: {"status": str(ds.status), "replicas": {str(k): v for k, v in ds.replica_states.items()}}
            for d, ds in apps[a].deployments.items()}} for a in mine if a in apps}
        out[name] = st
    return out


def online(name: str, namespace: str = "flywheel", tolerance: float = 0.05, min_labels: int = 30) -> dict[str, Any]:
    """Online (feedback) accuracy of an endpoint and its live-degradation verdict, for the loop's controller.

    Needs a connected Ray. Returns `Rollout.online_status()` plus "degradation":
    `app.serving.feedback.live_degradation(online, tolerance, min_labels)` (degraded when the champion's
    accuracy over its last `feedback.window` labels is more than `tolerance` below its val accuracy).

    Raises:
        ValueError: no endpoint `name` in `namespace`.
    """
    import ray

    from actors.serve_state import state_actor_name
    from app.serving.feedback import live_degradation

    actor = ray.get_actor(state_actor_name(name), namespace=namespace)  # ValueError when missing
    out = ray.get(actor.online.remote())
    return {**out, "degradation": live_degradation(out, tolerance, min_labels)}


def down(name: str, namespace: str = "flywheel") -> dict[str, Any]:
    """Delete the ingress, every member app of the endpoint and its rollout-state actor."""
    import ray
    from ray import serve

    from actors.serve_state import state_actor_name

    deleted = []
    try:
        actor = ray.get_actor(state_actor_name(name), namespace=namespace)
        st = ray.get(actor.status.remote())
        apps = [a for v in (st["champion"], st["challenger"]) if v for a in v["apps"]]
        apps += [a for r in st["retired"].values() for a in r["apps"]]
    except ValueError:
        actor, apps = None, []
    stray = re.compile(rf"^{re.escape(name)}-[a-z0-9-]+-[0-9a-f]{{8}}$")  # member apps of an interrupted `up`
    apps += [a for a in serve.status().applications if stray.match(a)]
    existing = serve.status().applications
    for app in [name, *dict.fromkeys(apps)]:
        if app in existing:
            serve.delete(app, _blocking=False)  # all at once, then wait: each delete takes seconds
            deleted.append(app)
    deadline = time.time() + 120
    while set(deleted) & set(serve.status().applications) and time.time() < deadline:
        time.sleep(0.5)
    if actor is not None:
        state = ray.get(actor.state_path.remote())
        ray.kill(actor, no_restart=True)
        Path(state).unlink(missing_ok=True)  # a later `up` starts from a clean routing
    return {"deleted_apps": deleted, "state_actor_removed": actor is not None}
