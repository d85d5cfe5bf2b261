"""narrow_space on a hand case: ranges shrink around the best configs, log params on a log scale."""

import math

import numpy as np
import pytest

from app.tune.sampling import sample
from app.tune.space import SearchSpace, parse_space
from app.tune.staged import narrow_space

COARSE = parse_space({
    "learning_rate": {"type": "log_uniform", "low": 1e-6, "high": 1e-3},
    "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.1},
    "batch_size": {"type": "grid", "values": [8, 16, 32, 64]},
    "weight_decay": {"type": "grid", "values": [0.0, 0.01, 0.1]},
    "dropout": {"type": "grid", "values": [1e-3, 1e-2, 1e-1]},
    "scheduler": {"type": "grid", "values": ["cosine", "linear"]},
    "use_lora": {"type": "choice", "values": [True, False]},
    "lora_rank": {"type": "int", "low": 4, "high": 64, "log": True, "when": {"use_lora": True}},
    "lora_alpha": {"derive": "2 * lora_rank", "when": {"use_lora": True}},
})
BEST = {"learning_rate": 1e-5, "warmup_ratio": 0.05, "batch_size": 16, "weight_decay": 0.01, "dropout": 0.1,
        "scheduler": "cosine", "use_lora": True, "lora_rank": 16, "lora_alpha": 32}


def test_narrow_single_best_hand_case():
    space, log = narrow_space(COARSE, [BEST], factor=10)
    d = space.to_dict()
    assert isinstance(space, SearchSpace)
    # ln width of lr = ln(1e-3 / 1e-6) = ln 1000; w = ln(1000) / 10
    # new = 1e-5 * 1000^(-/+0.05) = [7.08e-6, 1.41e-5]
    assert d["learning_rate"]["type"] == "log_uniform"
    assert d["learning_rate"]["low"] == pytest.approx(1e-5 * 1000**-0.05)
    assert d["learning_rate"]["high"] == pytest.approx(1e-5 * 1000**0.05)
    # linear: w = 0.1 / 10 = 0.01 -> [0.045, 0.055]
    assert (d["warmup_ratio"]["low"], d["warmup_ratio"]["high"]) == pytest.approx((0.045, 0.055))
    # int log: w = ln(64/4) / 10 = 0.2773; 16 e^-0.1386 = 13.93 -> 13, 16 e^0.1386 = 18.38 -> 19 (outward)
    assert d["lora_rank"] == {"type": "int", "low": 13, "high": 19, "log": True, "when": {"use_lora": True}}
    # grids become ranges between the neighbours of the best value
    assert d["batch_size"] == {"type": "int", "low": 8, "high": 32, "log": True}  # 8,16,32,64 is geometric
    assert d["weight_decay"] == {"type": "uniform", "low": 0.0, "high": 0.1}  # has a 0: linear
    assert d["dropout"] == {"type": "log_uniform", "low": 0.01, "high": 0.1}  # best is the last value
    # kept: non-numeric grid, choice, derived
    for key in ("scheduler", "use_lora", "lora_alpha"):
        assert d[key] == COARSE.to_dict()[key]
    assert log[0] == ("learning_rate: log_uniform [1e-06, 0.001] -> [7.08e-06, 1.41e-05] (log scale) "
                      "around best 1e-05")
    assert any(line.startswith("scheduler: kept") for line in log)
    # the new space samples inside the narrowed ranges
    rng = np.random.default_rng(0)
    for _ in range(100):
        c = sample(space, rng)
        assert 7.07e-6 <= c["learning_rate"] <= 1.42e-5 and 8 <= c["batch_size"] <= 32


def test_narrow_several_best_and_edges():
    other = BEST | {"learning_rate": 1e-4, "warmup_ratio": 0.0}
    other.pop("lora_rank")
    space, log = narrow_space(COARSE, [BEST, other], factor=10)
    d = space.to_dict()
    # span of the best values, padded: [1e-5 * 1000^-0.05, 1e-4 * 1000^0.05] = [7.08e-6, 1.41e-4]
    lr = (d["learning_rate"]["low"], d["learning_rate"]["high"])
    assert lr == pytest.approx((7.0795e-6, 1.4125e-4), rel=1e-4)
    # [0 - 0.005, 0.05 + 0.005] sticks out below 0: shifted right by 0.005 -> [0, 0.06]
    assert (d["warmup_ratio"]["low"], d["warmup_ratio"]["high"]) == pytest.approx((0.0, 0.06))
    assert d["lora_rank"]["low"] == 13  # the config without lora_rank is ignored for that key


def test_keys_tested_by_when_or_absent_are_kept():
    space = parse_space({"k": {"type": "int", "low": 1, "high": 8},
                         "x": {"type": "uniform", "low": 0, "high": 1, "when": {"k": 2}},
                         "y": {"type": "uniform", "low": 0, "high": 1}})
    new, log = narrow_space(space, [{"k": 2, "x": 0.5}], factor=4)
    assert new.to_dict()["k"] == space.to_dict()["k"] and new.to_dict()["y"] == space.to_dict()["y"]
    assert "k: kept (int); a `when` condition tests it" in log
    assert "y: kept (uniform); absent from every best config" in log
    assert (new.to_dict()["x"]["low"], new.to_dict()["x"]["high"]) == pytest.approx((0.375, 0.625))  # w = 1/4


