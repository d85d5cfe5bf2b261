"""Feedback labels (app.serving.feedback + Rollout.feedback): matching, online accuracy, the accuracy gate."""

import pytest
from pydantic import ValidationError

from app.serving.canary import CanaryPlan, WindowStats, evaluate_window
from app.serving.feedback import AnswerLog, FeedbackError, OnlineAccuracy, live_degradation, text_key
from app.serving.rollout import Rollout
from app.serving.schemas import FeedbackRequest

LABELS = ["neg", "pos"]
# window_requests 4, min_samples 2, agreement never blocks (0.0), a 0.1 accuracy tolerance
PLAN = CanaryPlan(steps=(50, 100), window_requests=4, min_samples=2, min_agreement=0.0, p99_ratio_max=100.0,
                  max_accuracy_drop=0.1)


def _v(pid, val_acc=0.9):
    return {"plan_id": pid, "model_version": f"m:{pid}", "apps": [f"app-{pid}"],
            "plan": {"labels": LABELS, "val": {"accuracy": val_acc}}}


def _answers(pid, ids, label):
    return [{"request_id": r, "text_keys": [text_key(r)], "labels": [label], "plan_id": pid,
             "model_version": f"m:{pid}"} for r in ids]


def test_answer_log_finds_by_id_index_and_text_and_forgets_oldest():
    log = AnswerLog(capacity=2)
    log.add("r1", [text_key("Good film")], ["pos"], "a", "m:a")
    log.add("r2", [text_key("x"), text_key("y")], ["neg", "pos"], "a", "m:a")
    assert log.find(request_id="r2", index=1)["label"] == "pos"
    hit = log.find(text="  good   FILM ")  # same text key: case and spacing are ignored
    assert (hit["request_id"], hit["index"], hit["label"]) == ("r1", 0, "pos")
    with pytest.raises(FeedbackError, match=r"index = 2; request 'r2' answered 2 item\(s\), allowed 0..1") as e:
        log.find(request_id="r2", index=2)
    assert e.value.status == 422
    log.add("r3", [text_key("z")], ["neg"], "b", "m:b")  # capacity 2: r1 (the oldest) is forgotten
    for kw in ({"request_id": "r1"}, {"text": "good film"}):
        with pytest.raises(FeedbackError, match="among the last 2 requests") as e:
            log.find(**kw)
        assert e.value.status == 404
    with pytest.raises(FeedbackError, match="exactly one"):
        log.find()


def test_online_accuracy_is_over_the_last_window_labels():
    acc = OnlineAccuracy(window=4)
    for correct in [False, False, True, True, True, False]:
        acc.record("v1", correct)
    # the window keeps the last 4 outcomes: T, T, T, F -> 3 / 4 = 0.75; all 6 ever received
    assert acc.summary("v1") == {"model_version": "v1", "accuracy": 0.75, "labelled": 4, "total": 6, "window": 4}
    assert acc.summary("v2")["accuracy"] is None


def test_accuracy_gate_compares_challenger_with_champion_where_labels_exist():
    def win(labelled, correct):
        s = WindowStats()
        for i in range(4):
            s.record(10.0)
            s.record_agreement(True)
        for i in range(labelled):
            s.record_feedback(i < correct)
        return s

    # champion 4/4 = 1.0, challenger 3/4 = 0.75: drop 0.25 > 0.1 -> rollback, named
    res = evaluate_window(PLAN, win(4, 4), win(4, 3))
    assert not res.passed and not res.insufficient
    assert res.reasons == ["feedback accuracy 0.7500 is 0.2500 below the champion's 1.0000 > max_accuracy_drop 0.1"]
    assert res.metrics["accuracy_drop"] == pytest.approx(0.25) and res.metrics["champion_accuracy"] == 1.0
    # champion 10/10 = 1.0 vs challenger 19/20 = 0.95: drop 0.05 <= 0.1 passes
    assert evaluate_window(PLAN, win(10, 10), win(20, 19)).passed
    # 1 champion label < min_samples 2: the check is skipped (feedback is optional), not held
    assert evaluate_window(PLAN, win(1, 1), win(4, 0)).passed
    assert evaluate_window(PLAN.model_copy(update={"max_accuracy_drop": None}), win(4, 4), win(4, 0)).passed


def test_accuracy_drop_bound_matches_newcombe_and_spares_small_chance_gaps():
    from app.serving.canary import accuracy_drop_lower_bound

    # Newcombe (1998) Table II, method 10, 95 % two-sided (= 97.5 % one-sided) lower limits
    assert accuracy_drop_lower_bound(56, 70, 48, 80, 0.975) == pytest.approx(0.0524, abs=1e-4)
    assert accuracy_drop_lower_bound(9, 10, 3, 10, 0.975) == pytest.approx(0.1705, abs=1e-4)

    def win(labelled, correct):
        s = WindowStats()
        for i in range(max(4, labelled)):
            s.record(10.0)
            s.record_agreement(True)
        for i in range(labelled):
            s.record_feedback(i < correct)
        return s

    sure = PLAN.model_copy(update={"accuracy_drop_confidence": 0.95})
    # what CI saw from two identical models: champion 18/20 = 0.9, challenger 9/16 = 0.5625. The point drop
    # 0.3375 fails a 0.3 tolerance; at 95 % the drop is only known to exceed 0.0957, which passes
    loose = sure.model_copy(update={"max_accuracy_drop": 0.3})
    assert not evaluate_window(loose.model_copy(update={"accuracy_drop_confidence": None}),
                               win(20, 18), win(16, 9)).passed
    ok = evaluate_window(loose, win(20, 18), win(16, 9))
    assert ok.passed and ok.metrics["accuracy_drop_lower_bound"] == pytest.approx(0.0957, abs=1e-4)
    # a real drop is still caught: 50/50 vs 10/50, bound 0.681 > 0.1
    bad = evaluate_window(sure, win(50, 50), win(50, 10))
    assert not bad.passed and bad.reasons == [
        "feedback accuracy 0.2000 is 0.8000 below the champion's 1.0000; at 95% confidence the drop is at "
        "least 0.6810 > max_accuracy_drop 0.1"]


