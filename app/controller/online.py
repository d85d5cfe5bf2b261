"""The live-degradation trigger's input: the online metric of the deployed endpoint.

Serving keeps, per endpoint, the champion's accuracy over its last feedback labels and the accuracy
its plan scored on the val split when fitted (``jobs.serve_up.online`` → ``status["online"]``).
``online_trigger_inputs`` turns that block into the ``(online_metric, threshold)`` pair the
trigger compares (``degraded ⇔ online_metric < threshold``):

* ``absolute``: threshold = ``triggers.degradation_threshold`` (a fixed accuracy floor);
* ``relative``: threshold = val_accuracy − tolerance, so ``degraded ⇔ val − acc > tolerance``,
  the same verdict as ``app.serving.feedback.live_degradation``.

Too few feedback labels (< ``min_labels``) or no accuracy yet gives no metric (``None``): the
degraded condition stays False rather than firing on three unlucky labels.
"""

from __future__ import annotations

import math
from typing import Any

from app.controller.settings import OnlineSignalConfig


def _num(name: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"online.champion.{name} must be a finite number or None, got {v!r}")
    return float(v)


def online_trigger_inputs(
    online: dict[str, Any] | None, cfg: OnlineSignalConfig, absolute_threshold: float | None
) -> tuple[float | None, float | None, dict[str, Any]]:
    """The online metric and the threshold it is compared with, from an endpoint's ``online`` block.

    Args:
        online: ``{"champion": {"accuracy", "val_accuracy", "labelled", "model_version", ...}, ...}``
            as returned by ``jobs.serve_up.online``; None when no endpoint answered.
        cfg: Which mode, tolerance and minimum label count to use.
        absolute_threshold: ``triggers.degradation_threshold`` (used in ``absolute`` mode).

    Returns:
        ``(metric, threshold, detail)``: metric is the champion's online accuracy or None (no
        endpoint, no accuracy, or fewer than ``min_labels`` labels); threshold is what the trigger
        compares it with (None disables the condition: absolute mode with no threshold); detail
        holds every input for the trigger log.
    """
    champ = (online or {}).get("champion") or {}
    acc, val = _num("accuracy", champ.get("accuracy")), _num("val_accuracy", champ.get("val_accuracy"))
    n = champ.get("labelled") or 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"online.champion.labelled must be an int >= 0, got {n!r}")
    detail = {"endpoint": cfg.endpoint, "mode": cfg.threshold, "accuracy": acc, "val_accuracy": val, "labelled": n,
              "min_labels": cfg.min_labels, "model_version": champ.get("model_version")}
    if cfg.threshold == "relative" and val is not None:
        threshold = round(val - cfg.tolerance, 12)  # 12 digits: 0.9 - 0.05 reads 0.85, not 0.8500000000000001
        detail["tolerance"] = cfg.tolerance
    else:
        threshold = absolute_threshold  # absolute mode, or relative with no val accuracy known yet
    metric = acc if (acc is not None and n >= cfg.min_labels and (cfg.threshold == "absolute" or val is not None)) else None
    detail["threshold"] = threshold
    return metric, threshold, detail
