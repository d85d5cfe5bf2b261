"""The deploy stage's reading of canary events, and the ``controller.canary`` config (no Ray, no Serve)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.controller.settings import ControllerConfig
from jobs.stages.deploy import _outcome


def _ev(event, version, **kw):
    return {"event": event, "model_version": version, "epoch": 1, **kw}


def test_outcome_of_this_rollout_only():
    events = [_ev("canary_started", "m:2"), _ev("rollback", "m:2", reason="agreement 0.1 < 0.9", metrics={"agreement": 0.1}),
              _ev("canary_started", "m:3"), _ev("canary_advanced", "m:3", percent=100.0)]
    assert _outcome(events, "m:3") is None  # still at 100 %: no verdict yet
    assert _outcome(events, "m:2") == {"outcome": "rolled_back", "reason": "agreement 0.1 < 0.9",
                                       "metrics": {"agreement": 0.1}}
    events.append(_ev("promoted", "m:3", metrics={"agreement": 1.0}))
    assert _outcome(events, "m:3")["outcome"] == "promoted"
    # the same version canaried again after an old rollback: the old verdict is not this rollout's
    assert _outcome(events + [_ev("canary_started", "m:2")], "m:2") is None


def test_canary_config_defaults_and_bad_values():
    c = ControllerConfig().canary
    assert c.endpoint_config is None and c.wait_s == 600.0 and c.replay_test == 0
    with pytest.raises(ValidationError, match="replay_test"):
        ControllerConfig.model_validate({"canary": {"replay_test": -1}})
    with pytest.raises(ValidationError, match="extra"):
        ControllerConfig.model_validate({"canary": {"steps": [10, 50, 100]}})  # steps live in the endpoint YAML
