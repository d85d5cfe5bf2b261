"""Routing state of an ensemble endpoint (app.serving.rollout): canary steps, rollback, drain before delete."""

from app.serving.canary import CanaryPlan
from app.serving.rollout import Rollout

PLAN = CanaryPlan(steps=(10, 50, 100), window_requests=4, min_samples=2, min_agreement=0.9, p99_ratio_max=2.0)


def _v(pid):
    return {"plan_id": pid, "model_version": f"m:{pid}", "plan": {}, "apps": [f"app-{pid}"]}


def _reqs(pid, n, ms=10.0, error=False):
    return [{"plan_id": pid, "latency_ms": ms, "error": error, "stages": ["cheap"], "escalated": 0}] * n


def _shadow(ch, champ, agreed, compared, ms=10.0):
    return {"plan_id": ch, "champion_plan_id": champ, "agreed": agreed, "compared": compared,
            "champion_latency_ms": ms}


def test_new_champion_retires_the_old_one_and_bumps_the_epoch():
    r = Rollout(PLAN)
    assert r.set_champion(_v("a"), now=0.0) and r.epoch == 1
    assert not r.set_champion(_v("a"), now=1.0) and r.epoch == 1  # same plan: no change
    assert r.set_champion(_v("b"), now=2.0) and r.epoch == 2
    assert r.routing()["champion"]["plan_id"] == "b"
    assert r.retired == {"a": {"apps": ["app-a"], "epoch": 2, "since": 2.0, "model_version": "m:a"}}


def test_retired_apps_are_deleted_only_after_every_live_replica_drained():
    r = Rollout(PLAN, grace_s=1.0, stale_s=5.0)
    r.set_champion(_v("a"), 0.0)
    r.sync("rep1", {"epoch": 1, "inflight": {"a": 1}}, now=0.5)
    r.set_champion(_v("b"), 1.0)  # retires a at epoch 2
    assert r.collectable(now=1.5) == []  # rep1 still at epoch 1 (and the grace period runs)
    r.sync("rep1", {"epoch": 2, "inflight": {"a": 1}}, now=2.5)
    assert r.collectable(now=2.6) == []  # acknowledged, but one request still in flight on a
    r.sync("rep1", {"epoch": 2, "inflight": {"a": 0, "b": 3}}, now=2.7)
    assert r.collectable(now=2.8) == [("a", ["app-a"])]
    r.forget("a")
    assert r.retired == {}


def test_a_replica_that_stopped_syncing_does_not_block_deletion_forever():
    r = Rollout(PLAN, grace_s=0.0, stale_s=5.0)
    r.set_champion(_v("a"), 0.0)
    r.sync("gone", {"epoch": 1, "inflight": {"a": 2}}, now=0.0)
    r.set_champion(_v("b"), 1.0)
    assert r.collectable(now=4.0) == []  # last seen 4 s ago <= stale_s
    assert r.collectable(now=5.5) == [("a", ["app-a"])]  # 5.5 s > stale_s: no longer a live replica


def test_canary_advances_through_steps_then_promotes():
    r = Rollout(PLAN)
    r.set_champion(_v("a"), 0.0)
    r.start_canary(_v("c"), 0.0)
    assert r.percent == 10.0
    for step, want in [(0, 50.0), (1, 100.0)]:
        ev = r.sync("rep", {"epoch": r.epoch, "requests": _reqs("c", 4) + _reqs("a", 4),
                            "shadows": [_shadow("c", "a", 2, 2)]}, now=1.0 + step)
        assert [e["event"] for e in ev] == ["canary_advanced"] and r.percent == want
    ev = r.sync("rep", {"epoch": r.epoch, "requests": _reqs("c", 4), "shadows": [_shadow("c", "a", 2, 2)] * 2},
                now=5.0)
    assert [e["event"] for e in ev] == ["promoted"]
    assert r.champion["plan_id"] == "c" and r.challenger is None and r.percent == 0.0
    assert list(r.retired) == ["a"]


def test_disagreeing_challenger_is_rolled_back_with_reason_and_metrics():
    r = Rollout(PLAN)
    r.set_champion(_v("a"), 0.0)
    r.start_canary(_v("bad"), 0.0)
    # 4 challenger requests (a full window), 3 champion latencies and 3 comparisons, 0 agreeing:
    # agreement = 0 / 3 = 0.0 < min_agreement 0.9 -> rollback
    ev = r.sync("rep", {"epoch": r.epoch, "requests": _reqs("bad", 4) + _reqs("a", 3),
                        "shadows": [_shadow("bad", "a", 0, 3)]}, now=1.0)
    assert [e["event"] for e in ev] == ["rollback"]
    assert "agreement 0.0000 < min_agreement 0.9" in ev[0]["reason"]
    assert ev[0]["metrics"]["agreement"] == 0.0 and ev[0]["metrics"]["challenger_count"] == 4
    assert r.challenger is None and r.percent == 0.0 and "bad" in r.retired
    assert r.routing()["champion"]["plan_id"] == "a"


def test_window_holds_until_enough_comparisons_and_ignores_stale_plans():
    r = Rollout(PLAN)
    r.set_champion(_v("a"), 0.0)
    r.start_canary(_v("c"), 0.0)
    ev = r.sync("rep", {"epoch": r.epoch, "requests": _reqs("c", 4) + _reqs("a", 4) + _reqs("old", 9),
                        "shadows": [_shadow("c", "a", 1, 1)]}, now=1.0)
    assert ev == [] and r.percent == 10.0  # 1 comparison < min_samples 2: hold
    assert r.counts["requests:retired"] == 9 and r.windows["challenger"].count == 4
    st = r.status(now=1.0)
    assert st["traffic"] == {"champion": 90.0, "challenger": 10.0, "step": 0, "steps": [10.0, 50.0, 100.0]}
    assert st["stage_counts"] == {"cheap": 17} and st["escalation_rate"] == 0.0


def test_stop_canary_and_configure():
    r = Rollout(PLAN)
    r.set_champion(_v("a"), 0.0)
    assert not r.stop_canary("none", 0.0)
    r.start_canary(_v("c"), 0.0)
    e0 = r.epoch
    assert r.stop_canary("operator", 1.0) and r.epoch == e0 + 1 and "c" in r.retired
    r.configure({"max_batch": 8})
    r.configure({"max_batch": 8})  # unchanged settings keep the epoch
    assert r.epoch == e0 + 2 and r.routing()["settings"] == {"max_batch": 8}
