"""Curriculum data order in the trainer's batch plan (Platanios et al. 2019 competence pacing)."""

import numpy as np
import pytest

from app.config import TrainerConfig
from app.train.runner import Plan
from app.train.spec import TrainSpec

N = 20


def _spec(**trainer) -> TrainSpec:
    t = TrainerConfig(micro_batch_size=2, grad_accum=1, num_workers=2, max_steps=10, **trainer).model_dump()
    return TrainSpec(task="classify", start_model="m", start_is_flywheel=False, base_name="m", label_names=["a", "b"],
                     inputs=[f"x{i}" for i in range(N)], targets=["a"] * N, max_length=8, trainer=t)


def _step_rows(plan: Plan, step: int, losses=None) -> list[int]:
    """The global batch of ``step``: every rank's micro-batches."""
    rows = []
    for rank in range(plan.world):
        for m in range(plan.ga):
            rows += plan.indices(step * plan.ga + m, rank, seed=0, losses=losses)[0]
    return rows


def test_linear_pacing_widens_from_the_easiest_rows():
    # global batch 2 x 1 x 2 = 4; ramp = ceil(0.5 x 10) = 5 steps; c(s) = 0.2 + 0.8 s / 5
    spec = _spec(curriculum="linear", curriculum_c0=0.2, curriculum_ramp=0.5)
    plan = Plan(spec, N, world=2, difficulty=np.arange(N, dtype=float))  # row i has difficulty i
    assert sorted(_step_rows(plan, 0)) == [0, 1, 2, 3]  # c = 0.2 -> the 4 easiest rows, each once
    assert max(_step_rows(plan, 2)) < 12  # c = 0.2 + 0.8 x 2/5 = 0.52 -> ceil(10.4) = 11 rows: 0..10
    assert set(plan.allowed(5, 0, [])) == set(range(N))  # full competence from the end of the ramp
    # the batch of a step does not depend on the world size (global batch 4 either way)
    one = Plan(spec, N, world=1, difficulty=np.arange(N, dtype=float))
    assert one.ga == 2 and all(sorted(_step_rows(one, s)) == sorted(_step_rows(plan, s)) for s in range(10))


def test_anti_curriculum_and_replay():
    spec = _spec(curriculum="linear", curriculum_anti=True, curriculum_c0=0.2)
    plan = Plan(spec, N, world=2, difficulty=np.arange(N, dtype=float))
    assert sorted(_step_rows(plan, 0)) == [16, 17, 18, 19]  # hardest first
    # replay 0.5: the 4 hardest rows + round(0.5 x 4) = 2 rows easier than all of them
    spec = _spec(curriculum="linear", curriculum_anti=True, curriculum_c0=0.2, curriculum_replay=0.5)
    allowed = Plan(spec, N, world=2, difficulty=np.arange(N, dtype=float)).allowed(0, 0, [])
    assert list(allowed[:4]) == [19, 18, 17, 16] and len(allowed) == 6 and max(allowed[4:]) < 16


def test_adaptive_pacing_grows_when_the_loss_plateaus():
    spec = _spec(curriculum="adaptive", curriculum_c0=0.2)
    plan = Plan(spec, N, world=2, difficulty=np.arange(N, dtype=float))
    assert len(plan.allowed(3, 0, [1.0, 0.8, 0.6])) == 4  # improving: c stays 0.2
    # best 1.0, then 3 non-improving losses (patience 3) -> c = 0.3 -> 6 rows
    assert len(plan.allowed(4, 0, [1.0, 1.0, 1.0, 1.0])) == 6


def test_curriculum_needs_a_difficulty_per_row():
    with pytest.raises(ValueError, match="needs one difficulty per row"):
        Plan(_spec(curriculum="root"), N, world=2, difficulty=None)
    with pytest.raises(ValueError, match="difficulty has 3 values for 20 rows"):
        TrainSpec(**{**_spec().model_dump(), "difficulty": [1.0, 2.0, 3.0]})
    assert Plan(_spec(), N, world=2).pacing == "none"  # default: shuffled, no difficulty needed
