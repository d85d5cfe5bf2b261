"""Controller control file, trigger measurement from its records, and the flywheel config loader."""

import math

import pytest

from app.config import ConfigError
from app.controller.config import ControllerConfig, load_flywheel_config
from app.controller.control import ControlState, ControlStore, measure_triggers, source_signature
from app.controller.triggers import TriggerConfig

CFG = TriggerConfig(min_new_items=100, max_wait_hours=2.0, degradation_threshold=None, policy="seed")


def test_fresh_flywheel_fires_on_volume_and_infinite_wait():
    d = measure_triggers(CFG, ControlState(), pool_total=150, now=1000.0)
    # never trained: hours = inf >= 2; new = 150 - 0 = 150 >= 100 → seed clause (volume and time)
    assert d.fire and d.values["new_items"] == 150 and math.isinf(d.values["hours_since_train"])
    assert d.reasons == ["volume: 150 new items >= 100", "time: inf h since last training >= 2 h"]


def test_after_training_counts_only_new_rows_and_hours():
    c = ControlState(last_train_at=0.0, items_at_last_train=400)
    # 3 h later: 3 >= 2 but only 450 - 400 = 50 < 100 new rows → no fire under 'seed'
    d = measure_triggers(CFG, c, pool_total=450, now=3 * 3600.0)
    assert not d.fire and d.values["new_items"] == 50 and d.values["hours_since_train"] == 3.0
    # 120 new rows after 1 h: volume yes, time no (1 < 2) → still no fire; 'any' fires
    d = measure_triggers(CFG, c, pool_total=520, now=3600.0)
    assert not d.fire and d.values["conditions"] == {"critical": False, "degraded": None, "volume": True, "time": False}
    assert measure_triggers(CFG.model_copy(update={"policy": "any"}), c, 520, 3600.0).fire
    # the critical flag fires alone
    d = measure_triggers(CFG, c.model_copy(update={"critical": True}), pool_total=400, now=0.0)
    assert d.fire and d.reasons == ["critical: a critical failure was flagged"]
    with pytest.raises(ValueError, match="pool_total"):
        measure_triggers(CFG, c, pool_total=-1, now=0.0)


def test_control_store_round_trip_and_update(tmp_path):
    s = ControlStore(tmp_path / "c.json")
    assert s.load() == ControlState()  # no file yet: stopped, no flag
    s.update(mode="running", critical=True, critical_reason="bad outputs on refunds")
    assert ControlStore(tmp_path / "c.json").load().critical_reason == "bad outputs on refunds"
    with pytest.raises(ValueError):
        s.update(mode="sleeping")
    assert s.load().mode == "running"  # a refused update leaves the file as it was
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ValueError, match="control file"):
        s.load()


def test_source_signature_changes_when_data_arrives(tmp_path):
    f = tmp_path / "a.jsonl"
    missing = source_signature([str(f)])
    assert missing.endswith(":missing")
    f.write_text('{"text": "a"}\n')
    one = source_signature([str(f)])
    with f.open("a") as h:
        h.write('{"text": "b"}\n')
    assert len({missing, one, source_signature([str(f)])}) == 3


def test_flywheel_config_splits_controller_section(tmp_path):
    p = tmp_path / "f.yaml"
    p.write_text("task: classify\npool: {sources: [{path: x.tsv}]}\n"
                 "controller: {poll_seconds: 2, triggers: {min_new_items: 10, policy: any}}\n")
    loop, ctl = load_flywheel_config(p, ["controller.max_iterations=1"])
    assert loop.task == "classify" and ctl.poll_seconds == 2 and ctl.triggers.min_new_items == 10
    assert ctl.max_iterations == 1 and ctl.triggers.policy == "any"
    assert load_flywheel_config(p)[1].actor_name == ControllerConfig().actor_name == "Controller"
    p.write_text("task: classify\npool: {sources: [{path: x.tsv}]}\ncontroller: {poll_seconds: 0, triggers: {policy: most}}\n")
    with pytest.raises(ConfigError) as e:
        load_flywheel_config(p, ["trainer.zero_stage=9"])
    msg = str(e.value)
    assert "controller.poll_seconds" in msg and "controller.triggers.policy" in msg and "trainer.zero_stage" in msg


def test_concurrent_updates_are_not_lost(tmp_path):
    import threading

    s = ControlStore(tmp_path / "c.json")
    s.update(mode="running")
    # two writers touching different fields 50 times each: both fields end at their last value
    def a():
        for i in range(50):
            s.update(items_at_last_train=i)

    def b():
        for i in range(50):
            s.update(critical=i % 2 == 0, critical_reason=f"r{i}")

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    final = s.load()
    assert (final.items_at_last_train, final.critical, final.critical_reason, final.mode) == (49, False, "r49", "running")
