"""The controller's deploy goes through the endpoint canary: a bad challenger is rolled back automatically, a
good one is promoted step by step and takes the ``champion`` alias.

One single-member endpoint (the member is the loop's registered model, ``models:/<name>@champion``; a pico
tiny-bert classifier built from 300 SST-2 rows on the first ``up``), private 2-CPU Ray, 127.0.0.1 on a free
port. ``jobs.stages.deploy.canary_rollout`` is what the controller's deploy stage runs after registering the
new version as ``challenger``; held-out SST-2 rows are replayed through /predict and labelled via /feedback.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest

from tests.integration.serve_helpers import free_port, register_flipped_challenger, status_of, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
REG = "canary-loop-model"


def _replay(n: int = 60) -> list[tuple[str, str]]:
    """SST-2 rows after the 400 the endpoint was fitted on: (text, true label)."""
    with open(ROOT / "data/sst2/alps_dev_first3000.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[400:400 + n]
    return [(r["sentence"], {"0": "negative", "1": "positive"}[r["label"]]) for r in rows]


def _register_copy(uri: str, store: Path) -> str:
    """Register an unchanged copy of the champion as ``challenger`` (as a retrained model that agrees)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from app.tracking import ensure_experiment, register_model_dir
    from jobs.serve_build import _local_dir

    client = MlflowClient(uri)
    src = _local_dir(client, client.get_model_version_by_alias(REG, "champion"))
    dst = store / f"copy-{time.time_ns()}"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "flywheel_model.json").read_text())
    (dst / "flywheel_model.json").write_text(json.dumps({**meta, "note": "retrained copy"}))  # a new fingerprint
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=ensure_experiment(client, "copies", store), run_name="copy") as run:
        mlflow.log_artifacts(str(dst), "model")
        version = register_model_dir(client, REG, run.info.run_id, run.info.artifact_uri, "model",
                                     {"flywheel.task": "classify"})
    client.set_registered_model_alias(REG, "challenger", version)
    return version


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, ray_dir):
    import ray
    from ray import serve

    from app.serving.config import load_serve_config
    from app.tracking import tracking_uri
    from jobs.common import set_offline_env
    from jobs.serve_up import down, up

    tmp = tmp_path_factory.mktemp("ctl_canary")
    set_offline_env()
    port = free_port()
    (tmp / "serve.yaml").write_text(f"""
name: canary-loop
store: {tmp}/store
data:
  sources:
    - {{path: {ROOT}/data/sst2/alps_dev_first3000.tsv, fields: {{text: sentence, label: label}},
       label_map: {{"0": negative, "1": positive}}, limit: 400}}
  labels: [negative, positive]
members:
  - {{name: loop, source: "models:/{REG}@champion", cost: 1.0, num_cpus: 0.2,
     build: {{backbone: tiny-bert, train_rows: 300, C: 1.0, max_length: 32}}}}
policy: {{name: cascade, params: {{target_accuracy: 0.55}}}}
http: {{port: {port}, auth_token_env: FLYWHEEL_CANARY_TEST_TOKEN, ingress_cpus: 0.2}}
traffic: {{sample_rate: 0.0, pool_config: null}}
canary:
  # feedback accuracy of two identical models differs by chance on 15-request windows (CI once saw 0.90 vs
  # 0.56): the drop must exceed 0.3 at 95 % confidence to roll back
  plan: {{steps: [50, 100], window_requests: 15, min_samples: 8, min_agreement: 0.9, p99_ratio_max: 100,
         max_accuracy_drop: 0.3, accuracy_drop_confidence: 0.95,
         max_error_rate: 0.2}}
experiment: canary-loop-serve
""")
    cfg = load_serve_config(tmp / "serve.yaml")
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="flywheel", log_to_driver=False,
             _temp_dir=ray_dir)
    try:
        store = tmp / "store"
        uri = tracking_uri(None, store)
        up(cfg, store, uri, prog=lambda m: None)  # builds and serves v1 as the champion
        yield {"cfg": cfg, "store": store, "uri": uri}
        down(cfg.name, cfg.namespace)
    finally:
        serve.shutdown()
        ray.shutdown()


def test_canary_member_must_be_the_loop_model(endpoint):
    from jobs.stages.deploy import CanaryConfigError, canary_member

    assert canary_member(endpoint["cfg"], REG) == "loop"
    with pytest.raises(CanaryConfigError, match=r"models:/other@champion.*tracking.registered_model"):
        canary_member(endpoint["cfg"], "other")


def test_bad_version_is_rolled_back(endpoint):
    from mlflow.tracking import MlflowClient

    from jobs.stages.deploy import canary_rollout

    version = register_flipped_challenger(endpoint["uri"], endpoint["store"], REG)  # answers the other label
    res = canary_rollout(endpoint["cfg"], endpoint["store"], endpoint["uri"], "loop", version, _replay(), 180,
                         prog=lambda m: None)
    assert res["outcome"] == "rolled_back", res
    assert res["model_version"] == f"loop:{version}"
    assert "agreement" in res["reason"] and res["metrics"]["agreement"] < 0.5
    assert 15 <= res["replayed"] < 200  # judged on the first window of 50 % traffic
    client = MlflowClient(endpoint["uri"])
    assert str(client.get_model_version_by_alias(REG, "champion").version) == "1"  # the champion stayed
    # the alias moves on the rollout actor's io thread, a moment after the event
    wait_for(lambda: "challenger" not in client.get_registered_model(REG).aliases, timeout=30)  # not canaried again


def test_good_version_is_promoted(endpoint):
    from mlflow.tracking import MlflowClient

    from jobs.stages.deploy import canary_rollout

    version = _register_copy(endpoint["uri"], endpoint["store"])
    res = canary_rollout(endpoint["cfg"], endpoint["store"], endpoint["uri"], "loop", version, _replay(), 240,
                         prog=lambda m: None)
    assert res["outcome"] == "promoted", res
    assert res["metrics"]["agreement"] == 1.0
    events = [e["event"] for e in status_of("canary-loop")["events"] if e.get("model_version") == f"loop:{version}"]
    assert events[-3:] == ["canary_started", "canary_advanced", "promoted"]  # 50 % then 100 %, then promoted
    client = MlflowClient(endpoint["uri"])
    wait_for(lambda: str(client.get_model_version_by_alias(REG, "champion").version) == version, timeout=30)
