"""The long-lived flywheel: a restart-safe Controller actor iterating on triggers.

    python -m jobs.flywheel start CONFIG [--set k=v] [--max-iterations N] [--detach]
    python -m jobs.flywheel status [--address A]          # JSON: state, stage, decision, pool, queue, triggers
    python -m jobs.flywheel trigger --reason TEXT         # the critical-fix flag: next check fires
    python -m jobs.flywheel stop [--timeout S]            # finish the current stage, persist, exit

``start`` creates (or finds) the named actors in the Ray namespace ``flywheel`` and follows the
controller until it stops. On a cluster you started (``RAY_ADDRESS``, ``ray start``) the actors are
detached and outlive the job (``--detach`` returns at once); when ``start`` had to start its own local
Ray, stopping it stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

DEFAULT_NAME, DEFAULT_NS = "Controller", "flywheel"


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.flywheel", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="create or reuse the actors and iterate on triggers")
    s.add_argument("config", help="loop YAML with an optional controller: section")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. controller.poll_seconds=5")
    s.add_argument("--max-iterations", type=int, help="stop after this many iterations")
    s.add_argument("--detach", action="store_true", help="return once started (needs a running cluster)")
    for name in ("status", "trigger", "stop"):
        q = sub.add_parser(name)
        q.add_argument("--address", help="cluster address (default: RAY_ADDRESS, else the local cluster)")
        q.add_argument("--name", default=DEFAULT_NAME, help="Controller actor name")
        q.add_argument("--namespace", default=DEFAULT_NS, help="Ray namespace")
        if name == "trigger":
            q.add_argument("--reason", required=True, help="why a critical fix is needed (logged)")
        if name == "stop":
            q.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the current stage")
    return p.parse_args(argv)


def _fail(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2


def _attach(args):
    """Join the cluster (unless this process already did) and find the Controller, or None."""
    import ray

    if not ray.is_initialized():
        addr = args.address or os.environ.get("RAY_ADDRESS") or "auto"
        try:
            ray.init(address=addr, namespace=args.namespace, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise SystemExit(_fail(f"no Ray cluster to talk to at {addr!r}: {e}"))
    try:
        return ray.get_actor(args.name, namespace=args.namespace)
    except ValueError:
        return None


def get_or_create(cfg, ccfg, store, own: bool):
    """The named Controller: found if it exists (its state untouched), else created."""
    from actors.controller import Controller
    from jobs.common import head_node_affinity

    opts = dict(name=ccfg.actor_name, namespace=cfg.ray.namespace, get_if_exists=True, num_cpus=ccfg.num_cpus,
                max_restarts=ccfg.max_restarts)
    if not own:
        opts["lifetime"] = "detached"  # outlives this job on a cluster the user runs
    if cfg.ray.state_actors_on_head and (strategy := head_node_affinity()) is not None:
        opts["scheduling_strategy"] = strategy
    return Controller.options(**opts).remote(cfg.model_dump(), ccfg.model_dump(), str(store), own)


def follow(ctl, name: str, namespace: str, poll: float = 2.0, out=print) -> dict:
    """Print stage changes until the controller stops (or was ended by ``stop``); returns its last status."""
    import ray
    from ray.exceptions import RayActorError

    seen, last, errors = None, {}, 0
    while True:
        try:
            last = ray.get(ctl.status.remote(), timeout=60)
            errors = 0
        except (RayActorError, ray.exceptions.GetTimeoutError) as e:
            errors += 1  # restarting: calls in flight fail, later ones wait for the new instance
            try:
                ray.get_actor(name, namespace=namespace)
            except ValueError:  # ended for good (`jobs.flywheel stop` ends it once it has stopped)
                return {**last, "state": "stopped" if last.get("state") in ("stopping", "stopped") else "gone"}
            if errors > 30:
                out(f"controller unreachable: {type(e).__name__}")
                return {**last, "state": "unreachable"}
            time.sleep(poll)
            continue
        key = (last["iteration"], last["current_stage"], last["state"])
        if key != seen:
            out(json.dumps({k: last[k] for k in ("state", "iteration", "current_stage", "completed_stages")}))
            seen = key
        if last["state"] in ("stopped", "failed"):
            return last
        time.sleep(poll)


def start(args) -> int:
    from app.config import ConfigError
    from app.controller.config import load_flywheel_config
    from jobs.common import connect_ray, set_offline_env, store_root

    set_offline_env()
    try:
        cfg, ccfg = load_flywheel_config(args.config, args.set)
    except ConfigError as e:
        return _fail(f"config error: {e}")
    if args.max_iterations is not None and args.max_iterations < 1:
        return _fail(f"--max-iterations must be >= 1, got {args.max_iterations}")
    from pathlib import Path

    missing = [s.path for s in cfg.pool.sources if not Path(s.path).exists()]
    if missing:
        return _fail(f"input error: source file(s) not found: {', '.join(missing)} (pool.sources[].path)")
    store = store_root(cfg.store)
    own = connect_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.dashboard, cfg.ray.namespace)
    if own and args.detach:
        import ray

        ray.shutdown()
        return _fail("--detach needs a running cluster (RAY_ADDRESS or `ray start --head`): this job started its own")
    import ray

    try:
        ctl = get_or_create(cfg, ccfg, store, own)
        print(json.dumps(ray.get(ctl.start.remote(args.max_iterations)), default=str))
        if args.detach:
            return 0
        signal.signal(signal.SIGTERM, lambda *a: ctl.stop.remote())  # finish the stage, then follow() returns
        try:
            last = follow(ctl, ccfg.actor_name, cfg.ray.namespace)
        except KeyboardInterrupt:
            ray.get(ctl.stop.remote())
            last = follow(ctl, ccfg.actor_name, cfg.ray.namespace)
        print(json.dumps(last, default=str))
        return 0 if last["state"] == "stopped" else 1
    finally:
        if own:
            ray.shutdown()


def main(argv=None) -> int:
    args = _parse(argv)
    if args.cmd == "start":
        return start(args)
    import ray

    ctl = _attach(args)
    if ctl is None:
        if args.cmd == "status":
            print(json.dumps({"state": "absent", "name": args.name, "namespace": args.namespace}))
            return 0
        return _fail(f"no Controller actor {args.name!r} in namespace {args.namespace!r}: run `python -m jobs.flywheel start CONFIG`")
    if args.cmd == "status":
        print(json.dumps(ray.get(ctl.status.remote(), timeout=120), default=str))
    elif args.cmd == "trigger":
        if not args.reason.strip():
            return _fail("--reason must not be empty")
        print(json.dumps(ray.get(ctl.trigger.remote(args.reason), timeout=120), default=str))
    else:  # stop: wait for the stage to finish and the state to be saved, then end the actor
        ray.get(ctl.stop.remote(), timeout=120)
        deadline = time.time() + args.timeout
        while (st := ray.get(ctl.status.remote(), timeout=120))["state"] not in ("stopped", "failed"):
            if time.time() > deadline:
                return _fail(f"controller still in stage {st['current_stage']!r} after {args.timeout:g} s; state saved so far")
            time.sleep(1)
        ray.kill(ctl, no_restart=True)
        print(json.dumps(st, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
