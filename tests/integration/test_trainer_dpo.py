"""DPO through Ray Train + DeepSpeed on 16 real preference pairs (LLaMA-Factory's dpo_en_demo, read through
the data pool) with a pico Llama: two workers, ZeRO-2, frozen reference model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]



def _pairs(tmp: Path, n: int) -> list[dict]:
    from app.pool import DataPool, PoolConfig, SourceSpec

    src = SourceSpec(path=str(ROOT / "data/llamafactory_dpo/dpo_en_demo.json"), fields={"prompt": "conversations"},
                     limit=n + 8)  # a few spare: the pool drops exact duplicates
    pool = DataPool.open(PoolConfig(task="dpo", root=str(tmp / "pool"), sources=[src]))
    pool.ingest()
    rows = sorted(pool.read().to_pylist(), key=lambda r: r["source_row"])[:n]
    assert len(rows) == n
    return rows


def test_dpo_on_real_pairs_learns_and_logs_preferences(ray_local):
    from safetensors.torch import load_file

    from actors.trainer import run_training
    from app.config import TrainerConfig
    from app.models.backbones import resolve
    from app.train.spec import TrainSpec

    rows = _pairs(ray_local, 16)
    start = resolve("tiny-llama", ray_local / "models")
    t = TrainerConfig(num_workers=2, cpus_per_worker=0.75, zero_stage=2, micro_batch_size=2, max_steps=4,
                      checkpoint_every=2, lr=1e-3, warmup_ratio=0.0).model_dump()
    t.update(dpo_beta=0.1, dpo_loss="sigmoid", dpo_reference="model")
    spec = TrainSpec(task="dpo", start_model=str(start), start_is_flywheel=False, base_name="tiny-llama",
                     inputs=[r["prompt"] for r in rows], targets=[r["chosen"] for r in rows],
                     rejected=[r["rejected"] for r in rows], max_length=64, trainer=t)
    out = run_training(spec, ray_local / "results", "dpo", ray_local / "model")

    h = out["history"]
    assert [r["step"] for r in h] == [1, 2, 3, 4]  # 16 pairs / global batch (2 micro × 2 workers) = 4 steps
    assert all(math.isfinite(r["loss"]) for r in h)
    # step 1: policy == reference, so every log-ratio is 0 and the loss is -log σ(0) = ln 2 = 0.693147
    assert h[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert h[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    for r in h:
        assert 0.0 <= r["preference_accuracy"] <= 1.0
        # the margin is the mean of chosen minus rejected implicit rewards
        assert r["reward_margin"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"], abs=1e-5)
    assert h[-1]["reward_margin"] != 0.0  # after 3 updates the policy has moved away from the reference

    before = load_file(str(Path(start) / "model.safetensors"))
    after = load_file(str(Path(out["model_dir"]) / "lm" / "model.safetensors"))
    changed = [k for k in before if k in after and not (before[k] == after[k]).all()]
    assert changed, "no parameter changed"
    assert out["meta"]["task"] == "dpo" and out["meta"]["world_size"] == 2
