"""The Controller actor killed mid-training resumes at `train`; finished stages are not redone; the
champion's lineage leads back to its data version.

One isolated local Ray (2 CPUs), tiny-bert, one iteration of 24 labels. The test drives the actor
directly (``jobs.flywheel.get_or_create``), as ``python -m jobs.flywheel start`` does.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
BUDGET = 24


def _config(tmp: Path) -> Path:
    cfg = f"""
name: ctest
task: classify
store: {tmp / 'home'}
pool:
  sources:
    - {{path: {ROOT}/data/sst2/alps_dev_first3000.tsv, fields: {{text: sentence, label: label}}, label_role: gold,
        label_map: {{"0": negative, "1": positive}}, limit: 200}}
  labels: [negative, positive]
model: {{name: tiny-bert, max_length: 32}}
selection: {{strategy: entropy, budget: {BUDGET}, rounds: 1, concurrency: 1}}
labeler: {{threshold: 0.5, qc_fraction: 0.0}}
# one plain-torch worker: the test is about the controller, and skips the DeepSpeed start-up
trainer: {{engine: torch, num_workers: 1, cpus_per_worker: 1.0, epochs: 4, micro_batch_size: 4, checkpoint_every: 2, report_every: 1}}
eval: {{max_items: 20, latency_samples: 5, gate: {{min_gain: -1.0, latency_tolerance: 1000, target: 0.0}}}}
serve: {{enabled: false}}
tracking: {{experiment: ctest, registered_model: ctest-model}}
ray: {{address: local, dashboard: false, num_cpus: 2}}
controller:
  poll_seconds: 0.5
  triggers: {{min_new_items: 10, max_wait_hours: 0, degradation_threshold: null, policy: seed}}
"""
    (tmp / "cfg.yaml").write_text(cfg)
    return tmp / "cfg.yaml"


def _wait(fn, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, ray_dir):
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    from app.controller.config import load_flywheel_config
    from jobs.common import set_offline_env
    from jobs.flywheel import get_or_create

    tmp = tmp_path_factory.mktemp("ctl")
    set_offline_env()
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    cfg, ccfg = load_flywheel_config(_config(tmp))
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_dir,
             namespace="flywheel", runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}})
    try:
        ctl = get_or_create(cfg, ccfg, Path(cfg.store), own=True)
        ray.get(ctl.start.remote(1))

        def status():
            try:
                return ray.get(ctl.status.remote(), timeout=30)
            except (RayActorError, GetTimeoutError):
                return None

        _wait(lambda: (s := status()) and s["current_stage"] == "train", 300, "the train stage")
        ckpt_root = Path(cfg.store) / "ray_results"
        # kill once training has written a checkpoint (or after 20 s): the restart resumes the same run
        t_train = time.time()
        _wait(lambda: any(ckpt_root.rglob("checkpoint_*")) or time.time() > t_train + 30, 60, "a training checkpoint")
        before = status()
        ray.kill(ctl, no_restart=False)
        final = _wait(lambda: (s := status()) and s["state"] in ("stopped", "failed") and s, 600, "the iteration")
        events = ray.get(ctl.events.remote(1000))
        yield {"before": before, "final": final, "events": events, "cfg": cfg, "home": Path(cfg.store)}
    finally:
        ray.shutdown()


def test_iteration_completes_after_kill(killed_run):
    s = killed_run["final"]
    assert s["state"] == "stopped", s
    assert s["restarted"] is True and s["iteration"] == 1 and s["iteration_status"] == "idle"
    assert s["completed_stages"] == ["ingest", "select", "label", "train", "evaluate", "decide", "deploy"]
    assert s["skipped_stages"] == ["tune", "merge"]
    assert s["last_decision"]["action"] == "deploy"  # the gate accepts any result (min_gain -1)
    assert s["last_decision"]["training_feedback"] is None  # a deployed model keeps the trainer settings
    assert killed_run["before"]["completed_stages"] == ["ingest", "select", "label"]


def test_finished_stages_not_redone(killed_run):
    ev = killed_run["events"]
    starts = Counter(e["stage"] for e in ev if e["event"] == "stage_start")
    # ingest/select/label ran once; train started before the kill and again after it
    assert starts == {"ingest": 1, "select": 1, "label": 1, "train": 2, "evaluate": 1, "decide": 1, "deploy": 1}
    boots = [e for e in ev if e["event"] == "controller_start"]
    assert [b["restarted"] for b in boots] == [False, True]
    # the restarted actor could read the GCS tables it frees the killed run's placement groups from
    assert not [e for e in ev if e["event"] == "pg_cleanup_failed"]
    fired = [e for e in ev if e["event"] == "trigger"]
    # 200 SST-2 rows (minus duplicates) >= 10 new items, and never trained (inf h >= 0 h): the seed policy
    assert len(fired) == 1 and fired[0]["values"]["conditions"]["volume"] and fired[0]["values"]["conditions"]["time"]
    assert fired[0]["reasons"][0].startswith("volume: ")


def test_no_label_lost_or_duplicated(killed_run):
    home = killed_run["home"]
    versions = sorted(p.name for p in (home / "pool" / "ctest" / "snapshots").glob("v*"))
    manifests = [json.loads((home / "pool" / "ctest" / "snapshots" / v / "manifest.json").read_text()) for v in versions]
    # v1: ingest (on arrival, before the trigger fired), v2: the one labelling round. A redone label stage would add v3.
    assert [m["version"] for m in manifests] == [1, 2]
    assert manifests[-1]["counts"]["labelled"] == BUDGET


def test_evaluation_failures_saved_for_selection_and_review(killed_run):
    """Evaluate kept the candidate's failed test items and turned their clusters into guideline-review items."""
    home = killed_run["home"]
    state = json.loads((home / "controller" / "ctest" / "state.json").read_text())["state"]
    fb = state["completed"]["evaluate"]["feedback"]
    saved = json.loads((home / "controller" / "ctest" / "iter-0001" / "failures.json").read_text())
    fails = saved["failures"]
    assert saved["test_items"] == 20 and fb["failures"] == len(fails) <= 20  # eval.max_items 20
    assert all(f["pred"] != f["target"] or f["p_true"] < 0.6 for f in fails)  # the failure rule
    assert [f["p_true"] for f in fails] == sorted(f["p_true"] for f in fails)  # worst first
    review = json.loads(Path(fb["review_file"]).read_text())
    assert sum(r["size"] for r in review) == len(fails) and len(review) == fb["review_items"] <= 5
    assert all(r["kind"] == "guideline_review" for r in review)


