"""Resume with a different number of workers through Ray Train: a run checkpointed by 2 workers continues on
1, with the global batch held constant by recomputing gradient accumulation; the ZeRO-2 optimiser partitions
are re-partitioned through a DeepSpeed universal checkpoint (logged as a "universal" resume). The numerical
check that nothing is lost is tests/integration/test_trainer_reshard.py."""

from __future__ import annotations

import math
import os

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    tmp = tmp_path_factory.mktemp("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(tmp / "r"))
    yield tmp
    ray.shutdown()


def _spec(model: str, workers: int, steps: int):
    from app.config import TrainerConfig
    from app.train.spec import TrainSpec

    t = TrainerConfig(num_workers=workers, cpus_per_worker=0.75, zero_stage=2, micro_batch_size=2,
                      max_steps=steps, checkpoint_every=2, max_failures=0).model_dump()
    t["global_batch_size"] = 4
    texts = [f"note {i}: {'keep' if i % 2 else 'drop'} this one" for i in range(16)]
    return TrainSpec(task="classify", start_model=model, start_is_flywheel=False, base_name="tiny-bert",
                     label_names=["drop", "keep"], inputs=texts,
                     targets=["keep" if i % 2 else "drop" for i in range(16)], max_length=16, trainer=t)


def test_two_workers_then_one_keeps_global_batch(ray_local):
    from actors.trainer import run_training
    from app.models.backbones import resolve
    from app.train import run_checkpoints as rc

    model = str(resolve("tiny-bert", ray_local / "models"))
    storage = ray_local / "results"
    first = run_training(_spec(model, 2, 4), storage, "elastic", None)
    assert [(h["world_size"], h["grad_accum"]) for h in first["history"]] == [(2, 1)] * 4  # 4 = 2 × 2 × 1

    out = run_training(_spec(model, 1, 8), storage, "elastic", None)
    ev = out["events"]
    resumed = [e for e in ev if e["event"] == "resumed"]
    assert resumed == [{"event": "resumed", "from": str(storage / "elastic" / rc.ckpt_name(0, 4)), "step": 4,
                        "kind": "universal"}]
    plans = [(e["world_size"], e["grad_accum"], e["global_batch"]) for e in ev if e["event"] == "batch_plan"]
    assert plans == [(2, 1, 4), (1, 2, 4)]  # 4 = micro 2 × 2 workers × 1 = micro 2 × 1 worker × 2
    h = out["history"]
    assert [r["step"] for r in h] == list(range(1, 9)) and all(math.isfinite(r["loss"]) for r in h)
    assert [(r["world_size"], r["grad_accum"]) for r in h] == [(2, 1)] * 4 + [(1, 2)] * 4
    assert out["meta"]["world_size"] == 1 and out["meta"]["gen"] == 1
