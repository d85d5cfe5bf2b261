"""Evaluation helpers and the DeepSpeed config mapping."""

import math

import pytest

from app.eval.metrics import latency_percentiles, loss_cv
from app.train.deepspeed_config import build_deepspeed_config


def test_latency_percentiles_hand_case():
    # 1..100 ms: p50 = 50.5 (linear interpolation), p99 = 99.01, mean = 50.5
    p = latency_percentiles([i / 1000 for i in range(1, 101)])
    assert p["p50_ms"] == pytest.approx(50.5)
    assert p["p99_ms"] == pytest.approx(99.01)
    assert p["mean_ms"] == pytest.approx(50.5)


def test_loss_cv_uses_the_tail():
    # tail of [10, 10, 1, 3] is [1, 3]: mean 2, population std 1 → CV 0.5
    assert loss_cv([10, 10, 1, 3]) == pytest.approx(0.5)
    assert loss_cv([1.0]) == 0.0
    assert loss_cv([1.0, math.nan, 2.0, 3.0]) == pytest.approx(0.2)  # tail [2, 3]: std .5 / mean 2.5


def test_deepspeed_config_batch_arithmetic_and_stage():
    c = build_deepspeed_config(2, micro_batch=16, grad_accum=2, world_size=2)
    assert c["train_batch_size"] == 64  # 16 × 2 × 2
    assert c["zero_optimization"]["stage"] == 2
    assert c["bf16"]["enabled"] is False and c["fp16"]["enabled"] is False


def test_deepspeed_raw_override_merges_deeply():
    c = build_deepspeed_config(3, 4, 1, 2, offload_params=True,
                               overrides={"zero_optimization": {"stage3_max_live_parameters": 10}})
    assert c["zero_optimization"]["stage"] == 3
    assert c["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert c["zero_optimization"]["stage3_max_live_parameters"] == 10


def test_deepspeed_bad_stage_and_offload():
    with pytest.raises(ValueError, match="zero_stage"):
        build_deepspeed_config(4, 1, 1, 1)
    with pytest.raises(ValueError, match="stage=3"):
        build_deepspeed_config(2, 1, 1, 1, offload_params=True)


def test_single_worker_runs_zero_0_unless_offload_elastic_resume_or_override():
    from app.config import TrainerConfig
    from app.train.deepspeed_config import effective_zero_stage

    t = TrainerConfig(zero_stage=2, num_workers=1).model_dump()
    stage, why = effective_zero_stage(t, 1, None)
    assert stage == 0 and "ZeRO-2 partitions nothing" in why
    assert effective_zero_stage(t, 1, 0) == (0, why)  # resuming its own stage-0 checkpoint
    assert effective_zero_stage(t, 2, None) == (2, None)  # two ranks: the stage partitions
    assert effective_zero_stage(t, 1, 2) == (2, None)  # a ZeRO-2 checkpoint's optimiser state loads at stage 2
    assert effective_zero_stage({**t, "min_workers": 1, "num_workers": 2}, 1, None) == (2, None)  # elastic
    assert effective_zero_stage({**t, "offload_optimizer": True}, 1, None) == (2, None)
    assert effective_zero_stage({**t, "engine": "torch"}, 1, None) == (2, None)
    assert effective_zero_stage({**t, "deepspeed": {"zero_optimization": {"stage": 2}}}, 1, None) == (2, None)
    t3 = TrainerConfig(zero_stage=3, num_workers=1, offload_params=True).model_dump()
    assert effective_zero_stage(t3, 1, None) == (3, None)  # parameter offload needs stage 3