def test_bad_arguments():
    with pytest.raises(ValueError, match="^factor:"):
        narrow_space(COARSE, [BEST], factor=1)
    with pytest.raises(ValueError, match="^best_configs:"):
        narrow_space(COARSE, [], factor=4)
    with pytest.raises(ValueError, match="learning_rate = 0.5 is outside"):
        narrow_space(COARSE, [BEST | {"learning_rate": 0.5}], factor=4)
    assert math.isfinite(narrow_space(COARSE, [BEST], factor=1e6)[0].to_dict()["lora_rank"]["high"])


# --- staged studies (jobs.tune_staged): stage 2's space from a hand-written stage-1 result -----------------

STAGED = {"name": "st", "space": {"learning_rate": {"type": "grid", "values": [1e-4, 1e-3, 1e-2]},
                                  "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
                                  "batch_size": {"type": "grid", "values": [8, 16, 32]}},
          "search": {"type": "grid"}, "staged": {"top_k": 2, "factor": 4, "num_samples": 3}}


def _trial(tid, score, lr, wr, bs, status="finished"):
    return {"trial_id": tid, "score": score, "status": status, "stop_reason": "max_t",
            "config": {"learning_rate": lr, "warmup_ratio": wr, "batch_size": bs}}


def test_stage2_space_narrows_around_the_top_k_of_stage1():
    from app.tune.study import parse_study
    from jobs.tune_staged import stage1_config, stage2_space

    cfg, space = parse_study(STAGED)
    one = stage1_config(cfg)
    assert (one.name, one.staged, one.search.type) == ("st.stage1", None, "grid")
    stage1 = {"trials": [_trial("a", 0.60, 1e-4, 0.10, 8), _trial("b", 0.71, 1e-3, 0.05, 16),
                         _trial("c", 0.69, 1e-2, 0.15, 16), _trial("d", None, 1e-2, 0.0, 32, "errored"),
                         _trial("e", 0.90, 1e-4, 0.0, 32, "errored")]}  # errored trials never count
    space2, rec = stage2_space(cfg, space, stage1)
    d = space2.to_dict()
    assert [c["learning_rate"] for c in rec["around"]] == [1e-3, 1e-2] and rec["scores"] == [0.71, 0.69]
    # best lrs 1e-3, 1e-2 of the geometric grid 1e-4, 1e-3, 1e-2: neighbours 1e-4 .. 1e-2, log scale
    assert d["learning_rate"] == {"type": "log_uniform", "low": 1e-4, "high": 1e-2}
    # warmup: w = 0.2 / 4 = 0.05 -> [0.05 - 0.025, 0.15 + 0.025] = [0.025, 0.175]
    assert (d["warmup_ratio"]["low"], d["warmup_ratio"]["high"]) == pytest.approx((0.025, 0.175))
    # batch 16 (both best) in the geometric int grid 8, 16, 32: neighbours 8 .. 32
    assert d["batch_size"] == {"type": "int", "low": 8, "high": 32, "log": True}
    assert any(line.startswith("warmup_ratio: uniform [0, 0.2] -> [0.025, 0.175]") for line in rec["log"])
    assert rec["space"] == d


def test_stage2_keeps_non_numeric_grids_as_choices_and_needs_a_scored_trial():
    from app.tune.study import StudyError, parse_study
    from jobs.tune_staged import stage2_space

    raw = STAGED | {"space": STAGED["space"] | {"seed": {"type": "grid", "values": ["a", "b"]}},
                    "param_map": {"seed": None}}
    cfg, space = parse_study(raw)
    best = _trial("b", 0.7, 1e-3, 0.05, 16)
    best["config"]["seed"] = "a"
    space2, rec = stage2_space(cfg, space, {"trials": [best]})
    assert space2.to_dict()["seed"] == {"type": "choice", "values": ["a", "b"]}
    assert "seed: grid ['a', 'b'] -> choice (stage 2 samples it)" in rec["log"]
    with pytest.raises(StudyError, match="no scored trial"):
        stage2_space(cfg, space, {"trials": [_trial("d", None, 1e-2, 0.0, 32, "errored")]})


@pytest.mark.parametrize("change, needle", [
    ({"search": {"type": "tpe"}}, "stage 1 is a coarse grid or random search"),
    ({"search": {"type": "random"}, "scheduler": {"type": "pbt"}}, "cannot run a staged study"),
    ({"name": "x" * 58}, "at most 57 characters"),
    ({"staged": {"factor": 1}}, "staged.factor"),
    ({"staged": {"search": "random"}}, "staged.search"),
])
def test_bad_staged_studies_name_the_field(change, needle):
    from app.tune.study import StudyError, parse_study

    raw = STAGED | {"space": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}}} | change
    with pytest.raises(StudyError, match=None) as e:
        parse_study(raw)
    assert needle in str(e.value)
