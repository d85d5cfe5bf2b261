"""Decision → next iteration's trainer settings (the adjust_training feedback of the controller)."""

import pytest

from app.controller.feedback import training_feedback

T = {"lr": 4e-5, "warmup_ratio": 0.1, "grad_clip": 5.0, "epochs": 3.0}


def test_unstable_loss_halves_lr_warms_longer_clips():
    changed, why = training_feedback("adjust_training", 0.8, 0.7, T)
    # divergence: lr 4e-5 × 0.5 = 2e-5; warmup 0.1 + 0.05 = 0.15; clip min(5, 1) = 1
    assert changed == {"lr": 2e-5, "warmup_ratio": 0.15, "grad_clip": 1.0}
    assert why.startswith("divergence: lr 4e-05 -> 2e-05")


def test_regression_not_deployed_lowers_lr_only():
    changed, why = training_feedback("collect_more_data", 0.70, 0.75, T)
    assert changed == {"lr": 2e-5, "warmup_ratio": 0.15} and why.startswith("regression")


@pytest.mark.parametrize("action,after,before", [("deploy", 0.9, 0.8), ("collect_more_data", 0.8, 0.8),
                                                 ("collect_more_data", 0.81, 0.8), ("deploy", 0.7, 0.8)])
def test_no_change(action, after, before):
    # a deployed model (even a worse one, when the gate allows it) or a non-regression keeps the settings
    assert training_feedback(action, after, before, T) is None


def test_bad_metric():
    with pytest.raises(ValueError, match="after must be a finite number"):
        training_feedback("rollback", float("nan"), 0.5, T)
