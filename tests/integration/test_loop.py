"""The main job end to end: tiny model, a real SST-2 slice plus a deliberately broken file, local Ray on 2 CPUs.

One subprocess runs ``python -m jobs.loop --keep-serving``; once it has written its summary the test
probes the live endpoint, then stops the job with SIGTERM and inspects what it left in the run store.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
BUDGET, QC = 40, 0.1


def _broken_file(path: Path) -> None:
    rows = list(csv.DictReader(open(ROOT / "data/sst2/alps_test.tsv"), delimiter="\t"))
    lines = [
        json.dumps({"sentence": rows[0]["sentence"], "label": rows[0]["label"]}),  # line 1: fine
        '{"sentence": "a truncated line with no closing brace", "label": "1"',      # line 2: broken JSON
        json.dumps({"sentence": "   ", "label": "1"}),                               # line 3: empty text
        json.dumps({"sentence": rows[1]["sentence"], "label": "7"}),                 # line 4: unknown label
        json.dumps({"sentence": rows[2]["sentence"], "label": rows[2]["label"]}),  # line 5: fine
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    _broken_file(tmp / "broken.jsonl")
    port = free_port()
    cfg = f"""
name: itest
task: classify
pool:
  sources:
    - {{path: {ROOT}/data/sst2/alps_dev_first3000.tsv, fields: {{text: sentence, label: label}}, label_role: gold,
        label_map: {{"0": negative, "1": positive}}, limit: 400}}
    - {{path: {tmp}/broken.jsonl, name: broken, fields: {{text: sentence, label: label}}, label_role: gold,
        label_map: {{"0": negative, "1": positive}}}}
  labels: [negative, positive]
