"""Run a fitted ensemble plan on live requests, calling only the members the policy needs.

The Serve ingress passes `call(member_index, texts)`, an async function returning that member's
(logits (r, K), embeddings (r, H)); this module decides whom to call on which rows:

- weighted, soft moe: every member on every row, concurrently;
- hard moe: the gate member first (its embedding feeds the gate), then each other expert on its rows only;
- cascade: members cheapest first on the rows still open (`CascadePlan`), the weighted fallback for the rest.

Kept free of Ray so the same code is unit-tested with plain coroutines.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np

from app.serving.calibration import apply_temperature
from app.serving.fitting import stage_names
from app.serving.registry import EnsembleInputError, load_policy, normalise_rows

MemberCall = Callable[[int, list[str]], Awaitable[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Answer:
    """Ensemble answers for m texts: label name, confidence, answering stage, members called per text."""

    labels: list[str]
    confidences: list[float]
    stages: list[str]
    members_used: list[list[int]]

    @property
    def escalated(self) -> list[bool]:
        """Per text: did it need more than one member (the cost the cascade tries to avoid)."""
        return [len(u) > 1 for u in self.members_used]


class PlanRunner:
    """Holds one fitted plan (see `app.serving.fitting.fit_plan`) and answers batches of texts."""

    def __init__(self, plan: dict[str, Any]):
        self.plan = plan
        self.policy = load_policy(plan["policy"])
        self.temps = [float(m["temperature"]) for m in plan["members"]]
        self.labels = list(plan["labels"])
        self.gate = int(plan.get("gate_member", 0))
        self.n = len(plan["members"])

    def _probs(self, i: int, logits: np.ndarray, rows: int) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if z.shape != (rows, len(self.labels)):
            raise EnsembleInputError(f"member {self.plan['members'][i]['name']} returned logits of shape "
                                     f"{z.shape}; expected ({rows}, {len(self.labels)})")
        return apply_temperature(z, self.temps[i])

    async def run(self, texts: list[str], call: MemberCall) -> Answer:
        """Answer `texts` (m >= 1), calling members through `call` as the policy needs."""
        m = len(texts)
        name = self.policy.name
        if name == "cascade":
            return self._answer(*await self._cascade(texts, call))
        if name == "moe" and self.policy.mode == "hard":
            return self._answer(*await self._hard_moe(texts, call))
        outs = await asyncio.gather(*(call(i, texts) for i in range(self.n)))
        probs = [self._probs(i, o[0], m) for i, o in enumerate(outs)]
        res = self.policy.combine(probs, np.asarray(outs[self.gate][1]) if name == "moe" else None)
        return self._answer(res.probs, res.stage, res.members_used)

    async def _hard_moe(self, texts: list[str], call: MemberCall):
        m = len(texts)
        z, emb = await call(self.gate, texts)
        emb = np.asarray(emb)
        chosen = self.policy.gate(emb).argmax(axis=1)  # (m,)
        probs = [np.full((m, len(self.labels)), 1.0 / len(self.labels)) for _ in range(self.n)]
        probs[self.gate] = self._probs(self.gate, z, m)
        others = [i for i in range(self.n) if i != self.gate and np.any(chosen == i)]

        async def one(i: int) -> None:
            rows = np.flatnonzero(chosen == i)
            probs[i][rows] = self._probs(i, (await call(i, [texts[r] for r in rows]))[0], rows.size)

        await asyncio.gather(*(one(i) for i in others))
        res = self.policy.combine(probs, emb)
        used = [sorted({self.gate, int(c)}) for c in chosen]  # the gate member ran on every row
        return res.probs, res.stage, used

    async def _cascade(self, texts: list[str], call: MemberCall):
        # Same algorithm as CascadePolicy.run (which takes a synchronous callback), awaiting each stage.
        plan = self.policy.plan()
        m = len(texts)
        out = np.full((m, len(self.labels)), np.nan)
        stages = ["fallback"] * m
        used: list[list[int]] = [[] for _ in range(m)]
        seen: dict[int, np.ndarray] = {}
        open_rows = np.arange(m)
        for s, member in enumerate(plan.order):
            if open_rows.size == 0:
                break
            p = self._probs(member, (await call(member, [texts[r] for r in open_rows]))[0], open_rows.size)
            seen.setdefault(member, np.full((m, len(self.labels)), np.nan))[open_rows] = p
            for r in open_rows:
                used[r].append(member)
            hit = plan.confident(s, p)
            out[open_rows[hit]] = p[hit]
            for r in open_rows[hit]:
                stages[r] = f"stage:{s}"
            open_rows = open_rows[~hit]
        if open_rows.size:
            w = plan.fallback_weights
            out[open_rows] = normalise_rows(sum(w[i] * seen[i][open_rows] for i in range(len(w))))
        return out, stages, used

    def _answer(self, probs: np.ndarray, stages: list[str], used: list[list[int]]) -> Answer:
        return Answer([self.labels[int(k)] for k in probs.argmax(axis=1)], [float(c) for c in probs.max(axis=1)],
                      stage_names(self.plan, stages), [list(u) for u in used])
