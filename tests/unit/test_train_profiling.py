"""Profiler summary: communication share by op name, and the runner's profile_dir option."""

import json

import pytest

from app.train.profiling import StepProfiler, comm_share


def test_comm_share_hand_case():
    ev = [("aten::mm", 600.0), ("gloo:all_reduce", 300.0), ("c10d::broadcast_", 50.0), ("aten::add_", 50.0),
          ("record_param_comms", 0.0)]
    # comm = 300 + 50 = 350 µs of 1000 µs total -> 0.35
    assert comm_share(ev) == (350.0, 1000.0, pytest.approx(0.35))
    assert comm_share([]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"profile_steps=\(3, 2\)"):
        StepProfiler("/tmp/x", 0, 3, 2)


def test_runner_writes_trace_and_summary(tmp_path):
    from app.config import TrainerConfig
    from app.models.backbones import resolve
    from app.train.runner import Hooks, run
    from app.train.spec import TrainSpec

    model = str(resolve("tiny-llama", tmp_path / "models"))
    t = TrainerConfig(num_workers=1, micro_batch_size=2, max_steps=3, checkpoint_every=100, export=False).model_dump()
    t.update(engine="torch", profile_dir=str(tmp_path / "prof"), profile_steps=[2, 3])
    said = []
    spec = TrainSpec(task="sft", start_model=model, start_is_flywheel=False, base_name="tiny",
                     inputs=["say hi", "count", "colour", "cat"], targets=["hi", "1 2", "red", "c a t"],
                     max_length=16, trainer=t)
    out = run(spec, Hooks(say=said.append))
    summary = json.loads((tmp_path / "prof" / "summary_rank0.json").read_text())
    assert summary["steps"] == [2, 3] and summary["total_self_cpu_ms"] > 0
    assert summary["comm_share"] == 0.0  # one process: no collective ran
    trace = json.loads((tmp_path / "prof" / "trace_rank0.json").read_text())
    assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
    assert "comm_share" in out["history"][2] and "comm_share" not in out["history"][1]
    assert any("0.0% of CPU time in communication" in s for s in said)