def test_feedback_rolls_back_a_less_accurate_challenger():
    r = Rollout(PLAN)
    r.set_champion(_v("a"), 0.0)
    r.start_canary(_v("c"), 0.0)
    # a full challenger window (4 requests) but 1 champion latency and 0 comparisons (< min_samples 2): hold
    ids_c, ids_a = [f"c{i}" for i in range(4)], ["a0", "a1"]
    reqs = [{"plan_id": p, "latency_ms": 5.0, "error": False, "stages": ["s"], "escalated": 0}
            for p in ["c"] * 4 + ["a"]]
    ev = r.sync("rep", {"epoch": r.epoch, "requests": reqs,
                        "answers": _answers("c", ids_c, "pos") + _answers("a", ids_a, "pos")}, now=1.0)
    assert ev == [] and r.challenger is not None
    out = r.feedback("pos", 2.0, request_id="a0")
    assert out["correct"] and out["variant"] == "champion" and out["model_version"] == "m:a"
    r.feedback("pos", 2.0, text="A1")  # found by text (case-insensitive)
    r.feedback("neg", 2.0, request_id="c0")
    out = r.feedback("neg", 2.0, request_id="c1")
    # champion 2/2 = 1.0, challenger 0/2 = 0.0: drop 1.0 > 0.1 fails outright (missing data no longer holds
    # it) -> rollback on this very label
    assert [e["event"] for e in out["events"]] == ["rollback"]
    assert "feedback accuracy 0.0000 is 1.0000 below the champion's 1.0000" in out["events"][0]["reason"]
    assert r.challenger is None and "c" in r.retired
    st = r.status(now=3.0)
    assert st["online"]["by_version"]["m:c"]["accuracy"] == 0.0 and st["online"]["champion"]["accuracy"] == 1.0
    assert st["counts"]["feedback"] == 4 and st["counts"]["feedback_correct"] == 2
    assert r.routing()["online"]["champion"]["val_accuracy"] == 0.9
    with pytest.raises(FeedbackError, match=r"label 'maybe' is not one of the endpoint's labels \['neg', 'pos'\]"):
        r.feedback("maybe", 4.0, request_id="a0")
    with pytest.raises(FeedbackError, match="request_id 'nope'") as e:
        r.feedback("pos", 4.0, request_id="nope")
    assert e.value.status == 404


def test_feedback_window_setting_resizes_keeping_recent_outcomes():
    r = Rollout(PLAN, feedback_window=10)
    for correct in [True, False, False]:
        r.online.record("m:a", correct)
    r.configure({"feedback_window": 2, "feedback_remember": 7})
    # window 2 keeps the last two outcomes F, F -> 0 / 2 = 0.0
    assert r.online.summary("m:a")["accuracy"] == 0.0 and r.online.window == 2 and r.answers.capacity == 7


def test_live_degradation_trigger():
    online = {"champion": {"model_version": "m:a", "accuracy": 0.80, "labelled": 50, "val_accuracy": 0.90}}
    d = live_degradation(online, tolerance=0.05, min_labels=30)
    # 0.90 - 0.80 = 0.10 > 0.05
    assert d["degraded"] and d["drop"] == pytest.approx(0.10) and "0.8000" in d["reason"]
    assert not live_degradation(online, tolerance=0.15)["degraded"]  # 0.10 <= 0.15
    few = live_degradation(online, min_labels=51)
    assert not few["degraded"] and few["reason"] == "50 feedback labels in the window; min_labels is 51"
    assert not live_degradation({"champion": None})["degraded"]
    with pytest.raises(ValueError, match="tolerance = 2"):
        live_degradation(online, tolerance=2)


def test_feedback_request_schema():
    assert FeedbackRequest.model_validate({"request_id": "r1", "index": 1, "label": "pos"}).index == 1
    for body, needle in [({"label": "pos"}, "got neither"), ({"request_id": "r", "text": "t", "label": "pos"},
                                                              "got both"),
                         ({"text": "t", "index": 0, "label": "pos"}, "'index' goes with 'request_id'"),
                         ({"request_id": "r"}, "label"), ({"request_id": "r", "label": "pos", "x": 1}, "extra"),
                         ({"request_id": "r", "label": "pos", "index": -1}, "greater than or equal to 0")]:
        with pytest.raises(ValidationError, match=needle):
            FeedbackRequest.model_validate(body)
