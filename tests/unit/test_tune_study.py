"""Study config validation, the key -> trainer-field mapping, and the shipped tune configs."""

from pathlib import Path

import pytest

from app.tune.space import parse_space
from app.tune.study import StudyError, load_study, parse_study
from app.tune.trial_params import check_mapping, max_warmup_ratio, trainer_options

ROOT = Path(__file__).resolve().parents[2]
SPACE = {
    "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
    "batch_size": {"type": "choice", "values": [8, 16]},
    "use_lora": {"type": "choice", "values": [True, False]},
    "lora_rank": {"type": "int", "low": 4, "high": 8, "when": {"use_lora": True}},
    "lora_alpha": {"derive": "2 * lora_rank", "when": {"use_lora": True}},
    "effective_batch_size": {"derive": "batch_size * 2"},
}


def _study(**kw):
    return {"name": "s1", "space": SPACE} | kw


def test_shipped_demo_config_validates():
    cfg, space = load_study(ROOT / "jobs/configs/tune_demo.yaml", ROOT)
    assert cfg.name == "tune-demo" and cfg.scheduler.type == "asha" and cfg.metric == "val_accuracy"
    assert set(space.params) == {"learning_rate", "head_lr", "warmup_ratio", "batch_size", "weight_decay"}


def test_shipped_staged_demo_config_validates():
    cfg, space = load_study(ROOT / "jobs/configs/tune_staged_demo.yaml", ROOT)
    assert cfg.staged is not None and (cfg.search.type, cfg.staged.search) == ("grid", "tpe")
    assert cfg.trainer.reuse_actors and space.params["learning_rate"].type == "grid"


@pytest.mark.parametrize("raw, needle", [
    (_study(name="bad name/x"), "name:"),
    (_study(scheduler={"type": "asha", "grace": 1}), "scheduler.asha.grace: unknown field"),
    (_study(scheduler={"type": "nope"}), "scheduler"),
    (_study(mode="maximum"), "mode:"),
    (_study(scheduler={"type": "pbt"}, search={"type": "tpe"}), "cannot drive scheduler 'pbt'"),
    (_study(space={"lr_x": {"type": "uniform", "low": 0, "high": 1}}), "'lr_x' is not mapped"),
    (_study(param_map={"learning_rate": "no_such_field"}), "'no_such_field' is not a TrainerConfig field"),
    (_study(param_map={"batch_size": "lr"}), "both set trainer field 'lr'"),
    (_study(trainer={"overrides": {"lrr": 1}}), "trainer.overrides: 'lrr'"),
    (_study(space={"learning_rate": {"type": "uniform", "low": 1, "high": 0}}), "learning_rate: low must be < high"),
    (_study(scheduler={"type": "pbt", "mutable": ["nope"]}), "scheduler.mutable: ['nope']"),
    (_study(space={"batch_size": {"type": "grid", "values": [8, 16]}}, search={"type": "gp"}), "cannot run grid keys"),
    (_study(scheduler={"type": "sha"}, scheduler_metric="val_loss"), "scheduler_mode: set scheduler_metric and"),
    (_study(scheduler_metric="val_loss", scheduler_mode="min"), "scheduler_metric: the random scheduler"),
    (_study(scheduler={"type": "sha", "reduction_factor": 1}), "scheduler.sha.reduction_factor"),
    (_study(scheduler={"type": "sha", "reduction_factor": 2}, max_t=6), "max_t: 6 is too small for eta 2"),
])
def test_bad_studies_name_the_field(raw, needle):
    with pytest.raises(StudyError) as e:
        parse_study(raw)
    assert needle in str(e.value)


def test_every_problem_is_reported_at_once():
    raw = _study(param_map={"learning_rate": "nope1", "batch_size": "nope2"})
    with pytest.raises(StudyError) as e:
        parse_study(raw)
    assert "'nope1'" in str(e.value) and "'nope2'" in str(e.value)


def test_trainer_options_mapping_and_precedence():
    cfg, space = parse_study(_study(trainer={"overrides": {"lr": 1.0, "head_lr": 2e-3, "epochs": 1.0}}))
    trial = {"learning_rate": 3e-3, "batch_size": 16, "use_lora": True, "lora_rank": 6, "lora_alpha": 12,
             "effective_batch_size": 32}
    opts = trainer_options(trial, cfg.param_mapping(), cfg.trainer.overrides, {"engine": "torch", "max_steps": 12})
    # the trial's learning_rate beats the study override lr=1.0; the fixed options beat both
    assert opts["lr"] == 3e-3 and opts["head_lr"] == 2e-3 and opts["epochs"] == 1.0
    assert opts["micro_batch_size"] == 16 and opts["engine"] == "torch" and opts["max_steps"] == 12
    assert {k: opts["lora"][k] for k in ("enabled", "r", "alpha", "dropout")} == {"enabled": True, "r": 6,
                                                                               "alpha": 12, "dropout": 0.05}
    assert "effective_batch_size" not in opts  # mapped to None: recorded in the trial config only


def test_trainer_options_reject_invalid_value_naming_it():
    cfg, _ = parse_study(_study(param_map={"learning_rate": None, "batch_size": "warmup_ratio"}))
    with pytest.raises(ValueError, match=r"warmup_ratio: .*got 8"):
        trainer_options({"batch_size": 8}, cfg.param_mapping(), {}, {})


def test_check_mapping_lists_unmapped_keys():
    space = parse_space({"a": {"type": "uniform", "low": 0, "high": 1}, "lr": {"type": "fixed", "value": 0.1}})
    errors = check_mapping(space, {"lr": "lr"}, {})
    assert len(errors) == 1 and errors[0].startswith("param_map: space key 'a'")


def test_max_warmup_ratio_from_space_override_or_default():
    space = parse_space({"warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2}})
    assert max_warmup_ratio(space, {"warmup_ratio": "warmup_ratio"}, {}) == 0.2  # the range's upper end
    other = parse_space({"lr": {"type": "fixed", "value": 0.1}})
    assert max_warmup_ratio(other, {"lr": "lr"}, {"warmup_ratio": 0.05}) == 0.05
    assert max_warmup_ratio(other, {"lr": "lr"}, {}) == 0.1  # TrainerConfig's default
