"""Multi-node simulation and a short soak (``ray.cluster_utils.Cluster``), two Controller iterations:

1. the worker node running training is removed mid-training and a replacement joins (as an autoscaler would add
   one): Ray Train restarts the worker group from its checkpoint, the iteration completes, no label is lost;
2. new rows arrive in the source file (the volume trigger fires) and the Labeler actor is killed during training:
   Ray restarts it, it reloads its SQLite store, the iteration completes with every label of both iterations.

With tests/integration/test_controller.py (the Controller killed mid-training) this is the suite's short version
of bench/soak.py: every fault kind of the soak, each survived by a completing iteration.

Head 1 CPU: the Controller, DataPool and Labeler (0.25 each) are pinned there (``ray.state_actors_on_head``) and
leave no room for the 1-CPU training worker, which so runs on the 1-CPU worker node. Nodes are added and removed
from the main thread only (FINDINGS: ``Cluster.add_node`` refuses other threads).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.test_controller import BUDGET, ROOT, _config, _wait

pytestmark = pytest.mark.integration
FIRST, ARRIVING = 200, 100  # source rows at the start; rows appended before iteration 2 (≥ min_new_items 10)


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory, ray_dir):
    import ray
    from ray.cluster_utils import Cluster
    from ray.exceptions import GetTimeoutError, RayActorError

    from app.controller.config import load_flywheel_config
    from jobs.common import set_offline_env
    from jobs.flywheel import get_or_create

    tmp = tmp_path_factory.mktemp("nodeloss")
    lines = (ROOT / "data/sst2/alps_dev_first3000.tsv").read_text().splitlines(keepends=True)
    source = tmp / "arriving.tsv"
    source.write_text("".join(lines[:1 + FIRST]))
    set_offline_env()
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    path = _config(tmp)
    text = path.read_text().replace("ray: {address: local, dashboard: false, num_cpus: 2}", "ray: {dashboard: false}")
    text = text.replace(f"{ROOT}/data/sst2/alps_dev_first3000.tsv", str(source)).replace("limit: 200", "limit: 1000")
    path.write_text(text)
    cfg, ccfg = load_flywheel_config(path)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "temp_dir": ray_dir,
        "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, namespace="flywheel", log_to_driver=False)
    try:
        ctl = get_or_create(cfg, ccfg, Path(cfg.store), own=True)

        def status():
            try:
                return ray.get(ctl.status.remote(), timeout=30)
            except (RayActorError, GetTimeoutError):
                return None

        def labeler():
            return ray.get_actor(f"Labeler:{cfg.name}")

        yield {"ray": ray, "cluster": cluster, "worker": worker, "ctl": ctl, "cfg": cfg, "status": status,
               "labeler": labeler, "source": source, "lines": lines}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _ask_labeler(fw, fn, timeout: float = 120, until=lambda v: True):
    """``fn(actor)`` run inside the Labeler actor, retried while Ray restarts it (and until ``until(answer)``)."""
    from ray.exceptions import GetTimeoutError, RayActorError

    def once():
        try:
            v = fw["ray"].get(fw["labeler"]().__ray_call__.remote(fn), timeout=30)
            return (v,) if until(v) else None
        except (RayActorError, GetTimeoutError, ValueError):  # restarting / not yet re-registered
            return None

    return _wait(once, timeout, "an answer from the Labeler")[0]


def _counts(fw):
    return _ask_labeler(fw, lambda self: self.counts()["final_source"])


def test_worker_node_removed_during_training(flywheel):
    fw = flywheel
    ray, ctl, cfg, status = fw["ray"], fw["ctl"], fw["cfg"], fw["status"]
    ray.get(ctl.start.remote(1))
    _wait(lambda: (s := status()) and s["current_stage"] == "train", 400, "the train stage")
    ckpt_root = Path(cfg.store) / "ray_results"
    _wait(lambda: any(ckpt_root.rglob("checkpoint_*")) or any(ckpt_root.rglob("g0_step_*")), 180,
          "a training checkpoint")
    labels_before = _counts(fw)
    fw["cluster"].remove_node(fw["worker"])  # the training worker's node goes away
    fw["cluster"].add_node(num_cpus=1)  # a replacement joins; Ray Train restarts the group from the checkpoint
    final = _wait(lambda: (s := status()) and s["state"] in ("stopped", "failed") and s, 600, "the iteration")
    assert final["state"] == "stopped" and final["iteration_status"] == "idle", final
    assert final["completed_stages"][-1] == "deploy"
    labels_after = _counts(fw)
    assert labels_after == labels_before and sum(labels_after.values()) == BUDGET  # no label lost
    assert _ask_labeler(fw, lambda self: self.counts()["labels_per_hour"]) >= BUDGET  # the dashboard gauge's value
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
             for a in (ctl, ray.get_actor(f"DataPool:{cfg.name}"), fw["labeler"]())]
    assert where == [head] * 3


def test_new_data_fires_volume_trigger_and_labeler_kill_loses_nothing(flywheel):
    fw = flywheel
    ray, ctl, status = fw["ray"], fw["ctl"], fw["status"]
    assert status()["iteration"] == 1, "runs after the node-loss iteration"
    before = _counts(fw)
    with open(fw["source"], "a") as f:  # new data arrives
        f.writelines(fw["lines"][1 + FIRST:1 + FIRST + ARRIVING])
    ray.get(ctl.start.remote(1))
    _wait(lambda: (s := status()) and s["iteration"] == 2 and s["current_stage"] == "train", 400,
          "iteration 2 to reach train")
    pid = _ask_labeler(fw, lambda self: os.getpid())
    ray.kill(fw["labeler"](), no_restart=False)
    # ray.kill is asynchronous: a call sent right after it may still reach the old process, so wait for a new pid
    assert _ask_labeler(fw, lambda self: os.getpid(), until=lambda p: p != pid) != pid
    final = _wait(lambda: (s := status()) and s["state"] in ("stopped", "failed") and s, 600, "iteration 2")
    assert final["state"] == "stopped" and final["iteration_status"] == "idle" and final["iteration"] == 2, final
    assert final["completed_stages"][-1] == "deploy"
    ev = ray.get(ctl.events.remote(10_000))
    fired = [e for e in ev if e["event"] == "trigger"][-1]
    assert fired["values"]["conditions"]["volume"] and fired["values"]["new_items"] >= 10, fired
    after = _counts(fw)
    assert sum(after.values()) == 2 * BUDGET  # iteration 1's labels survived the kill; iteration 2 added its own
    assert all(after.get(k, 0) >= v for k, v in before.items())
