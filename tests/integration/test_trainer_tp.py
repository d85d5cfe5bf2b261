"""Tensor parallelism through DeepSpeed AutoTP (``tensor_parallel.autotp_size: 2``) on CPU: 2 gloo processes
(torch.distributed, no Ray) train tiny-llama SFT with every Linear sharded over the 2 ranks.

Both ranks of the tensor-parallel group read the same micro-batches (one data-parallel replica), so with the
global batch at 4 (micro 2 × accum 2) each step must reproduce a plain one-process run's loss; the exported
model gathers the shards back into full weights equal to the reference's, and a resume from the step-2
checkpoint must replay steps 3-4.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.ports import free_port

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "data" / "alpaca_libre" / "alpaca_libre_tasks_v1.jsonl"


def _spec(model: str, root: Path, workers: int, **opts):
    from app.config import TrainerConfig
    from app.train.spec import TrainSpec

    t = TrainerConfig(**{"num_workers": workers, "zero_stage": 1, "micro_batch_size": 2, "max_steps": 4,
                         "checkpoint_every": 2, "warmup_ratio": 0.0, "lr": 1e-2, "global_batch_size": 4,
                         **opts}).model_dump()
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:8]]
    return TrainSpec(task="sft", start_model=model, start_is_flywheel=False, base_name="tiny-llama",
                     inputs=[r["instruction"] for r in rows], targets=[r["output"] for r in rows], max_length=24,
                     trainer=t, ckpt_root=str(root))


def _worker(rank: int, world: int, port: int, spec_json: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from app.train.runner import local_hooks, run
    from app.train.spec import TrainSpec

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    spec = TrainSpec.model_validate_json(spec_json)
    res = run(spec, local_hooks(spec.ckpt_root, keep_last=5, rank=rank, world_size=world))
    if rank == 0:
        Path(out).write_text(json.dumps({k: res[k] for k in ("history", "events")}))
    dist.destroy_process_group()


def _run2(spec, out: Path) -> dict:
    import torch.multiprocessing as mp

    port = free_port()
    mp.start_processes(_worker, args=(2, port, spec.model_dump_json(), str(out)), nprocs=2, join=True,
                       start_method="spawn")
    return json.loads(out.read_text())


def test_autotp_two_ranks_match_one_process_and_resume(tmp_path):
    from transformers import AutoModelForCausalLM

    from app.models.backbones import resolve
    from app.train import run_checkpoints as rc
    from app.train.runner import local_hooks, run

    model = str(resolve("tiny-llama", tmp_path / "models"))
    ref = run(_spec(model, tmp_path / "ref", 1, engine="torch", zero_stage=0), local_hooks(tmp_path / "ref"))
    ref_loss = [h["loss"] for h in ref["history"]]

    tp = _run2(_spec(model, tmp_path / "tp", 2, tensor_parallel=2), tmp_path / "tp.json")
    layout = [e for e in tp["events"] if e["event"] == "parallel_layout"]
    assert [(e["dp"], e["tp"], e["pp"]) for e in layout] == [(1, 2, 1)]
    assert [(h["world_size"], h["grad_accum"]) for h in tp["history"]] == [(2, 2)] * 4  # 4 = 2 × 1 replica × 2
    assert [h["loss"] for h in tp["history"]] == pytest.approx(ref_loss, rel=1e-4)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "tp" / rc.ckpt_name(0, 4) / "model" / "lm").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "ref" / rc.ckpt_name(0, 4) / "model" / "lm").state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # full, not sharded, weights
    # sharded matmuls sum in another order; Adam turns float noise in near-zero gradients into steps of up to
    # lr = 1e-2, so allow 1e-3 — a shard in the wrong place or a stale half would be off by far more
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3
    start = AutoModelForCausalLM.from_pretrained(model).state_dict()
    assert min(float((a[k] - start[k]).abs().max()) for k in a if k.endswith("proj.weight")) > 1e-2  # trained

    shutil.copytree(tmp_path / "tp" / rc.ckpt_name(0, 2), tmp_path / "tp2" / rc.ckpt_name(0, 2))
    again = _run2(_spec(model, tmp_path / "tp2", 2, tensor_parallel=2), tmp_path / "tp2.json")
    assert [(e["step"], e["kind"]) for e in again["events"] if e["event"] == "resumed"] == [(2, "full")]
    assert [h["loss"] for h in again["history"]][2:] == pytest.approx(ref_loss[2:], rel=1e-4)
