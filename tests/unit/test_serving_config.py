"""Serve config (app.serving.config), member heads (app.serving.members) and traffic rows (app.serving.traffic)."""

from pathlib import Path

import numpy as np
import pytest

from app.serving.config import ServeConfigError, load_serve_config, parse_source
from app.serving.members import linear_head_from_logreg
from app.serving.traffic import to_pool_rows

ROOT = Path(__file__).resolve().parents[2]
MINI = """
data:
  sources: [{path: data/sst2/alps_test.tsv, fields: {text: sentence, label: label}}]
  labels: [negative, positive]
members:
  - {name: cheap, source: models:/x@champion}
"""


def test_shipped_serve_demo_validates():
    cfg = load_serve_config(ROOT / "jobs" / "configs" / "serve_demo.yaml")
    assert [m.name for m in cfg.members] == ["minilm", "smollm2"]
    assert cfg.policy.name == "cascade" and cfg.canary.plan.steps == (10, 50, 100)
    assert cfg.members[1].batch.max_batch_size == 16 and cfg.members[0].batch.max_batch_size == 1
    for s in cfg.data.sources:
        assert (ROOT / s.path).exists(), s.path


def test_every_problem_is_reported_with_its_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(MINI.replace("name: cheap", "name: Cheap!") + "policy: {name: wieghted}\nhttp: {prot: 1}\n")
    with pytest.raises(ServeConfigError) as e:
        load_serve_config(p)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "members.0.name" in msg and "'Cheap!'" in msg
    assert "policy.name" in msg and "available: ['cascade', 'moe', 'weighted']" in msg
    assert "http.prot: Extra inputs are not permitted" in msg


def test_cross_field_rules(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(MINI + "  - {name: cheap, source: /tmp/m}\npolicy: {name: moe, gate_member: nope}\n")
    with pytest.raises(ServeConfigError, match=r"duplicate name\(s\) \['cheap'\].*gate_member='nope' is not a member"):
        load_serve_config(p)
    p.write_text(MINI + "policy: {name: moe}\n")
    with pytest.raises(ServeConfigError, match="moe needs at least 2 members"):
        load_serve_config(p)
    p.write_text(MINI + "policy: {name: cascade, params: {target: 0.9}}\n")
    with pytest.raises(ServeConfigError, match=r"policy.params \['target'\] are not parameters of 'cascade'; "
                                               r"allowed: \['target_accuracy', 'n_grid', 'max_exhaustive'\]"):
        load_serve_config(p)
    with pytest.raises(ServeConfigError, match="config file not found"):
        load_serve_config(tmp_path / "missing.yaml")


def test_parse_source():
    assert parse_source("models:/sst2-minilm@champion") == ("alias", "sst2-minilm", "champion")
    assert parse_source("models:/sst2-minilm/12") == ("version", "sst2-minilm", "12")
    assert parse_source("/models/a") == ("path", "/models/a", None)
    with pytest.raises(ValueError, match="expected models:/NAME@alias or models:/NAME/VERSION"):
        parse_source("models:/x")


def test_logistic_regression_folds_into_one_linear_layer():
    # coef (1, 2) = [[2, -1]], intercept [0.5], mean [1, 3], scale [2, 0.5]
    # W1 = coef / scale = [1, -2];  b1 = 0.5 - W1 . mean = 0.5 - (1*1 + -2*3) = 0.5 + 5 = 5.5
    w, b = linear_head_from_logreg(np.array([[2.0, -1.0]]), np.array([0.5]), np.array([1.0, 3.0]),
                                   np.array([2.0, 0.5]))
    assert w.tolist() == [[0.0, 0.0], [1.0, -2.0]] and b.tolist() == [0.0, 5.5]
    # same score as scikit-learn's on a point: e = [3, 1] -> 2*(3-1)/2 + -1*(1-3)/0.5 + 0.5 = 2 + 4 + 0.5 = 6.5
    e = np.array([3.0, 1.0])
    assert (w @ e + b)[1] - (w @ e + b)[0] == pytest.approx(6.5)


def test_traffic_rows_split_hard_and_easy_items_with_serving_columns():
    samples = [{"text": " good film ", "confidence": 0.95, "stage": "minilm", "model_version": "m:1"},
               {"text": "meh", "confidence": 0.55, "stage": "ensemble", "model_version": "m:1"},
               {"text": "   ", "confidence": 0.9, "stage": "minilm", "model_version": "m:1"}]
    rows = to_pool_rows(samples, hard_below=0.7)
    # 0.95 >= 0.7: easy; 0.55 < 0.7: hard; the blank text is dropped
    assert rows == {"serve": [{"text": "good film", "serve_confidence": 0.95, "serve_stage": "minilm",
                               "serve_model_version": "m:1", "hard_candidate": False}],
                    "serve-hard": [{"text": "meh", "serve_confidence": 0.55, "serve_stage": "ensemble",
                                    "serve_model_version": "m:1", "hard_candidate": True}]}
    with pytest.raises(ValueError, match="hard_below = 1.5"):
        to_pool_rows(samples, hard_below=1.5)