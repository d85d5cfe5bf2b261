"""Canary rollout: plan validation, window statistics, the gate, next action and traffic split."""

import numpy as np
import pytest
from pydantic import ValidationError

from app.serving.canary import CanaryPlan, GateResult, WindowStats, evaluate_window, next_action, route_to_challenger

PLAN = CanaryPlan(steps=[10, 50, 100], window_requests=100, max_error_rate=0.02, p99_ratio_max=1.5,
                  min_agreement=0.9, min_accuracy=0.8, min_samples=10)


def window(n=100, errors=0, latency_ms=20.0, agree=1.0, accuracy=0.9, compared=50, labelled=50):
    """A WindowStats with n requests at a flat latency, `errors` failures and the given rates."""
    s = WindowStats()
    for i in range(n):
        s.record(latency_ms, error=i < errors)
    for i in range(compared):
        s.record_agreement(i < round(agree * compared))
    for i in range(labelled):
        s.record_feedback(i < round(accuracy * labelled))
    return s


def test_window_stats_hand_case():
    # Latencies 1..100 ms: numpy's linear percentile puts p50 at rank 49.5 -> 50.5 ms and
    # p99 at rank 0.99 * 99 = 98.01 -> 99 + 0.01 * (100 - 99) = 99.01 ms. 3 errors / 100 = 0.03.
    s = WindowStats()
    for ms in range(1, 101):
        s.record(ms, error=ms <= 3)
    s.record_agreement(True), s.record_agreement(False), s.record_feedback(True)
    d = s.to_dict()
    assert d["count"] == 100 and d["error_rate"] == 0.03
    assert d["p50_ms"] == pytest.approx(50.5) and d["p99_ms"] == pytest.approx(99.01)
    assert d["agreement"] == 0.5 and d["accuracy"] == 1.0
    empty = WindowStats().to_dict()
    assert empty["error_rate"] is None and empty["p99_ms"] is None
    with pytest.raises(ValueError, match="latency_ms = -1"):
        s.record(-1)


def test_high_error_rate_rolls_back_naming_error_rate():
    # 5 errors / 100 = 0.05 > max_error_rate 0.02.
    result = evaluate_window(PLAN, window(), window(errors=5))
    assert not result.passed and not result.insufficient
    assert len(result.reasons) == 1 and result.reasons[0].startswith("error_rate 0.0500 > max_error_rate 0.02")
    assert next_action(PLAN, 0, result) == "rollback"


def test_all_passing_windows_advance_to_done():
    step, actions, percents = 0, [], []
    while True:
        percents.append(PLAN.steps[step])
        result = evaluate_window(PLAN, window(latency_ms=20), window(latency_ms=25))
        assert result.passed and result.reasons == []
        assert result.metrics["p99_ratio"] == pytest.approx(1.25)  # 25 ms / 20 ms
        actions.append(next_action(PLAN, step, result))
        if actions[-1] != "advance":
            break
        step += 1
    assert percents == [10, 50, 100] and actions == ["advance", "advance", "done"]


def test_each_failing_check_is_named():
    slow = evaluate_window(PLAN, window(latency_ms=20), window(latency_ms=40))  # 40 / 20 = 2.0 > 1.5
    assert slow.reasons == ["p99 latency ratio 2.000 > p99_ratio_max 1.5 (challenger 40.0 ms, champion 20.0 ms)"]
    disagree = evaluate_window(PLAN, window(), window(agree=0.8))  # 40 / 50 = 0.8 < 0.9
    assert disagree.reasons == ["agreement 0.8000 < min_agreement 0.9"]
    wrong = evaluate_window(PLAN, window(), window(accuracy=0.7))  # 35 / 50 = 0.7 < 0.8
    # and 0.9 (champion 45 / 50) - 0.7 = 0.2 > the default max_accuracy_drop 0.05
    assert wrong.reasons == ["accuracy 0.7000 < min_accuracy 0.8", "feedback accuracy 0.7000 is 0.2000 below "
                             "the champion's 0.9000 > max_accuracy_drop 0.05"]
    both = evaluate_window(PLAN, window(), window(errors=3, agree=0.8))
    assert [r.split()[0] for r in both.reasons] == ["error_rate", "agreement"]
    assert all(next_action(PLAN, 1, r) == "rollback" for r in (slow, disagree, wrong, both))


def test_missing_data_holds_but_a_failure_still_rolls_back():
    short = evaluate_window(PLAN, window(), window(n=99))  # 99 < window_requests 100
    assert short.insufficient and "window_requests is 100" in short.reasons[0]
    assert next_action(PLAN, 0, short) == "hold"
    no_labels = evaluate_window(PLAN, window(), window(labelled=5))  # 5 < min_samples 10
    assert no_labels.insufficient and no_labels.reasons == ["challenger has 5 feedback labels; min_samples is 10"]
    assert next_action(PLAN, 2, no_labels) == "hold"
    no_champion = evaluate_window(PLAN, WindowStats(), window())
    assert no_champion.insufficient and "champion has 0 latencies" in no_champion.reasons[0]
    failed_and_missing = evaluate_window(PLAN, window(), window(errors=10, labelled=0))
    assert next_action(PLAN, 0, failed_and_missing) == "rollback"
    # Without min_accuracy, labels are not needed.
    plan = PLAN.model_copy(update={"min_accuracy": None})
    assert evaluate_window(plan, window(), window(labelled=0)).passed


def test_plan_validation_names_the_field():
    with pytest.raises(ValidationError, match=r"steps = \[50.0, 10.0, 100.0\]"):
        CanaryPlan(steps=[50, 10, 100])
    with pytest.raises(ValidationError, match="ending at 100"):
        CanaryPlan(steps=[10, 50])
    with pytest.raises(ValidationError, match="max_error_rate"):
        CanaryPlan(max_error_rate=1.5)
    with pytest.raises(ValidationError, match="window_size"):
        CanaryPlan(window_size=10)
    with pytest.raises(ValueError, match="current_step_index = 3; allowed 0..2"):
        next_action(PLAN, 3, GateResult(True, [], {}))


def test_traffic_split_matches_percent_and_is_sticky():
    ids = [f"req-{i}" for i in range(10_000)]
    at10 = np.array([route_to_challenger(r, 10) for r in ids])
    at50 = np.array([route_to_challenger(r, 50) for r in ids])
    assert abs(at10.mean() - 0.10) < 0.01 and abs(at50.mean() - 0.50) < 0.015
    assert [route_to_challenger(r, 10) for r in ids[:500]] == at10[:500].tolist()  # sticky
    assert np.all(at50[at10])  # nested: whoever had the challenger at 10 % keeps it at 50 %
    assert not any(route_to_challenger(r, 0) for r in ids[:200])
    assert all(route_to_challenger(r, 100) for r in ids[:200])
    other_salt = np.array([route_to_challenger(r, 10, salt="rollout-2") for r in ids])
    assert (other_salt != at10).any() and abs(other_salt.mean() - 0.10) < 0.01
    with pytest.raises(ValueError, match="percent = 101"):
        route_to_challenger("x", 101)