model: {{name: tiny-bert, max_length: 32}}
selection: {{strategy: entropy, budget: {BUDGET}, rounds: 2, concurrency: 1}}
labeler: {{threshold: 0.5, qc_fraction: {QC}, overlap_fraction: 0.25, overlap_k: 2, consensus: weighted}}
trainer: {{epochs: 1, micro_batch_size: 8, checkpoint_every: 2}}
eval: {{max_items: 40, latency_samples: 10, gate: {{min_gain: -1.0, latency_tolerance: 1000, target: 0.0}}}}
serve: {{port: {port}}}
tracking: {{experiment: itest, registered_model: itest-model}}
ray: {{address: local, dashboard: false, num_cpus: 2}}
"""
    (tmp / "cfg.yaml").write_text(cfg)
    home = tmp / "home"
    env = {**os.environ, "FLYWHEEL_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    summary = tmp / "summary.json"
    log = open(tmp / "loop.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.loop", "--config", str(tmp / "cfg.yaml"),
                             "--summary-json", str(summary), "--keep-serving"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 900
    while not summary.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(2)
    if not summary.exists():
        proc.kill()
        pytest.fail(f"loop did not finish (rc={proc.poll()}):\n" + (tmp / "loop.log").read_text()[-6000:])
    time.sleep(0.5)
    yield {"proc": proc, "summary": json.loads(summary.read_text()), "home": home, "tmp": tmp}
    if proc.poll() is None:
        proc.kill()


def test_endpoint_answers_and_rejects_bad_input(loop_run):
    url = loop_run["summary"]["endpoint"]
    r = httpx.post(f"{url}/predict", json={"text": "a gorgeous, witty film"}, timeout=30)
    assert r.status_code == 200, r.text
    p = r.json()["predictions"][0]
    assert p["label"] in ("negative", "positive") and 0.5 <= p["confidence"] <= 1.0
    assert p["model_version"] == loop_run["summary"]["registered_version"]
    r = httpx.post(f"{url}/predict", json={"texts": ["good", "bad"]}, timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    bad = httpx.post(f"{url}/predict", content=b'{"text": "unterminated', headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "invalid JSON" in bad.json()["detail"]
    assert httpx.post(f"{url}/predict", json={"text": ""}).status_code == 422
    assert httpx.post(f"{url}/predict", json={"txt": "x"}).status_code == 422
    assert httpx.post(f"{url}/predict", json={"texts": ["x"] * 65}).status_code == 413
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_job_stops_cleanly(loop_run):
    proc = loop_run["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    out = (loop_run["tmp"] / "loop.log").read_text()
    assert "decision: deploy" in out and "accuracy:" in out


def _manifests(home: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((home / "pool" / "itest" / "snapshots").glob("v*/manifest.json"))]


def test_manifest_counts_and_versions(loop_run):
    s, home = loop_run["summary"], loop_run["home"]
    ms = _manifests(home)
    assert [m["version"] for m in ms] == [1, 2, 3]  # ingest, round-1 labels, round-2 labels
    assert [m["parent"] for m in ms] == [None, 1, 2]
    last = ms[-1]
    assert s["data_version"] == 3
    assert sum(last["counts"]["by_split"].values()) == last["counts"]["total"]
    assert last["counts"]["labelled"] == 2 * BUDGET
    # 400 SST-2 rows + 2 good rows of the broken file, minus duplicates the pool removed
    filters = {f["name"]: f["rows_removed"] for f in ms[0]["filters"]}
    assert filters.pop("quarantine") == 3
    assert last["counts"]["total"] == 402 - sum(filters.values())
    assert last["counts"]["by_source"]["broken"] == 2


def test_no_split_leak(loop_run):
    home = loop_run["home"]
    split_of: dict[str, str] = {}
    for p in sorted((home / "pool" / "itest" / "snapshots").glob("v*/data.parquet")):
        t = pq.read_table(p).to_pylist()
        for r in t:
            assert split_of.setdefault(r["item_id"], r["split"]) == r["split"], r["item_id"]
            if r["split"] != "train":
                assert r["label"] is None  # evaluation items are never labelled for training


def test_quarantine_keeps_rejected_rows_with_reasons(loop_run):
    home = loop_run["home"]
    files = list((home / "pool").rglob("quarantine/*.jsonl"))
    assert len(files) == 1
    rows = [json.loads(x) for x in files[0].read_text().splitlines()]
    by_row = {r["row"]: r for r in rows if r["source"] == "broken"}
    assert sorted(by_row) == [2, 3, 4]
    assert "json" in by_row[2]["reason"].lower()
    assert "empty" in by_row[3]["reason"].lower()
    assert "7" in by_row[4]["reason"]


def test_routing_and_qc_counts(loop_run):
    r1, r2 = loop_run["summary"]["rounds"]
    # round 1: no trained model yet → cold start; every item goes to the (simulated) oracle reviewers;
    # overlap 0.25 × 40 = 10 items get a second simulated annotator → 40 + 10 submissions
    assert (r1["auto"], r1["review"], r1["qc"], r1["overlap"], r1["oracle"]) == (0, BUDGET, 0, 10, BUDGET + 10)
    # round 2: two classes → max prob ≥ 0.5 = threshold for all 40; QC = round(0.1 × 40) = 4 of them,
    # and round(0.25 × 4) = 1 of those 4 reviewed items is overlapped → 4 + 1 submissions
    assert r2["auto"] + r2["qc"] == BUDGET and r2["review"] == 0
    assert r2["qc"] == math.floor(QC * BUDGET + 0.5) == 4
    assert r2["overlap"] == 1 and r2["oracle"] == r2["qc"] + 1 and r2["labels"] == BUDGET


def test_checkpoints_and_mlflow(loop_run):
    s, home = loop_run["summary"], loop_run["home"]
    for ck in s["checkpoints"]:
        # a verified checkpoint: sha256 manifest of its files, plus the exported model
        assert (Path(ck) / "manifest.json").exists() and (Path(ck) / "model" / "flywheel_model.json").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(s["mlflow_run_id"])
    m = run.data.metrics
    assert 0.0 <= m["eval.accuracy"] <= 1.0 and "baseline.accuracy" in m
    assert math.isfinite(m["round1/train/loss"]) and math.isfinite(m["round2/train/loss"])
    assert run.data.tags["flywheel.decision"] == "deploy"
    mv = client.get_model_version_by_alias("itest-model", "champion")
    assert mv.tags["flywheel.data_version"] == "3" and mv.tags["flywheel.run_id"] == s["mlflow_run_id"]


def test_selection_reports_per_round(loop_run):
    s, home = loop_run["summary"], loop_run["home"]
    run_dir = home / "runs" / s["mlflow_run_id"]
    r1 = json.loads((run_dir / "round1" / "selection" / "selection.json").read_text())
    r2 = json.loads((run_dir / "round2" / "selection" / "selection.json").read_text())
    assert len(r1["selected"]) == len(r2["selected"]) == BUDGET
    # round 2 scores with the round-1 model: entropy per item, the picked ones the most uncertain
    assert not (run_dir / "round1" / "selection" / "selection_map.png").exists()  # cold start: no embeddings
    assert (run_dir / "round2" / "selection" / "selection_map.png").stat().st_size > 5000
    import numpy as np

    ent = np.load(run_dir / "round2" / "selection" / r2["scores_file"])["entropy"]
    picked = np.array(r2["selected"])
    rest = np.setdiff1d(np.arange(r2["n"]), picked)
    assert ent[picked].min() >= ent[rest].max()  # entropy: the BUDGET most uncertain rows, nothing else
    assert r2["items"][0]["scores"]["entropy"] == pytest.approx(float(ent.max()))
    assert r2["items"][0]["reason"] and len(set(r2["ids"])) == BUDGET

