"""Routing state of an ensemble endpoint: champion, canary challenger, retired deployments, live counters.

One `Rollout` lives in the rollout-state actor. Ingress replicas `sync` with it a few times a second: they
send what they served (request records, shadow comparisons, in-flight counts per plan) and get back the
routing (champion plan, challenger plan, traffic percent, settings) tagged with an `epoch` that grows on every
change. That gives the two guarantees the endpoint needs:

- canary gates judge live windows (`app.serving.canary.evaluate_window`), and a failing gate rolls back in the
  same call that saw the failing window (a sync, or a feedback label: `feedback`);
- zero dropped requests: a plan that leaves the routing is only *retired*; its Serve apps may be deleted
  (`collectable`) once every live ingress replica has acknowledged the new epoch and reports no request in
  flight on it, and a grace period has passed.

Time is passed in (`now`, seconds) so the rules are unit-tested without clocks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from app.serving.canary import CanaryPlan, WindowStats, evaluate_window, next_action
from app.serving.feedback import AnswerLog, FeedbackError, OnlineAccuracy


class Rollout:
    """Champion / challenger routing with canary gates and drain-before-delete (module docstring)."""

    def __init__(self, plan: CanaryPlan | None = None, grace_s: float = 2.0, stale_s: float = 10.0,
                 feedback_window: int = 500, remember: int = 50_000):
        self.canary = plan or CanaryPlan()
        self.answers = AnswerLog(remember)  # what was answered, so a later feedback label can be judged
        self.online = OnlineAccuracy(feedback_window)
        self.grace_s, self.stale_s = grace_s, stale_s
        self.champion: dict[str, Any] | None = None  # {"plan_id", "model_version", "plan", "apps"}
        self.challenger: dict[str, Any] | None = None
        self.step = 0
        self.epoch = 0
        self.settings: dict[str, Any] = {}
        self.retired: dict[str, dict[str, Any]] = {}  # plan_id -> {"apps", "epoch", "since", "model_version"}
        self.replicas: dict[str, dict[str, Any]] = {}
        self.windows = {"champion": WindowStats(), "challenger": WindowStats()}
        self.counts: Counter = Counter()
        self.stage_counts: Counter = Counter()
        self.events: list[dict[str, Any]] = []

    # ---- changes made by `up` -----------------------------------------------------------------
    def configure(self, settings: dict[str, Any], canary: CanaryPlan | None = None) -> None:
        """Replace the settings every ingress reads (limits, auth hash, sampling) and the canary thresholds."""
        window = int(settings.get("feedback_window", self.online.window))
        if window != self.online.window:  # keep what was measured, in the new window length
            old, self.online = self.online, OnlineAccuracy(window)
            for v, d in old.outcomes.items():
                self.online.outcomes[v] = type(d)(d, maxlen=window)
            self.online.total = dict(old.total)
        remember = int(settings.get("feedback_remember", self.answers.capacity))
        if remember != self.answers.capacity:
            self.answers.capacity = remember
        if settings != self.settings or (canary is not None and canary != self.canary):
            self.settings = dict(settings)
            self.canary = canary or self.canary
            self.epoch += 1

    def _retire(self, variant: dict[str, Any] | None, now: float) -> None:
        if variant is None:
            return
        live = {v["plan_id"] for v in (self.champion, self.challenger) if v is not None}
        if variant["plan_id"] not in live:  # a plan that is still routed (e.g. promoted) is not retired
            self.retired[variant["plan_id"]] = {"apps": list(variant["apps"]), "epoch": self.epoch, "since": now,
                                                "model_version": variant["model_version"]}

    def set_champion(self, variant: dict[str, Any], now: float) -> bool:
        """Route 100 % of non-canary traffic to `variant`; the previous champion is retired. True if changed."""
        if self.champion is not None and self.champion["plan_id"] == variant["plan_id"]:
            return False
        old, self.champion = self.champion, dict(variant)
        self.retired.pop(variant["plan_id"], None)
        self.epoch += 1
        self._retire(old, now)
        self._event("champion_set", now, model_version=variant["model_version"],
                    previous=old["model_version"] if old else None)
        return True

    def start_canary(self, variant: dict[str, Any], now: float) -> bool:
        """Start (or keep) a canary of `variant` at the first step. True if a new canary started."""
        if self.challenger is not None and self.challenger["plan_id"] == variant["plan_id"]:
            return False
        old, self.challenger = self.challenger, dict(variant)
        self.retired.pop(variant["plan_id"], None)
        self.step = 0
        self.windows = {"champion": WindowStats(), "challenger": WindowStats()}
        self.epoch += 1
        self._retire(old, now)
        self._event("canary_started", now, model_version=variant["model_version"], percent=self.percent)
        return True

    def stop_canary(self, reason: str, now: float) -> bool:
        """Send all traffic back to the champion (no gate involved). True if a canary was running."""
        if self.challenger is None:
            return False
        old, self.challenger = self.challenger, None
        self.epoch += 1
        self._retire(old, now)
        self._event("canary_stopped", now, model_version=old["model_version"], reason=reason)
        return True

    @property
    def percent(self) -> float:
        """Share of traffic (percent) routed to the challenger now."""
        return float(self.canary.steps[self.step]) if self.challenger is not None else 0.0

    def routing(self) -> dict[str, Any]:
        """What an ingress replica needs to route: epoch, both variants, traffic percent, salt, settings, and the
        online accuracy it shows in /metadata."""
        return {"epoch": self.epoch, "champion": self.champion, "challenger": self.challenger,
                "percent": self.percent, "salt": self.challenger["plan_id"] if self.challenger else "",
                "settings": self.settings, "online": self.online_status()}

    # ---- live traffic -------------------------------------------------------------------------
    def sync(self, replica_id: str, report: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Take one ingress report; apply its records; judge the canary window. Returns new events.

        report: {"epoch": int, "inflight": {plan_id: n}, "requests": [{"plan_id", "latency_ms", "error",
        "stages": [...], "escalated": int}], "shadows": [{"plan_id", "champion_plan_id", "agreed", "compared",
        "champion_latency_ms"}], "answers": [{"request_id", "text_keys", "labels", "plan_id", "model_version"}]}.
        """
        self.replicas[replica_id] = {"epoch": int(report.get("epoch", -1)), "seen": now,
                                     "inflight": {k: int(v) for k, v in report.get("inflight", {}).items() if v}}
        champ = self.champion["plan_id"] if self.champion else None
        chall = self.challenger["plan_id"] if self.challenger else None
        for r in report.get("requests", []):
            variant = "challenger" if r["plan_id"] == chall else "champion" if r["plan_id"] == champ else None
            self.counts[f"requests:{variant or 'retired'}"] += 1
            self.counts["errors"] += bool(r.get("error"))
            self.counts["items"] += len(r.get("stages", []))
            self.counts["escalated"] += int(r.get("escalated", 0))
            self.stage_counts.update(r.get("stages", []))
            if variant is not None:
                self.windows[variant].record(float(r["latency_ms"]), bool(r.get("error")))
        for s in report.get("shadows", []):
            if chall is None or s["plan_id"] != chall or s.get("champion_plan_id") != champ:
                continue
            for k in range(int(s["compared"])):
                self.windows["challenger"].record_agreement(k < int(s["agreed"]))
            if s.get("champion_latency_ms") is not None:
                self.windows["champion"].record(float(s["champion_latency_ms"]))
        for a in report.get("answers", []):
            self.answers.add(a["request_id"], a["text_keys"], a["labels"], a["plan_id"], a["model_version"])
        return self._judge(now)

    def feedback(self, label: str, now: float, request_id: str | None = None, text: str | None = None,
                 index: int | None = None, answer: dict[str, Any] | None = None) -> dict[str, Any]:
        """Take the true label of an answered item; update online accuracy and the canary windows.

        The answer is `answer` when the ingress still had it (not yet synced), else looked up by request_id
        (+ index) or text. The outcome counts for the answer's model version, and for the canary window of
        the variant (champion or challenger) that answered, which may roll the challenger back at once.

        Returns:
            {"request_id", "index", "model_version", "variant", "predicted", "label", "correct", "events"}.

        Raises:
            FeedbackError: label not among the plan's labels (422); no such answer (404); bad query (422).
        """
        allowed = (self.champion or {}).get("plan", {}).get("labels")
        if allowed and label not in allowed:
            raise FeedbackError(f"label {label!r} is not one of the endpoint's labels {list(allowed)}")
        ans = answer if answer is not None else self.answers.find(request_id, text, index)
        correct = ans["label"] == label
        self.online.record(ans["model_version"], correct)
        variant = next((k for k, v in (("champion", self.champion), ("challenger", self.challenger))
                        if v is not None and v["plan_id"] == ans["plan_id"]), None)
        if variant is not None:
            self.windows[variant].record_feedback(correct)
        self.counts["feedback"] += 1
        self.counts["feedback_correct"] += correct
        return {"request_id": ans.get("request_id", request_id), "index": ans.get("index", index or 0),
                "model_version": ans["model_version"], "variant": variant or "retired",
                "predicted": ans["label"], "label": label, "correct": correct, "events": self._judge(now)}

    def online_status(self) -> dict[str, Any]:
        """Online (feedback) accuracy of the champion and challenger versions, and of recent versions.

        {"window", "champion": {"model_version", "accuracy", "labelled", "total", "window", "val_accuracy"},
         "challenger": {...} or None, "by_version": {version: {...}}}; `val_accuracy` is the plan's accuracy
        on the val split when it was fitted (what `app.serving.feedback.live_degradation` compares with).
        """
        def one(v: dict[str, Any] | None) -> dict[str, Any] | None:
            if v is None:
                return None
            return {**self.online.summary(v["model_version"]),
                    "val_accuracy": (v.get("plan", {}).get("val") or {}).get("accuracy")}

        recent = list(self.online.outcomes)[-20:]
        return {"window": self.online.window, "champion": one(self.champion), "challenger": one(self.challenger),
                "by_version": {v: self.online.summary(v) for v in recent}}

    def _judge(self, now: float) -> list[dict[str, Any]]:
        if self.challenger is None:
            return []
        result = evaluate_window(self.canary, self.windows["champion"], self.windows["challenger"])
        action = next_action(self.canary, self.step, result)
        if action == "hold":
            return []
        version = self.challenger["model_version"]
        before = len(self.events)
        metrics = {k: v for k, v in result.metrics.items() if v is not None}
        if action == "rollback":
            old, self.challenger = self.challenger, None
            self.epoch += 1
            self._retire(old, now)
            self._event("rollback", now, model_version=version, reason="; ".join(result.reasons), metrics=metrics,
                        registry=_registry_refs(old))
        elif action == "advance":
            self.step += 1
            self.windows = {"champion": WindowStats(), "challenger": WindowStats()}
            self.epoch += 1
            self._event("canary_advanced", now, model_version=version, percent=self.percent, metrics=metrics)
        else:  # done: the challenger becomes the champion
            old, self.champion, self.challenger = self.champion, self.challenger, None
            self.epoch += 1
            self._retire(old, now)
            self._event("promoted", now, model_version=version, previous=old["model_version"] if old else None,
                        metrics=metrics, registry=_registry_refs(self.champion))
        return self.events[before:]

    # ---- drain before delete ------------------------------------------------------------------
    def live_replicas(self, now: float) -> dict[str, dict[str, Any]]:
        """Ingress replicas that synced within `stale_s` seconds."""
        return {k: v for k, v in self.replicas.items() if now - v["seen"] <= self.stale_s}

    def collectable(self, now: float) -> list[tuple[str, list[str]]]:
        """Retired plans whose apps can be deleted now: (plan_id, app names).

        Safe when the grace period has passed and every live replica is at or past the retiring epoch (so it
        routes no new request there) and has nothing in flight on that plan.
        """
        live = self.live_replicas(now).values()
        out = []
        for pid, r in self.retired.items():
            if now - r["since"] < self.grace_s:
                continue
            if all(v["epoch"] >= r["epoch"] and not v["inflight"].get(pid) for v in live):
                out.append((pid, list(r["apps"])))
        return out

    def forget(self, plan_id: str) -> None:
        """Drop a retired plan once its apps are deleted."""
        self.retired.pop(plan_id, None)

    # ---- reporting ----------------------------------------------------------------------------
    def _event(self, kind: str, now: float, **fields: Any) -> None:
        self.events.append({"event": kind, "time": now, "epoch": self.epoch, **fields})

    def status(self, now: float) -> dict[str, Any]:
        """JSON-safe summary: variants, split, windows, counters, retired plans, live replicas."""
        items = self.counts["items"]
        brief = (lambda v: None if v is None else {"model_version": v["model_version"], "plan_id": v["plan_id"],
                                                    "apps": v["apps"]})
        return {
            "epoch": self.epoch, "champion": brief(self.champion), "challenger": brief(self.challenger),
            "traffic": {"champion": 100.0 - self.percent, "challenger": self.percent,
                        "step": self.step if self.challenger else None, "steps": list(self.canary.steps)},
            "windows": {k: w.to_dict() for k, w in self.windows.items()},
            "counts": dict(self.counts), "stage_counts": dict(self.stage_counts),
            "escalation_rate": self.counts["escalated"] / items if items else None,
            "retired": {k: {"apps": v["apps"], "model_version": v["model_version"]} for k, v in self.retired.items()},
            "ingress_replicas": len(self.live_replicas(now)), "events": self.events[-20:],
            "online": self.online_status(),
        }


def _registry_refs(variant: dict[str, Any]) -> list[dict[str, str]]:
    """Registry entries (name, version, alias) of a variant's members that were resolved through an alias."""
    return [{"name": m["registered_name"], "version": str(m["version"]), "alias": m["alias"]}
            for m in variant.get("plan", {}).get("members", []) if m.get("registered_name") and m.get("alias")]
