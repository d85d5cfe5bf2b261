"""Feedback labels for answered requests: which answer a label belongs to, and online accuracy per version.

A client that learns the true label of something the endpoint answered posts it to `POST /feedback` with the
`request_id` of the answer (header `x-request-id` of the /predict response; `index` picks the item of a batch)
or the `text` itself. `AnswerLog` remembers the last `capacity` answered items so the label can be matched
to what was answered, by which model version; `OnlineAccuracy` keeps, per model version, the last `window`
feedback outcomes (correct or not), which gives the online accuracy

    accuracy(v) = (correct labels among the last `window` labels of v) / (labels in that window).

`live_degradation` turns the champion's online accuracy into the controller's "live degradation" trigger.
No I/O, no Ray: the rollout-state actor holds one of each.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from app.pool.normalize import content_key


class FeedbackError(ValueError):
    """Feedback that cannot be matched or used; `status` is the HTTP status the ingress answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def text_key(text: str) -> str:
    """Key of a text for feedback lookup: the pool's item_id of {"text": text} (case and spacing ignored)."""
    return content_key("classify", {"text": text})


class AnswerLog:
    """Bounded memory of answered items, findable by (request_id, index) or by text.

    Each item is {"label", "plan_id", "model_version"}; the oldest requests are forgotten first (FIFO by
    request), so memory stays O(capacity) whatever the traffic.
    """

    def __init__(self, capacity: int = 50_000):
        if capacity < 1:
            raise ValueError(f"capacity = {capacity}; must be >= 1")
        self.capacity = capacity
        self.by_request: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.by_text: dict[str, tuple[str, int]] = {}  # text key -> (request_id, index) of its latest answer

    def add(self, request_id: str, text_keys: list[str], labels: list[str], plan_id: str,
            model_version: str) -> None:
        """Remember one answered request: item i had text key `text_keys[i]` and was answered `labels[i]`."""
        if len(text_keys) != len(labels):
            raise ValueError(f"request {request_id!r}: {len(text_keys)} text keys but {len(labels)} labels")
        self.by_request.pop(request_id, None)
        self.by_request[request_id] = [{"label": lab, "plan_id": plan_id, "model_version": model_version,
                                        "text_key": k} for k, lab in zip(text_keys, labels)]
        for i, k in enumerate(text_keys):
            self.by_text[k] = (request_id, i)
        while len(self.by_request) > self.capacity:
            old_id, items = self.by_request.popitem(last=False)
            for it in items:  # only if that text's latest answer is the forgotten request
                if self.by_text.get(it["text_key"], ("",))[0] == old_id:
                    del self.by_text[it["text_key"]]

    def find(self, request_id: str | None = None, text: str | None = None, index: int | None = None
             ) -> dict[str, Any]:
        """The remembered answer a feedback refers to.

        Args:
            request_id: id of the /predict request (with `index` for an item of a batch, default 0).
            text: the answered text instead of the id (the latest answer of that text).
            index: item of a batch request; only with `request_id`.

        Raises:
            FeedbackError: neither or both of request_id / text (422), index out of range (422), or no such
                answer among the last `capacity` requests (404).
        """
        if (request_id is None) == (text is None):
            raise FeedbackError("give exactly one of 'request_id' or 'text'")
        if text is not None:
            if index is not None:
                raise FeedbackError("'index' goes with 'request_id', not with 'text'")
            hit = self.by_text.get(text_key(text))
            if hit is None or hit[0] not in self.by_request:
                raise FeedbackError(f"no answered request with this text among the last {self.capacity} "
                                    "requests", status=404)
            request_id, index = hit
        items = self.by_request.get(request_id)
        if items is None:
            raise FeedbackError(f"no answered request with request_id {request_id!r} among the last "
                                f"{self.capacity} requests", status=404)
        i = 0 if index is None else index
        if not 0 <= i < len(items):
            raise FeedbackError(f"index = {i}; request {request_id!r} answered {len(items)} item(s), "
                                f"allowed 0..{len(items) - 1}")
        return {**items[i], "request_id": request_id, "index": i}


class OnlineAccuracy:
    """Per model version, the outcomes (correct or not) of its last `window` feedback labels."""

    def __init__(self, window: int = 500):
        if window < 1:
            raise ValueError(f"window = {window}; must be >= 1")
        self.window = window
        self.outcomes: dict[str, deque[bool]] = {}
        self.total: dict[str, int] = {}  # all labels ever received, beyond the window

    def record(self, model_version: str, correct: bool) -> None:
        """Add one feedback outcome for `model_version`."""
        self.outcomes.setdefault(model_version, deque(maxlen=self.window)).append(bool(correct))
        self.total[model_version] = self.total.get(model_version, 0) + 1

    def summary(self, model_version: str) -> dict[str, Any]:
        """{"model_version", "accuracy" (None without labels), "labelled" (in the window), "total", "window"}."""
        d = self.outcomes.get(model_version, ())
        return {"model_version": model_version, "accuracy": sum(d) / len(d) if d else None, "labelled": len(d),
                "total": self.total.get(model_version, 0), "window": self.window}


def live_degradation(online: dict[str, Any], tolerance: float = 0.05, min_labels: int = 30) -> dict[str, Any]:
    """The controller's "live degradation" trigger, read from `status()["online"]` of an endpoint.

    degraded  <=>  champion labelled >= min_labels  and  val_accuracy - online_accuracy > tolerance,

    where val_accuracy is what the champion's plan scored on the val split when it was fitted.

    Args:
        online: the "online" block of `jobs.serve status` / `jobs.serve_up.online(...)`.
        tolerance: largest accepted drop of accuracy (absolute, 0..1).
        min_labels: fewest feedback labels in the window before the trigger may fire.

    Returns:
        {"degraded": bool, "reason": str, "model_version", "accuracy", "val_accuracy", "drop", "labelled"}.
    """
    if not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance = {tolerance}; allowed 0..1")
    champ = (online or {}).get("champion") or {}
    acc, val, n = champ.get("accuracy"), champ.get("val_accuracy"), int(champ.get("labelled") or 0)
    out = {"degraded": False, "model_version": champ.get("model_version"), "accuracy": acc, "val_accuracy": val,
           "drop": None, "labelled": n}
    if acc is None or val is None or n < min_labels:
        return {**out, "reason": f"{n} feedback labels in the window; min_labels is {min_labels}"}
    drop = val - acc
    degraded = drop > tolerance
    return {**out, "degraded": degraded, "drop": drop,
            "reason": f"online accuracy {acc:.4f} is {drop:+.4f} below val accuracy {val:.4f} "
                      f"({'>' if degraded else '<='} tolerance {tolerance}) over {n} labels"}
