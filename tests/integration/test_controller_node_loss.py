"""Multi-node simulation (``ray.cluster_utils.Cluster``): the node running training is removed mid-training;
a replacement node joins (as an autoscaler would add one); the iteration still completes and no label is lost.

Head 1 CPU: the Controller, DataPool and Labeler (0.25 each) are pinned there (``ray.state_actors_on_head``) and
leave no room for the 1-CPU training worker, which so runs on the 1-CPU worker node. Nodes are added and removed from the main thread
only (FINDINGS: ``Cluster.add_node`` refuses other threads).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.test_controller import _config

pytestmark = pytest.mark.integration


def _wait(fn, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_worker_node_removed_during_training(tmp_path):
    import ray
    from ray.cluster_utils import Cluster
    from ray.exceptions import GetTimeoutError, RayActorError

    from app.controller.config import load_flywheel_config
    from jobs.common import set_offline_env
    from jobs.flywheel import get_or_create

    set_offline_env()
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    path = _config(tmp_path)
    path.write_text(path.read_text().replace("ray: {address: local, dashboard: false, num_cpus: 2}",
                                             "ray: {dashboard: false}"))
    cfg, ccfg = load_flywheel_config(path)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "temp_dir": tempfile.mkdtemp(prefix="fwnode-", dir="/tmp"),  # short socket paths
        "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, namespace="flywheel", log_to_driver=False)
    try:
        ctl = get_or_create(cfg, ccfg, Path(cfg.store), own=True)
        ray.get(ctl.start.remote(1))

        def status():
            try:
                return ray.get(ctl.status.remote(), timeout=30)
            except (RayActorError, GetTimeoutError):
                return None

        _wait(lambda: (s := status()) and s["current_stage"] == "train", 400, "the train stage")
        ckpt_root = Path(cfg.store) / "ray_results"
        _wait(lambda: any(ckpt_root.rglob("checkpoint_*")) or any(ckpt_root.rglob("g0_step_*")), 180,
              "a training checkpoint")
        labels_before = ray.get(ray.get_actor(f"Labeler:{cfg.name}").counts.remote())["final_source"]
        cluster.remove_node(worker)  # the training worker's node goes away
        cluster.add_node(num_cpus=1)  # a replacement joins; Ray Train restarts the group from the checkpoint
        final = _wait(lambda: (s := status()) and s["state"] in ("stopped", "failed") and s, 600, "the iteration")
        assert final["state"] == "stopped" and final["iteration_status"] == "idle", final
        assert final["completed_stages"][-1] == "deploy"
        labels_after = ray.get(ray.get_actor(f"Labeler:{cfg.name}").counts.remote())["final_source"]
        assert labels_after == labels_before and sum(labels_after.values()) == 24  # no label lost
        starts = Counter(e["stage"] for e in ray.get(ctl.events.remote(1000)) if e["event"] == "stage_start")
        assert starts["label"] == 1 and starts["select"] == 1 and starts["train"] == 1  # nothing was redone

        # Ray Train restarted the worker group (g1) from the group-0 checkpoint taken before the node went away
        run_dir = next(ckpt_root.iterdir())
        final_ckpt = max(run_dir.glob("g*_step_*"), key=lambda p: p.name)
        resumed = [e for e in json.loads((final_ckpt / "events.json").read_text()) if e["event"] == "resumed"]
        assert final_ckpt.name.startswith("g1_") and resumed and "/g0_step_" in resumed[-1]["from"], (final_ckpt, resumed)
        steps = [h["step"] for h in json.loads((final_ckpt / "history.json").read_text())]
        assert steps == list(range(1, steps[-1] + 1))  # no step lost or repeated across the restart

        # the state actors sat on the head (ray.state_actors_on_head), so the node loss never touched them
        head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
        where = [ray.get(a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
                 for a in (ctl, ray.get_actor(f"DataPool:{cfg.name}"), ray.get_actor(f"Labeler:{cfg.name}"))]
        assert where == [head] * 3
    finally:
        ray.shutdown()
        cluster.shutdown()
