"""One endpoint changing under live load: `up --redeploy` (members and ingress), a rollback on agreement, a
rollback on feedback accuracy, and a step-by-step promotion, with zero dropped requests throughout.

Clients post continuously (bounded, 127.0.0.1) while the endpoint changes underneath them; every response
must be a 200. The tests share one endpoint (pico members as in serve_helpers, private 2-CPU Ray) and run in
file order: each starts from the champion the previous one left.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration.serve_helpers import (Load, register_flipped_challenger, running_endpoint, serve_apps,
                                             status_of, wait_for)

pytestmark = pytest.mark.integration
V1 = "cheap:1+big:1"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    with running_endpoint(tmp_path_factory.mktemp("serve_rollout"), "roll") as ep:
        yield ep


def _status():
    return status_of("roll")


def _ingress(url):
    return httpx.get(f"{url}/metadata", timeout=30).json()["ingress"]


def test_redeploy_under_concurrent_load_drops_nothing(endpoint):
    from jobs.serve_up import up

    before, ingress_before = _status()["champion"], _ingress(endpoint["url"])
    load = Load(endpoint["url"], clients=4).start()
    try:
        time.sleep(2.0)
        up(endpoint["cfg"], endpoint["store"], endpoint["uri"], redeploy=True, prog=lambda m: None)  # = `up --redeploy`
        time.sleep(2.0)  # keep posting after the old member apps and the old ingress replica are gone
    finally:
        outcomes = load.stop()
    assert outcomes[200] >= 40 and set(outcomes) == {200}, (outcomes, load.errors[:5])
    after, ingress_after = _status()["champion"], _ingress(endpoint["url"])
    assert after["model_version"] == before["model_version"] == V1  # same models ...
    assert set(after["apps"]).isdisjoint(before["apps"])  # ... on new member replicas
    assert not set(before["apps"]) & serve_apps()  # old member apps deleted after draining
    # the ingress was rolled too: a new generation on a new replica (the old one answered until it drained)
    assert ingress_after["generation"] != ingress_before["generation"]
    assert ingress_after["replica"] != ingress_before["replica"]
    # scaled back to http.ingress_replicas (the extra replica may still be draining for a moment)
    seen = []
    try:
        wait_for(lambda: seen.append(_status()["serve"]["roll"]["deployments"]["EnsembleIngress"]["replicas"])
                 or seen[-1] == {"RUNNING": 1}, timeout=30)
    except AssertionError:
        raise AssertionError(f"ingress replicas: {seen[-3:]}") from None


def test_bad_challenger_is_rolled_back_automatically(endpoint):
    from mlflow.tracking import MlflowClient

    from jobs.serve_up import up

    for member in ("cheap", "big"):  # every member answers the opposite label
        register_flipped_challenger(endpoint["uri"], endpoint["store"] / member, f"roll-{member}")
    load = Load(endpoint["url"], clients=4).start()
    try:
        champion_apps = set(_status()["champion"]["apps"])
        up(endpoint["cfg"], endpoint["store"], endpoint["uri"], prog=lambda m: None)
        assert set(_status()["champion"]["apps"]) == champion_apps  # a plain `up` after --redeploy rolls nothing
        ev = wait_for(lambda: [e for e in _status()["events"] if e["event"] == "rollback"], timeout=90)
        started = [e for e in _status()["events"] if e["event"] == "canary_started"][-1]
        assert started["model_version"] == "cheap:2+big:2" and started["percent"] == 50.0
        wait_for(lambda: not [a for a in serve_apps() if a not in _status()["champion"]["apps"] and a != "roll"],
                 timeout=60)  # challenger apps drained and deleted
    finally:
        outcomes = load.stop()
    assert set(outcomes) == {200}, (outcomes, load.errors[:5])
    assert "agreement" in ev[-1]["reason"] and ev[-1]["metrics"]["agreement"] < 0.9
    st = _status()
    assert st["challenger"] is None and st["traffic"]["challenger"] == 0.0
    assert st["champion"]["model_version"] == V1
    client = MlflowClient(endpoint["uri"])
    run = client.get_run(wait_for(lambda: _status()["mlflow_run_id"], timeout=30))
    wait_for(lambda: "agreement" in client.get_run(run.info.run_id).data.tags.get("rollout.rollback_reason", ""),
             timeout=30)
    assert str(client.get_model_version_by_alias("roll-cheap", "champion").version) == "1"  # champion untouched
    # the bad versions lose the challenger alias (the next `up` must not canary them again) and keep the reason
    wait_for(lambda: "agreement" in client.get_model_version("roll-big", "2").tags.get("flywheel.rollback_reason", ""),
             timeout=30)
    assert "challenger" not in client.get_registered_model("roll-big").aliases


def test_challenger_less_accurate_on_feedback_labels_is_rolled_back(endpoint):
    from mlflow.tracking import MlflowClient

    from app.serving.canary import CanaryPlan
    from jobs.serve_up import online, up

    url, cfg = endpoint["url"], endpoint["cfg"]
    texts = [f"probe {i}: {'a warm, funny and moving film' if i % 2 else 'a tedious, joyless mess'}"
             for i in range(12)]
    # The champion's own answers serve as the true labels: the flipped challenger contradicts them.
    truth = {t: httpx.post(f"{url}/predict", json={"text": t}, timeout=30).json()["predictions"][0]["label"]
             for t in texts}
    bad = "+".join(f"{m}:{register_flipped_challenger(endpoint['uri'], endpoint['store'] / m, f'roll-{m}')}"
                   for m in ("cheap", "big"))

    def rolled_back():
        return [e for e in _status()["events"] if e["event"] == "rollback" and e["model_version"] == bad]

    # Agreement cannot fail (min_agreement 0) nor latency (p99 ratio 100): when the first window is judged
    # (16 challenger requests, every answer labelled), the feedback-accuracy check is the one that decides.
    plan = CanaryPlan(steps=(50, 100), window_requests=16, min_samples=5, min_agreement=0.0, p99_ratio_max=100,
                      max_error_rate=0.2, max_accuracy_drop=0.1)
    up(cfg.model_copy(update={"canary": cfg.canary.model_copy(update={"plan": plan})}), endpoint["store"],
       endpoint["uri"], prog=lambda m: None)
    assert _status()["challenger"]["model_version"] == bad
    answered = []
    for i in range(120):  # bounded: about 32 requests at 50 % fill the window
        t = texts[i % len(texts)]
        p = httpx.post(f"{url}/predict", json={"text": t}, headers={"x-request-id": f"fb-{i}"},
                       timeout=30).json()["predictions"][0]
        fb = httpx.post(f"{url}/feedback", json={"request_id": f"fb-{i}", "label": truth[t]}, timeout=30)
        assert fb.status_code == 200, fb.text
        body = fb.json()
        assert body["model_version"] == p["model_version"] and body["predicted"] == p["label"]
        answered.append(body)
        if rolled_back():
            break
    ev = rolled_back()[-1]
    assert "feedback accuracy" in ev["reason"], ev
    assert ev["metrics"]["accuracy_drop"] > 0.1
    on = online("roll", tolerance=0.05, min_labels=5)
    chall, champ = on["by_version"][bad], on["by_version"][V1]
    assert chall["labelled"] >= 5 and champ["labelled"] >= 5
    assert champ["accuracy"] - chall["accuracy"] > 0.1 and champ["accuracy"] >= 0.9  # same texts, same answers
    assert on["champion"]["model_version"] == V1 and on["degradation"]["labelled"] == champ["labelled"]
    lines = [json.loads(x) for x in (endpoint["store"] / "serving" / "roll" / "feedback.jsonl").read_text()
             .splitlines()]
    assert len(lines) >= len(answered) - 1  # written by the actor's background thread
    # the rollback's registry side effects (run on the state actor's io thread) are done before the next test
    client = MlflowClient(endpoint["uri"])
    wait_for(lambda: "challenger" not in client.get_registered_model("roll-big").aliases, timeout=30)
    meta = httpx.get(f"{url}/metadata", timeout=30).json()
    wait_for(lambda: httpx.get(f"{url}/metadata", timeout=30).json()["challenger"] is None, timeout=10)
    assert meta["online"]["champion"]["model_version"] == V1


def test_good_challenger_is_promoted_step_by_step(endpoint):
    from mlflow.tracking import MlflowClient

    from jobs.serve_up import up

    client = MlflowClient(endpoint["uri"])
    new, big = [], None
    for member in ("cheap", "big"):  # register version 1's files again as a challenger: agreement 1.0
        name = f"roll-{member}"
        src = client.get_model_version(name, "1")
        v = client.create_model_version(name, src.source, run_id=src.run_id, tags={"flywheel.task": "classify"})
        client.set_registered_model_alias(name, "challenger", v.version)
        new.append(f"{member}:{v.version}")
        big = str(v.version)
    new = "+".join(new)
    load = Load(endpoint["url"], clients=4).start()
    try:
        up(endpoint["cfg"], endpoint["store"], endpoint["uri"], prog=lambda m: None)
        wait_for(lambda: _status()["champion"]["model_version"] == new, timeout=120)
    finally:
        outcomes = load.stop()
    assert set(outcomes) == {200}, (outcomes, load.errors[:5])
    kinds = [e["event"] for e in _status()["events"]]
    assert kinds[-3:] == ["canary_started", "canary_advanced", "promoted"]
    wait_for(lambda: str(client.get_model_version_by_alias("roll-big", "champion").version) == big, timeout=30)
    assert load.versions[new] > 0 and load.versions[V1] > 0
    wait_for(lambda: "challenger" not in client.get_registered_model("roll-big").aliases, timeout=30)
    # the old champion's member apps are deleted once drained; only the ingress and the new champion remain
    wait_for(lambda: serve_apps() == {"roll", *_status()["champion"]["apps"]}, timeout=60)
