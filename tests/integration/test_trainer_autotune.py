"""One short real autotuning run: tiny-llama SFT trials in this process, the tuned config written and loadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data" / "alpaca_libre" / "alpaca_libre_tasks_v1.jsonl"


def test_autotune_writes_the_fastest_measured_setting(tmp_path, monkeypatch):
    from app.config import load_config
    from jobs.autotune import main

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "store"))
    cfg = {"name": "tune-me", "task": "sft",
           "pool": {"sources": [{"path": str(DATA), "fields": {"prompt": "instruction", "response": "output"}}]},
           "model": {"name": "tiny-llama", "max_length": 32},
           "trainer": {"num_workers": 2, "engine": "torch", "zero_stage": 0, "micro_batch_size": 1, "grad_accum": 4,
                       "cpus_per_worker": 1}}
    src = tmp_path / "run.yaml"
    src.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(src), "--rows", "16", "--steps", "1", "--loader-workers", "0,1"]) == 0

    out = tmp_path / "run.tuned.yaml"
    report = json.loads((tmp_path / "run.tuned.trials.json").read_text())
    # global batch 1 × 4 × 2 workers = 8, kept: 4 rows per worker per step, micro-batches 1, 2, 4
    assert report["global_batch"] == 8 and report["world"] == 2
    trials = report["trials"]
    assert {(r["micro_batch"], r["grad_accum"]) for r in trials} <= {(1, 4), (2, 2), (4, 1)}
    assert all(r["micro_batch"] * r["grad_accum"] == 4 for r in trials)
    measured = [r for r in trials if r["tokens_per_s"] is not None]
    fastest = max(measured, key=lambda r: r["tokens_per_s"])
    assert report["best"] == {k: fastest[k] for k in ("micro_batch", "grad_accum", "loader_workers")}
    assert any(r["loader_workers"] == 1 for r in trials)  # the worker count was tried at the best micro-batch
    tuned = load_config(out)  # the next run reads it as a normal loop config
    t = tuned.trainer
    assert (t.micro_batch_size, t.grad_accum, t.loader_workers, t.global_batch_size) == \
        (fastest["micro_batch"], fastest["grad_accum"], fastest["loader_workers"], 8)
    assert tuned.model.name == "tiny-llama" and t.num_workers == 2  # everything else unchanged
    assert out.read_text().startswith("# Tuned by jobs.autotune")
