"""Pipeline parallelism on Ray Train: tiny-llama (tied embeddings) split into 2 DeepSpeed pipeline stages over 2
gloo workers, trained with ``engine.train_batch()``, checkpointed, resumed.

With the global batch held at 4 (pp=2 → 1 data-parallel replica × micro 2 × accum 2) the pipeline computes
the same mean loss and the same AdamW update as one plain process with micro 2 × accum 2, so every step's
loss must equal the in-process reference's — also after resuming from the step-4 checkpoint, which only
holds if each stage's layer files, its Adam state and the tied head were restored.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration



def _spec(model: str, steps: int, **opts):
    from app.config import TrainerConfig
    from app.train.spec import TrainSpec

    t = TrainerConfig(**{"num_workers": 2, "cpus_per_worker": 0.75, "zero_stage": 1, "micro_batch_size": 2,
                         "max_steps": steps, "checkpoint_every": 2, "max_failures": 0, "warmup_ratio": 0.0,
                         "lr": 1e-2, "global_batch_size": 4, **opts}).model_dump()
    root = Path(__file__).resolve().parents[2] / "data" / "alpaca_libre" / "alpaca_libre_tasks_v1.jsonl"
    rows = [json.loads(line) for line in root.read_text().splitlines()[:8]]
    return TrainSpec(task="sft", start_model=model, start_is_flywheel=False, base_name="tiny-llama",
                     inputs=[r["instruction"] for r in rows], targets=[r["output"] for r in rows], max_length=24,
                     trainer=t)


def test_two_pipeline_stages_on_ray_train_match_one_process_and_resume(ray_local):
    import torch
    from transformers import AutoModelForCausalLM

    from actors.trainer import run_training
    from app.models.backbones import resolve
    from app.train import run_checkpoints as rc
    from app.train.runner import local_hooks, run

    model = str(resolve("tiny-llama", ray_local / "models"))
    # reference: one process, plain torch AdamW, micro 2 × accum 2, no process group
    ref_spec = _spec(model, 6, num_workers=1, engine="torch", zero_stage=0)
    ref = run(ref_spec.model_copy(update={"ckpt_root": str(ray_local / "ref")}), local_hooks(ray_local / "ref"))
    ref_loss = [h["loss"] for h in ref["history"]]

    storage = ray_local / "results"
    first = run_training(_spec(model, 6, pipeline_stages=2), storage, "pp", ray_local / "export")
    layout = [e for e in first["events"] if e["event"] == "parallel_layout"]
    assert [(e["dp"], e["tp"], e["pp"], e["source"]) for e in layout] == [(1, 1, 2, "manual")]
    assert [(h["world_size"], h["grad_accum"]) for h in first["history"]] == [(2, 2)] * 6  # 4 = 2 × 1 replica × 2
    assert first["meta"]["pp"] == 2
    loss = [h["loss"] for h in first["history"]]
    assert loss == pytest.approx(ref_loss, rel=1e-4) and all(math.isfinite(x) for x in loss)
    assert sum(loss[-2:]) < sum(loss[:2]) - 1.0  # 8 rows seen 3 times at lr 1e-2: it learns them
    # the export gathers both stages' layers (and the tied head) into one Hugging Face model: the reference's
    a = AutoModelForCausalLM.from_pretrained(ray_local / "export" / "lm").state_dict()
    b = AutoModelForCausalLM.from_pretrained(ray_local / "ref" / rc.ckpt_name(0, 6) / "model" / "lm").state_dict()
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    start = AutoModelForCausalLM.from_pretrained(model).state_dict()
    assert all(not torch.equal(a[k], start[k]) for k in a if k.endswith("weight") and "norm" not in k)

    # resume: the step-4 checkpoint alone in a new run directory; steps 5-6 must replay the reference's
    shutil.copytree(storage / "pp" / rc.ckpt_name(0, 4), storage / "pp2" / rc.ckpt_name(0, 4))
    out = run_training(_spec(model, 6, pipeline_stages=2), storage, "pp2", None)
    assert [(e["step"], e["kind"]) for e in out["events"] if e["event"] == "resumed"] == [(4, "full")]
    assert [h["step"] for h in out["history"]] == list(range(1, 7))
    assert [h["loss"] for h in out["history"]][4:] == pytest.approx(ref_loss[4:], rel=1e-4)
