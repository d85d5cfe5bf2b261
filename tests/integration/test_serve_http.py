"""Ensemble endpoint over HTTP on a private 2-CPU Ray: /predict, /feedback, bad input, auth, metadata, status,
traffic.

One `up` builds two pico members from SST-2 rows, registers them in MLflow, fits a cascade and deploys
ingress + members with fractional CPUs; every test then talks to http://127.0.0.1:<free port>.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.integration.serve_helpers import ROOT, running_endpoint

pytestmark = pytest.mark.integration
TOKEN = "s3cret-test-token"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    os.environ["FLYWHEEL_TEST_SERVE_TOKEN"] = TOKEN  # read by `up` (http.auth_token_env in serve_helpers)
    try:
        with running_endpoint(tmp_path_factory.mktemp("serve_http"), "http", extra="") as ep:
            yield {**ep, "auth": {"Authorization": f"Bearer {TOKEN}"}}
    finally:
        os.environ.pop("FLYWHEEL_TEST_SERVE_TOKEN", None)


def test_predict_single_and_batch(endpoint):
    url, auth = endpoint["url"], endpoint["auth"]
    version = endpoint["status"]["champion"]["model_version"]
    assert version == "cheap:1+big:1"  # both members were built and registered as version 1
    r = httpx.post(f"{url}/predict", json={"text": "a gorgeous, witty film"}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["label"] in ("negative", "positive") and 0.5 <= p["confidence"] <= 1.0  # K = 2
    assert p["stage"] in ("cheap", "big", "ensemble") and p["model_version"] == version
    r = httpx.post(f"{url}/predict", json={"texts": ["dull", "moving and funny", "fine"]}, headers=auth, timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


@pytest.mark.parametrize("body,status,needle", [
    (b'{"text": "unterminated', 400, "invalid JSON"),
    (b'[1, 2]', 422, "valid dictionary"),  # valid JSON, not an object
    (b'{}', 422, "give exactly one of 'text' or 'texts'; got neither"),
    (b'{"text": "a", "texts": ["b"]}', 422, "got both"),
    (b'{"text": "   "}', 422, "text is empty"),
    (b'{"texts": []}', 422, "texts is an empty list"),
    (b'{"text": 5}', 422, "string"),
    (b'{"texts": ["ok", 3]}', 422, "string"),
    (b'{"texts": ["ok", ""]}', 422, "texts[1] is empty"),
    (b'{"text": "a", "extra": 1}', 422, "extra"),
    (b'{"text": "' + b"x" * 201 + b'"}', 413, "max_chars is 200"),
    (json.dumps({"texts": ["a"] * 9}).encode(), 413, "max_batch is 8"),
    (b'{"text": "' + b"x" * 20000 + b'"}', 413, "exceeds"),  # raw body over the cap: rejected before parsing
])
def test_every_bad_input_is_a_4xx_with_a_message(endpoint, body, status, needle):
    r = httpx.post(f"{endpoint['url']}/predict", content=body, timeout=30,
                   headers={**endpoint["auth"], "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.text


def test_bearer_token_protects_everything_but_healthz(endpoint):
    url, auth = endpoint["url"], endpoint["auth"]
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    for method, path in [("post", "/predict"), ("post", "/feedback"), ("get", "/metadata"), ("get", "/docs"),
                         ("get", "/openapi.json")]:
        assert getattr(httpx, method)(f"{url}{path}").status_code == 401, path
        assert getattr(httpx, method)(f"{url}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/docs", headers=auth).status_code == 200
    spec = httpx.get(f"{url}/openapi.json", headers=auth).json()
    assert {"/predict", "/feedback", "/healthz", "/metadata"} <= set(spec["paths"])


def test_metadata_reports_policy_members_and_calibration(endpoint):
    meta = httpx.get(f"{endpoint['url']}/metadata", headers=endpoint["auth"]).json()
    champ = meta["champion"]
    assert champ["policy"]["policy"] == "cascade" and len(champ["policy"]["thresholds"]) == 2
    assert champ["policy"]["order"] == [0, 1]  # costs 1.0 (cheap) < 5.0 (big)
    assert [m["name"] for m in champ["members"]] == ["cheap", "big"]
    for m in champ["members"]:
        assert m["temperature"] > 0 and 0 <= m["ece_after"] <= 1 and 0 <= m["ece_before"] <= 1
    assert meta["challenger"] is None and meta["traffic"]["challenger_percent"] == 0.0


def test_status_cli_prints_json_with_counts(endpoint):
    import ray

    httpx.post(f"{endpoint['url']}/predict", json={"texts": ["one", "two"]}, headers=endpoint["auth"], timeout=30)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    out = subprocess.run([sys.executable, "-m", "jobs.serve", "status", "--name", "http"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    st = json.loads(out.stdout)["http"]
    assert st["champion"]["model_version"] == "cheap:1+big:1"
    assert st["counts"]["items"] >= 2 and sum(st["stage_counts"].values()) == st["counts"]["items"]
    assert all(a["status"].endswith("RUNNING") for a in st["serve"].values())
    assert st["traffic"] == {"champion": 100.0, "challenger": 0.0, "step": None, "steps": [10.0, 50.0, 100.0]}


def test_sampled_traffic_lands_in_the_pool_with_serving_metadata(endpoint):
    import ray

    from actors.serve_state import state_actor_name
    from app.pool import DataPool, PoolConfig

    text = "an unforgettable, quietly devastating debut"
    r = httpx.post(f"{endpoint['url']}/predict", json={"text": text}, headers=endpoint["auth"], timeout=30)
    httpx.post(f"{endpoint['url']}/predict", json={"text": "opted out text", "opt_out": True},
               headers=endpoint["auth"], timeout=30)
    actor = ray.get_actor(state_actor_name("http"), namespace="flywheel")
    import time

    time.sleep(1.0)  # two ingress syncs (every 0.25 s) carry the samples to the rollout actor
    assert ray.get(actor.flush.remote()) >= 1
    pool_root = endpoint["store"] / "pool" / "http-loop"
    table = DataPool.open(PoolConfig(task="classify", root=str(pool_root), sources=[
        {"path": str(ROOT / "data/sst2/alps_test.tsv")}])).read()
    rows = {r["text"]: r for r in table.to_pylist()}
    assert "opted out text" not in rows
    row, pred = rows[text], r.json()["predictions"][0]
    assert row["source"] in ("serve", "serve-hard") and row["label"] is None  # unlabelled
    assert row["serve_confidence"] == pytest.approx(pred["confidence"])
    assert row["serve_stage"] == pred["stage"] and row["serve_model_version"] == pred["model_version"]
    assert row["hard_candidate"] == (pred["confidence"] < 0.7) == (row["source"] == "serve-hard")  # hard_below 0.7
    assert not (endpoint["store"] / "serving" / "http" / "traffic.jsonl").exists()  # the pool replaces the sidecar


def test_feedback_by_request_id_index_and_text_gives_online_accuracy(endpoint):
    url, auth = endpoint["url"], endpoint["auth"]
    one = httpx.post(f"{url}/predict", json={"text": "a luminous, generous film"}, timeout=30,
                     headers={**auth, "x-request-id": "fb-one"})
    batch = httpx.post(f"{url}/predict", json={"texts": ["flat and lifeless", "sharp, funny, humane"]}, timeout=30,
                       headers={**auth, "x-request-id": "fb-batch"})
    assert one.headers["x-request-id"] == "fb-one"
    p1, p2 = one.json()["predictions"][0], batch.json()["predictions"][1]
    flip = {"negative": "positive", "positive": "negative"}
    r = httpx.post(f"{url}/feedback", json={"request_id": "fb-one", "label": p1["label"]}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"request_id": "fb-one", "index": 0, "model_version": p1["model_version"],
                        "variant": "champion", "predicted": p1["label"], "label": p1["label"], "correct": True}
    r = httpx.post(f"{url}/feedback", json={"request_id": "fb-batch", "index": 1, "label": flip[p2["label"]]},
                   headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["correct"] is False and r.json()["predicted"] == p2["label"]
    r = httpx.post(f"{url}/feedback", json={"text": "A LUMINOUS,  generous film", "label": p1["label"]},
                   headers=auth, timeout=30)  # found by text: case and spacing do not matter
    assert r.status_code == 200 and r.json()["request_id"] == "fb-one"
    import time

    time.sleep(0.6)  # the ingress refreshes its routing (with the online block) every 0.25 s
    online = httpx.get(f"{url}/metadata", headers=auth, timeout=30).json()["online"]
    champ = online["champion"]
    # 3 labels: correct, wrong, correct -> 2 / 3
    assert champ["labelled"] == 3 and champ["accuracy"] == pytest.approx(2 / 3) and champ["window"] == 500
    assert 0 <= champ["val_accuracy"] <= 1
    side = endpoint["store"] / "serving" / "http" / "feedback.jsonl"
    from tests.integration.serve_helpers import wait_for

    lines = wait_for(lambda: side.exists() and [json.loads(x) for x in side.read_text().splitlines()], timeout=10)
    assert [x["correct"] for x in lines[-3:]] == [True, False, True]
    # without x-request-id, Serve's proxy makes one up and returns it (once): feedback takes that id too
    anon = httpx.post(f"{url}/predict", json={"text": "no id given"}, headers=auth, timeout=30)
    rid = anon.headers["x-request-id"]
    assert rid and "," not in rid
    r = httpx.post(f"{url}/feedback", json={"request_id": rid, "label": "positive"}, headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["request_id"] == rid


@pytest.mark.parametrize("body,status,needle", [
    (b'{"request_id": "fb-x", "label": "neutral"}', 422, "is not one of the endpoint's labels"),
    (b'{"request_id": "never-seen", "label": "positive"}', 404, "no answered request with request_id"),
    (b'{"text": "a text nobody sent", "label": "positive"}', 404, "no answered request with this text"),
    (b'{"request_id": "fb-x", "index": 5, "label": "positive"}', 422, "index = 5"),
    (b'{"label": "positive"}', 422, "got neither"),
    (b'{"request_id": "fb-x"}', 422, "label"),
    (b'{"request_id": "fb-x", "label": "positive"', 400, "invalid JSON"),
])
def test_bad_feedback_is_a_4xx_with_a_message(endpoint, body, status, needle):
    url, auth = endpoint["url"], endpoint["auth"]
    httpx.post(f"{url}/predict", json={"text": "anything"}, headers={**auth, "x-request-id": "fb-x"}, timeout=30)
    r = httpx.post(f"{url}/feedback", content=body, timeout=30, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.text
    assert httpx.post(f"{url}/feedback", content=body, timeout=30).status_code == 401  # auth first
