"""Warm start from past studies recorded in MLflow: the nearest past task's best configs seed the new study."""

import json
import math

import pytest

pytest.importorskip("mlflow")

from app.tune.study import parse_study  # noqa: E402
from app.tune.warmstart import task_features  # noqa: E402
from jobs import tune_mlflow  # noqa: E402

SPACE = {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
         "batch_size": {"type": "choice", "values": [8, 16, 32]}}


def _past(client, exp, name, features, best, status="FINISHED"):
    run = client.create_run(exp, run_name=name, tags={
        tune_mlflow.KIND_TAG: "tune_study", tune_mlflow.STUDY_TAG: name,
        tune_mlflow.FEATURES_TAG: json.dumps(features), tune_mlflow.BEST_TAG: json.dumps(best)})
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_nearest_past_study_seeds_the_new_one(tmp_path):
    cfg, space = parse_study({"name": "new", "space": SPACE, "store": str(tmp_path), "warm_start": True,
                              "warm_start_opts": {"k": 1, "per_study": 2, "jitter": 0.0}})
    client, exp = tune_mlflow._client(cfg)
    h = math.log(2)
    near = _past(client, exp, "sst2-small", task_features("classification", 500, 2, h, 10, 1e6),
                 [{"learning_rate": 3e-3, "batch_size": 16}, {"learning_rate": 1e-3, "batch_size": 32},
                  {"learning_rate": 5e-4, "batch_size": 8}])
    _past(client, exp, "big-sft", task_features("sft", 50000, 0, 0.0, 200, 1e8), [{"learning_rate": 1e-4}])
    _past(client, exp, "crashed", task_features("classification", 500, 2, h, 10, 1e6),
          [{"learning_rate": 1e-2}], status="FAILED")  # unfinished studies are not used
    points, seeded_by = tune_mlflow.warm_start_points(
        cfg, space, task_features("classification", 600, 2, h, 11, 1e6))
    assert seeded_by == [near]
    # jitter 0 only clips: the first per_study = 2 best configs come back as they were (up to exp(log(x)))
    assert [p["batch_size"] for p in points] == [16, 32]
    assert [p["learning_rate"] for p in points] == [pytest.approx(3e-3, rel=1e-12), pytest.approx(1e-3, rel=1e-12)]


def test_no_past_studies_no_seeds(tmp_path):
    cfg, space = parse_study({"name": "first", "space": SPACE, "store": str(tmp_path), "warm_start": True})
    assert tune_mlflow.warm_start_points(cfg, space, task_features("classification", 10, 2, 0.5, 5, 1e3)) == ([], [])