def test_one_mlflow_run_and_lineage_back_to_data_version(killed_run):
    from mlflow.tracking import MlflowClient

    from jobs.lineage import by_data_version, chain

    home = killed_run["home"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ctest").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the restarted controller resumed the same run
    run_id = runs[0].info.run_id
    node = chain(client, "ctest-model@champion")
    assert (node["model"], node["version"], node["run_id"], node["data_version"]) == ("ctest-model", "1", run_id, "2")
    assert node["parents"] == []  # trained from the base model
    assert sum(node["label_version"]["counts"].values()) == BUDGET
    assert [(r["model"], r["version"]) for r in by_data_version(client, "2")] == [("ctest-model", "1")]
    assert by_data_version(client, "1") == []
    mv = client.get_model_version("ctest-model", "1")
    assert mv.tags["flywheel.iteration"] == "1"


def test_critical_trigger_then_stop_finishes_the_stage(killed_run):
    """No new data (0 < 10 items) but the critical flag fires; `stop` lets the running stage finish, starts no other."""
    import ray

    ctl = ray.get_actor("Controller", namespace="flywheel")
    ray.get(ctl.trigger.remote("wrong answers on refund questions"))
    ray.get(ctl.start.remote(1))
    _wait(lambda: ray.get(ctl.status.remote())["current_stage"] is not None, 120, "iteration 2 to run a stage")
    ray.get(ctl.stop.remote())
    s = _wait(lambda: (x := ray.get(ctl.status.remote()))["state"] == "stopped" and x, 300, "the stop")
    ev = ray.get(ctl.events.remote(1000))
    fired = [e for e in ev if e["event"] == "trigger"][-1]
    assert fired["reasons"] == ["critical: a critical failure was flagged"]
    assert fired["values"]["new_items"] == 0 and fired["values"]["conditions"]["volume"] is False
    after_stop = ev[max(i for i, e in enumerate(ev) if e["event"] == "stop_requested"):]
    assert not [e for e in after_stop if e["event"] == "stage_start"]  # nothing new started after the stop
    starts = [e["stage"] for e in ev if e["event"] == "stage_start" and e["iteration"] == 2]
    dones = [e["stage"] for e in ev if e["event"] == "stage_done" and e["iteration"] == 2]
    assert starts == dones and s["completed_stages"] == dones  # the running stage finished and was saved
    assert s["iteration"] == 2 and s["iteration_status"] == "stopped" and not s["critical_flag"]
