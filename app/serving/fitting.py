"""Fit an ensemble on the validation split: per-member temperature scaling, then the configured policy.

Input is what every member said on the val split (logits (n, K), pooled embeddings (n, H)) and the seconds
per item it took; output is a JSON-safe *plan* that the Serve ingress runs (`app.serving.runtime`) and the
benchmark evaluates offline. Calibration comes first because cascade thresholds and moe gates read the
members' confidences (Guo et al. 2017: temperature scaling fixes most mis-calibration of neural nets).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from app.serving.calibration import apply_temperature, expected_calibration_error, fit_temperature
from app.serving.registry import get


def calibrate_members(val_logits: Sequence[np.ndarray], labels: np.ndarray, calibrate: bool = True,
                      n_bins: int = 15) -> list[dict[str, float]]:
    """Per member: temperature T (1.0 when not calibrating), val accuracy and ECE before / after softmax(z / T).

    Args:
        val_logits: N arrays (n, K).
        labels: (n,) integer labels.
        calibrate: fit T by minimum val NLL (`fit_temperature`); False keeps T = 1.
        n_bins: ECE bins.
    """
    out = []
    for z in val_logits:
        t = fit_temperature(z, labels) if calibrate else 1.0
        before = apply_temperature(z, 1.0)
        after = apply_temperature(z, t)
        out.append({"temperature": float(t), "val_accuracy": float(np.mean(before.argmax(1) == labels)),
                    "ece_before": expected_calibration_error(before, labels, n_bins),
                    "ece_after": expected_calibration_error(after, labels, n_bins)})
    return out


def fit_plan(members: list[dict[str, Any]], val_logits: Sequence[np.ndarray], val_embeddings: Sequence[np.ndarray],
             labels: np.ndarray, label_names: list[str], policy_name: str, policy_params: dict[str, Any],
             gate_member: int = 0, calibrate: bool = True, n_bins: int = 15) -> dict[str, Any]:
    """Calibrate every member and fit the policy; return the plan the ingress serves.

    Args:
        members: N dicts with at least "name" and "cost" (seconds per item or a configured cost); other keys
            (uri, version, app names) are copied into the plan.
        val_logits: N arrays (n, K) on the val split.
        val_embeddings: N arrays (n, H_i); only `val_embeddings[gate_member]` is used (moe gate input).
        labels: (n,) val labels.
        label_names: K class names.
        policy_name: registered policy ("weighted", "moe", "cascade").
        policy_params: keyword arguments of the policy's fit (e.g. target_accuracy, mode).
        gate_member: index of the member whose embedding feeds a moe gate.
        calibrate: temperature-scale members first.
        n_bins: ECE bins.

    Returns:
        {"labels", "members": [... + temperature, ece_before, ece_after, val_accuracy], "policy": to_dict(),
         "gate_member", "val": {"n", "accuracy", "expected_cost"}}.
    """
    cal = calibrate_members(val_logits, labels, calibrate, n_bins)
    probs = [apply_temperature(z, c["temperature"]) for z, c in zip(val_logits, cal)]
    costs = [float(m["cost"]) for m in members]
    policy = get(policy_name)()
    policy.fit(probs, labels, costs=costs, val_embeddings=np.asarray(val_embeddings[gate_member]), **policy_params)
    out = policy.combine(probs, np.asarray(val_embeddings[gate_member]))
    used_cost = [sum(costs[i] for i in used) for used in out.members_used]
    return {
        "labels": list(label_names),
        "members": [{**m, **c} for m, c in zip(members, cal)],
        "policy": policy.to_dict(),
        "gate_member": int(gate_member),
        "val": {"n": int(len(labels)), "accuracy": float(np.mean(out.probs.argmax(1) == labels)),
                "expected_cost": float(np.mean(used_cost))},
    }


def evaluate_plan(plan: dict[str, Any], logits: Sequence[np.ndarray], embeddings: Sequence[np.ndarray],
                  labels: np.ndarray) -> dict[str, Any]:
    """Offline score of a fitted plan on precomputed member outputs (e.g. the test split).

    Returns:
        {"accuracy", "expected_cost" (sum of the costs of the members each item needed, averaged),
         "escalated" (share of items needing more than one member), "stage_share": {stage: share}}.
    """
    from app.serving.registry import load_policy

    policy = load_policy(plan["policy"])
    probs = [apply_temperature(z, m["temperature"]) for z, m in zip(logits, plan["members"])]
    out = policy.combine(probs, np.asarray(embeddings[plan["gate_member"]]))
    used = out.members_used
    if plan["policy"]["policy"] == "moe" and plan["policy"].get("mode") == "hard":
        # Live, the gate member runs on every item to produce the gate's input embedding.
        used = [sorted({plan["gate_member"], *u}) for u in used]
    costs = [m["cost"] for m in plan["members"]]
    names = stage_names(plan, out.stage)
    return {"accuracy": float(np.mean(out.probs.argmax(1) == labels)),
            "expected_cost": float(np.mean([sum(costs[i] for i in u) for u in used])),
            "escalated": float(np.mean([len(u) > 1 for u in used])),
            "stage_share": {s: float(np.mean([n == s for n in names])) for s in sorted(set(names))}}


def stage_names(plan: dict[str, Any], policy_stages: Sequence[str]) -> list[str]:
    """Policy stage labels -> what the API reports: the answering member's name, or "ensemble".

    "stage:s" is the member at position s of the cascade order, "expert:i" member i; a one-member plan always
    names that member; "weighted", "moe" and "fallback" mix members, so they read "ensemble".
    """
    names = [m["name"] for m in plan["members"]]
    order = plan["policy"].get("order")
    out = []
    for s in policy_stages:
        if len(names) == 1:
            out.append(names[0])
        elif s.startswith("stage:") and order is not None:
            out.append(names[order[int(s.split(":")[1])]])
        elif s.startswith("expert:"):
            out.append(names[int(s.split(":")[1])])
        else:
            out.append("ensemble")
    return out
