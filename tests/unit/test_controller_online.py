"""Live-degradation trigger: the endpoint's online accuracy into the controller's trigger measurement."""

import pytest

from app.controller.control import ControlState, measure_triggers
from app.controller.online import online_trigger_inputs
from app.controller.settings import ControllerConfig, OnlineSignalConfig
from app.controller.triggers import TriggerConfig
from app.serving.feedback import live_degradation

# volume and time cannot fire here (trained 1 h ago on all 100 rows): only 'degraded' can
TRIG = TriggerConfig(min_new_items=100, max_wait_hours=24.0, degradation_threshold=None, policy="seed")
CTRL = ControlState(last_train_at=0.0, items_at_last_train=100)


def _online(acc, val, n):
    return {"champion": {"model_version": "3", "accuracy": acc, "val_accuracy": val, "labelled": n}}


def test_relative_mode_degraded_online_accuracy_fires_with_reason_and_values():
    oc = OnlineSignalConfig(endpoint="sst2", tolerance=0.05, min_labels=30)
    metric, thr, detail = online_trigger_inputs(_online(0.80, 0.90, 40), oc, None)
    # threshold = val − tolerance = 0.90 − 0.05 = 0.85; 0.80 < 0.85 → degraded
    assert metric == 0.80 and thr == pytest.approx(0.85) and detail["labelled"] == 40
    d = measure_triggers(TRIG, CTRL, pool_total=100, now=3600.0, online_metric=metric, online_threshold=thr)
    assert d.fire and d.reasons == ["degraded: online metric 0.8 < threshold 0.85"]
    assert d.values["online_metric"] == 0.80 and d.values["degradation_threshold"] == pytest.approx(0.85)
    assert d.values["conditions"] == {"critical": False, "degraded": True, "volume": False, "time": False}
    # same verdict as serving's own rule: drop 0.10 > 0.05
    assert live_degradation(_online(0.80, 0.90, 40), 0.05, 30)["degraded"]


def test_small_drop_or_too_few_labels_does_not_fire():
    oc = OnlineSignalConfig(endpoint="sst2", tolerance=0.05, min_labels=30)
    # 0.87 >= 0.85 → not degraded (serving agrees: drop 0.03 <= 0.05)
    m, t, _ = online_trigger_inputs(_online(0.87, 0.90, 40), oc, None)
    assert not measure_triggers(TRIG, CTRL, 100, 3600.0, m, t).fire
    assert not live_degradation(_online(0.87, 0.90, 40), 0.05, 30)["degraded"]
    # 29 labels < min_labels 30 → no metric, condition False (not None: the endpoint is configured)
    m, t, _ = online_trigger_inputs(_online(0.10, 0.90, 29), oc, None)
    d = measure_triggers(TRIG, CTRL, 100, 3600.0, m, t)
    assert m is None and not d.fire and d.values["conditions"]["degraded"] is False


def test_absolute_mode_uses_trigger_threshold_and_none_block_gives_no_signal():
    oc = OnlineSignalConfig(endpoint="sst2", threshold="absolute", min_labels=10)
    m, t, _ = online_trigger_inputs(_online(0.84, 0.99, 10), oc, 0.85)
    # 0.84 < 0.85 (the fixed floor; val accuracy plays no part)
    assert (m, t) == (0.84, 0.85) and measure_triggers(TRIG, CTRL, 100, 3600.0, m, t).fire
    # no endpoint answered: no metric; with the trigger threshold None the condition stays disabled
    m, t, detail = online_trigger_inputs(None, oc, None)
    d = measure_triggers(TRIG, CTRL, 100, 3600.0, m, t)
    assert m is None and t is None and d.values["conditions"]["degraded"] is None and not d.fire


def test_bad_online_block_names_the_field():
    oc = OnlineSignalConfig(endpoint="x")
    with pytest.raises(ValueError, match="online.champion.accuracy"):
        online_trigger_inputs(_online(float("nan"), 0.9, 40), oc, None)
    with pytest.raises(ValueError, match="labelled"):
        online_trigger_inputs(_online(0.8, 0.9, -1), oc, None)


def test_config_defaults_and_yaml_section():
    c = ControllerConfig.model_validate({"online": {"endpoint": "sst2"}, "feedback": {"k": 3}})
    assert c.online.endpoint == "sst2" and c.online.threshold == "relative" and c.feedback.k == 3
    assert ControllerConfig().online.endpoint is None  # default: no online signal
    with pytest.raises(ValueError):
        ControllerConfig.model_validate({"online": {"tolerance": 2}})
