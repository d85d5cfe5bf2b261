"""The result JSON of a study, from hand-written trial records; and the task rows / features it records."""

import math
from pathlib import Path

import pytest

from app.tune.results import pick_best, status_counts, stop_reason, study_result, trial_score
from app.tune.study import TaskData
from app.tune.task_data import describe_task, label_entropy, load_rows

ROOT = Path(__file__).resolve().parents[2]


def _rec(tid, scores, status="finished", **kw):
    hist = [{"training_iteration": i + 1, "val_accuracy": s} for i, s in enumerate(scores)]
    return {"trial_id": tid, "config": {"lr": 0.1}, "history": hist, "status": status, "error": None,
            "stopped_by": None, "exploits": []} | kw


def test_score_is_best_finite_value_by_mode():
    hist = [{"m": 0.5}, {"m": float("nan")}, {"m": 0.7}, {"m": 0.6}, {"other": 1}]
    assert trial_score(hist, "m", "max") == 0.7
    assert trial_score(hist, "m", "min") == 0.5
    assert trial_score([{"m": float("nan")}], "m", "max") is None


def test_stop_reasons():
    assert stop_reason(_rec("a", [0.1, 0.2, 0.3]), max_t=3) == "max_t"
    assert stop_reason(_rec("a", [0.1]), max_t=3) == "scheduler"  # ended before max_t without the stopper
    assert stop_reason(_rec("a", [0.1], stopped_by="no improvement"), 3) == "stopper: no improvement"
    assert stop_reason(_rec("a", [], status="errored", error="NaN loss"), 3) == "error: NaN loss"


def test_study_result_contract_best_agrees_with_trials():
    records = [
        _rec("t1", [0.5, 0.6, 0.55]),  # score 0.6
        _rec("t2", [0.7]),  # score 0.7, stopped early by ASHA
        _rec("t3", [0.9], status="errored", error="ValueError: boom"),  # best number, but errored
        _rec("t4", [0.4, 0.7, 0.65], exploits=[{"iteration": 1, "donor": "t1", "old_config": {}, "new_config": {}}]),
    ]
    r = study_result("s", "pbt", "random", "val_accuracy", "max", 3, records, ["run9"])
    assert list(r) == ["study", "scheduler", "search", "metric", "mode", "best", "trials", "total_iterations",
                       "warm_start_from"]
    assert list(r["trials"][0]) == ["trial_id", "config", "score", "iterations", "status", "stop_reason",
                                    "exploited_from"]
    # t2 and t4 tie at 0.7; the earlier trial wins; the errored t3 is left out while others have scores
    assert r["best"] == {"trial_id": "t2", "config": {"lr": 0.1}, "score": 0.7}
    best = next(t for t in r["trials"] if t["trial_id"] == r["best"]["trial_id"])
    assert best["score"] == r["best"]["score"] == max(t["score"] for t in r["trials"] if t["status"] != "errored")
    assert r["total_iterations"] == 3 + 1 + 1 + 3  # = 8 reports in all
    assert r["trials"][3]["exploited_from"] == [{"iteration": 1, "donor": "t1"}]
    assert r["trials"][2]["stop_reason"] == "error: ValueError: boom"
    assert r["warm_start_from"] == ["run9"]


def test_best_falls_back_to_errored_then_none():
    only_err = [{"trial_id": "a", "config": {}, "score": 0.3, "status": "errored"}]
    assert pick_best(only_err, "max")["trial_id"] == "a"
    assert pick_best([{"trial_id": "a", "config": {}, "score": None, "status": "errored"}], "max") is None
    mins = [{"trial_id": "a", "config": {}, "score": 0.3, "status": "finished"},
            {"trial_id": "b", "config": {}, "score": 0.2, "status": "finished"}]
    assert pick_best(mins, "min")["trial_id"] == "b"


def test_status_counts():
    recs = [_rec("a", [0.2]), _rec("b", [0.4], status="running"), _rec("c", [], status="errored", error="x")]
    s = status_counts(recs, "val_accuracy", "max", 3)
    assert (s["running"], s["finished"], s["errored"]) == (1, 1, 1)
    assert s["best"]["trial_id"] == "b" and s["total_iterations"] == 2  # best so far counts running trials


def test_label_entropy_hand_computed():
    # p = (3/4, 1/4): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
    assert label_entropy(["a", "a", "a", "b"]) == pytest.approx(0.5623351446)
    assert label_entropy(["a", "a"]) == 0.0


def test_rows_from_shipped_sst2_are_disjoint_and_seeded():
    task = TaskData(label_map={"0": "negative", "1": "positive"}, n_train=64, n_val=32, seed=3)
    a, b = load_rows(task, ROOT), load_rows(task, ROOT)
    assert a == b and len(a.train_texts) == 64 and len(a.val_texts) == 32
    assert not set(a.train_texts) & set(a.val_texts)
    assert a.labels == ["negative", "positive"] and set(a.train_labels) <= set(a.labels)
    f = describe_task(a, model_params=1000)
    assert f["log10_train_size"] == pytest.approx(math.log10(64)) and f["log10_model_params"] == 3.0
    assert f["task_type=classification"] == 1.0 and 0.0 < f["label_balance"] <= 1.0


def test_rows_errors_name_the_problem(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("sentence\tlabel\nhello\t1\nworld\t0\n")
    from app.tune.study import StudyError

    with pytest.raises(StudyError, match="has 2 distinct rows; n_train \\+ n_val = 16"):
        load_rows(TaskData(path=str(p), n_train=8, n_val=8))
    with pytest.raises(StudyError, match="column 'text' not in x.tsv"):
        load_rows(TaskData(path=str(p), text_field="text", n_train=8, n_val=8))
    with pytest.raises(StudyError, match="does not exist"):
        load_rows(TaskData(path=str(tmp_path / "none.tsv")))


def test_iterations_to_target_counts_reports_across_trials():
    from app.tune.results import iterations_to_target

    a = {"history": [{"report_index": 1, "m": 0.5}, {"report_index": 3, "m": 0.7}, {"report_index": 5, "m": 0.9}]}
    b = {"history": [{"report_index": 2, "m": 0.6}, {"report_index": 4, "m": 0.8}]}
    # reports arrive a1 b1 a2 b2 a3; 0.75 is first reached by b's second report, the 4th report overall
    assert iterations_to_target([a, b], "m", "max", 0.75) == 4
    assert iterations_to_target([a, b], "m", "max", 0.95) is None
    assert iterations_to_target([a, b], "m", "min", 0.55) == 1
