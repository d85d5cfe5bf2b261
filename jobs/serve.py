"""Serve an ensemble of Flywheel models with Ray Serve: canary rollout, automatic rollback, traffic to the pool.

    python -m jobs.serve up jobs/configs/serve_demo.yaml [--block] [--redeploy]
    python -m jobs.serve status [--name NAME]        # JSON
    python -m jobs.serve online --name NAME [--tolerance 0.05] [--min-labels 30]   # JSON: feedback accuracy
    python -m jobs.serve down [--name NAME | CONFIG]

`up` joins the cluster in `ray_address`, $RAY_ADDRESS or the running local one; with `--block` and no cluster
it starts a local one, serves until SIGINT/SIGTERM and then removes everything it started. Members missing
from the registry are built first (see jobs/serve_build.py). Expected errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from jobs.common import _running_local_cluster, set_offline_env, store_root


class CliError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def _connect(cfg_address: str | None, namespace: str, start_if_missing: bool, num_cpus: int | None) -> bool:
    """Join a cluster; start a local one only when allowed. Returns True when this process started it."""
    import os

    import ray

    addr = cfg_address or os.environ.get("RAY_ADDRESS")
    if addr and addr != "local":
        ray.init(address=addr, namespace=namespace, log_to_driver=False)
        return False
    if addr is None and _running_local_cluster():
        ray.init(address="auto", namespace=namespace, log_to_driver=False)
        return False
    if not start_if_missing:
        raise CliError("no Ray cluster to join: set RAY_ADDRESS, start one (`ray start --head`), or use `up --block`")
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), namespace=namespace, include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=False)
    return True


def _load(path: str):
    from app.serving.config import ServeConfigError, load_serve_config

    try:
        return load_serve_config(path)
    except ServeConfigError as e:
        raise CliError(str(e)) from None


def cmd_up(args) -> int:
    from app.tracking import tracking_uri
    from jobs.serve_build import MemberError
    from jobs.serve_up import down, up

    cfg = _load(args.config)
    set_offline_env()
    store = store_root(cfg.store)
    own = _connect(cfg.ray_address, cfg.namespace, args.block, cfg.ray_num_cpus)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        try:
            result = up(cfg, store, tracking_uri(cfg.tracking_uri, store), redeploy=args.redeploy, prog=say)
        except (MemberError, FileNotFoundError, ValueError) as e:
            raise CliError(str(e)) from None
        print(json.dumps(result, indent=2, default=str), flush=True)
        if not args.block:
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        say(f"serving {cfg.name!r} on http://{cfg.http.host}:{cfg.http.port}{cfg.http.route_prefix} "
            "until Ctrl-C / SIGTERM")
        stop.wait()
        say(json.dumps(down(cfg.name, cfg.namespace)))
        return 0
    finally:
        if own:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()


def cmd_status(args) -> int:
    from jobs.serve_up import status

    _connect(None, args.namespace, False, None)
    print(json.dumps(status([args.name] if args.name else None, args.namespace), indent=2, default=str))
    return 0


def cmd_online(args) -> int:
    from jobs.serve_up import online

    if not 0 <= args.tolerance <= 1 or args.min_labels < 1:
        raise CliError(f"--tolerance {args.tolerance} must be in [0, 1] and --min-labels {args.min_labels} >= 1")
    _connect(None, args.namespace, False, None)
    try:
        print(json.dumps(online(args.name, args.namespace, args.tolerance, args.min_labels), indent=2))
    except ValueError as e:
        raise CliError(f"no endpoint {args.name!r} in namespace {args.namespace!r}: {e}") from None
    return 0


def cmd_down(args) -> int:
    from jobs.serve_up import down

    name, namespace = args.name, args.namespace
    if args.config:
        cfg = _load(args.config)
        name, namespace = cfg.name, cfg.namespace
    _connect(None, namespace, False, None)
    print(json.dumps(down(name, namespace), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="deploy or update the endpoint in place")
    u.add_argument("config", help="serve YAML, e.g. jobs/configs/serve_demo.yaml")
    u.add_argument("--block", action="store_true", help="serve until SIGINT/SIGTERM (starts Ray if none runs)")
    u.add_argument("--redeploy", action="store_true", help="roll every member deployment even if unchanged")
    s = sub.add_parser("status", help="print JSON status of the endpoint(s)")
    s.add_argument("--name", default=None, help="endpoint name (default: every endpoint found)")
    s.add_argument("--namespace", default="flywheel", help="Ray namespace of the rollout actor")
    o = sub.add_parser("online", help="JSON: online (feedback) accuracy and the live-degradation verdict")
    o.add_argument("--name", default="ensemble", help="endpoint name")
    o.add_argument("--namespace", default="flywheel", help="Ray namespace of the rollout actor")
    o.add_argument("--tolerance", type=float, default=0.05, help="largest accepted drop below val accuracy")
    o.add_argument("--min-labels", type=int, default=30, help="fewest labels before degradation can fire")
    d = sub.add_parser("down", help="remove the endpoint")
    d.add_argument("config", nargs="?", default=None, help="serve YAML (its name and namespace are used)")
    d.add_argument("--name", default="ensemble", help="endpoint name when no config is given")
    d.add_argument("--namespace", default="flywheel", help="Ray namespace of the rollout actor")
    args = p.parse_args(argv)
    try:
        return {"up": cmd_up, "status": cmd_status, "online": cmd_online, "down": cmd_down}[args.cmd](args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
