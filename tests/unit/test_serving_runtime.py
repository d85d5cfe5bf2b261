"""Live execution of fitted plans (app.serving.runtime): same answers as the offline policy, fewer member calls."""

import asyncio

import numpy as np
import pytest

from app.serving.fitting import evaluate_plan, fit_plan, stage_names
from app.serving.runtime import PlanRunner

LABELS = ["neg", "pos"]


def _members_and_data(seed=0, n=200):
    """Two synthetic members: 'cheap' is right on easy items (|x| large), 'big' is right everywhere but noisier."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = np.where(y == 1, 1.0, -1.0)
    margin = rng.uniform(0.0, 3.0, n)
    cheap = np.stack([-sign * margin, sign * margin], 1) * np.where(margin > 1.0, 1.0, -1.0)[:, None]
    big = np.stack([-sign, sign], 1) * 1.5 + rng.normal(0, 0.3, (n, 2))
    emb = np.stack([margin, rng.normal(size=n)], 1)
    return [cheap, big], [emb, emb[:, :1]], y


class Calls:
    """Fake member deployments: answer from precomputed logits keyed by text; log (member, n rows) per call."""

    def __init__(self, logits, embs, texts):
        self.logits, self.embs, self.row = logits, embs, {t: i for i, t in enumerate(texts)}
        self.log = []

    async def __call__(self, i, texts):
        await asyncio.sleep(0)
        rows = [self.row[t] for t in texts]
        self.log.append((i, len(rows)))
        return self.logits[i][rows], self.embs[i][rows]


@pytest.mark.parametrize("policy,params", [("weighted", {}), ("cascade", {"target_accuracy": 0.9}),
                                           ("moe", {"mode": "soft"}), ("moe", {"mode": "hard"})])
def test_live_answers_equal_offline_policy(policy, params):
    logits, embs, y = _members_and_data()
    members = [{"name": "cheap", "cost": 1.0}, {"name": "big", "cost": 10.0}]
    plan = fit_plan(members, logits, embs, y, LABELS, policy, params)
    texts = [f"t{i}" for i in range(len(y))]
    calls = Calls(logits, embs, texts)
    ans = asyncio.run(PlanRunner(plan).run(texts, calls))
    offline = evaluate_plan(plan, logits, embs, y)
    acc = np.mean([LABELS.index(lab) == t for lab, t in zip(ans.labels, y)])
    assert acc == pytest.approx(offline["accuracy"], abs=1e-12)
    assert all(0.5 <= c <= 1.0 for c in ans.confidences)  # K = 2: the top class has at least half the mass
    shares = {s: np.mean([a == s for a in ans.stages]) for s in set(ans.stages)}
    assert shares == pytest.approx(offline["stage_share"])
    assert np.mean(ans.escalated) == pytest.approx(offline["escalated"])


def test_cascade_calls_the_expensive_member_only_on_open_rows():
    logits, embs, y = _members_and_data()
    plan = fit_plan([{"name": "cheap", "cost": 1.0}, {"name": "big", "cost": 10.0}], logits, embs, y, LABELS,
                    "cascade", {"target_accuracy": 0.9})
    texts = [f"t{i}" for i in range(len(y))]
    calls = Calls(logits, embs, texts)
    ans = asyncio.run(PlanRunner(plan).run(texts, calls))
    # stage 0 (cheap) sees all n rows; stage 1 (big) only the rows cheap was not confident on.
    n_cheap_answered = sum(s == "cheap" for s in ans.stages)
    assert calls.log == [(0, len(y)), (1, len(y) - n_cheap_answered)]
    assert 0 < n_cheap_answered < len(y)
    assert sum(ans.escalated) == len(y) - n_cheap_answered


def test_hard_moe_calls_each_expert_on_its_rows_only():
    logits, embs, y = _members_and_data()
    plan = fit_plan([{"name": "cheap", "cost": 1.0}, {"name": "big", "cost": 10.0}], logits, embs, y, LABELS,
                    "moe", {"mode": "hard"})
    texts = [f"t{i}" for i in range(len(y))]
    calls = Calls(logits, embs, texts)
    ans = asyncio.run(PlanRunner(plan).run(texts, calls))
    n_big = sum(s == "big" for s in ans.stages)
    assert calls.log[0] == (0, len(y))  # the gate member (0) runs first on every row
    assert calls.log[1:] == ([(1, n_big)] if n_big else [])


def test_wrong_logit_shape_names_the_member():
    logits, embs, y = _members_and_data()
    plan = fit_plan([{"name": "cheap", "cost": 1.0}, {"name": "big", "cost": 10.0}], logits, embs, y, LABELS,
                    "weighted", {})

    async def bad(i, texts):
        return np.zeros((len(texts), 3)), np.zeros((len(texts), 2))

    with pytest.raises(ValueError, match=r"member cheap returned logits of shape \(2, 3\); expected \(2, 2\)"):
        asyncio.run(PlanRunner(plan).run(["a", "b"], bad))


def test_stage_names_map_policy_stages_to_members():
    plan = {"members": [{"name": "a"}, {"name": "b"}], "policy": {"order": [1, 0]}}
    # cascade order [1, 0]: stage:0 is member 1 ("b"), stage:1 member 0 ("a")
    assert stage_names(plan, ["stage:0", "stage:1", "fallback", "expert:0", "weighted"]) == [
        "b", "a", "ensemble", "a", "ensemble"]
    assert stage_names({"members": [{"name": "solo"}], "policy": {}}, ["weighted"]) == ["solo"]
