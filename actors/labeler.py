"""Labeler actor: pre-label routing, the review queue and reviewers, over app.labeling's SQLite store."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import ray

from app.atomic_files import write_json_atomic
from app.labeling.oracle import OracleReviewer
from app.labeling.rounds import round_drift
from app.labeling.consensus import quality_scores, weighted_vote
from app.labeling.routing import overlap_sample, route
from app.labeling.store import LabelStore


@ray.remote(max_restarts=2, max_task_retries=0)
class LabelerActor:
    """State lives in the SQLite store (WAL): a restarted actor loses nothing."""

    def __init__(self, db_path: str, allowed_labels: list[str] | None, guideline: str, stale_rule: str = "none"):
        self.store = LabelStore(db_path, allowed_labels=allowed_labels or None)
        before = self.store.current_guideline()[0]
        self.guideline_version = self.store.set_guideline(guideline)
        # a changed guideline sends labels made under the old one back to review (label drift, pitfall 2)
        self.stale_flagged = 0
        if before and self.guideline_version > before and stale_rule != "none":
            self.stale_flagged = self.store.flag_stale(stale_rule)
        # label id at the start of each round, kept beside the store so a restart keeps the round cuts
        self._marks_path = Path(f"{db_path}.rounds.json")
        self._marks: list[int] = json.loads(self._marks_path.read_text()) if self._marks_path.exists() else []

    def _mark_round(self) -> None:
        since = self._marks[-1] if self._marks else 0
        new = self.store.labels(since_id=since)
        self._marks.append(new[-1]["id"] if new else since)
        write_json_atomic(self._marks_path, self._marks, indent=None)

    def route_prelabels(self, items: list[dict], threshold: float, qc_fraction: float, seed: int,
                        model_name: str, overlap_fraction: float = 0.0, overlap_k: int = 2) -> dict:
        """Auto-accept confident pre-labels, queue the rest (and a random QC share) for review.

        ``items``: ``{item_id, payload, suggestion (or None), confidence (NaN when no model)}``.
        """
        self._mark_round()
        conf = np.array([np.nan if it.get("confidence") is None else float(it["confidence"]) for it in items])
        plan = route(conf, threshold, qc_fraction, seed)
        for i in plan.auto:
            it = items[i]
            self.store.auto_accept(it["item_id"], it["suggestion"], float(conf[i]), annotator=model_name,
                                   payload=it.get("payload"))
        queued = [{"item_id": items[i]["item_id"], "payload": items[i].get("payload") or {},
                   "suggestion": items[i].get("suggestion"),
                   "confidence": None if np.isnan(conf[i]) else float(conf[i]),
                   "route_reason": plan.reasons[i]} for i in sorted(plan.review + plan.qc)]
        overlap = overlap_sample([q["item_id"] for q in queued], overlap_fraction, overlap_k, seed) if queued else {}
        for q in queued:
            if q["item_id"] in overlap:
                q["overlap"] = overlap[q["item_id"]]
        self.store.enqueue(queued)
        return {"auto": len(plan.auto), "review": len(plan.review), "qc": len(plan.qc), "overlap": len(overlap),
                "queue_depth": self.store.queue_depth()}

    def review_with_oracle(self, gold: dict[str, str], annotators: int = 1) -> int:
        """SIMULATED reviewers (config ``labeler.reviewer: oracle``) answer from gold labels.

        With overlap, ``annotators`` distinct simulated reviewers (oracle, oracle-2, ...) each take
        what is left for them, so overlap items collect k votes.
        """
        names = ["oracle"] + [f"oracle-{j}" for j in range(2, annotators + 1)]
        return sum(OracleReviewer(n).review(self.store, gold) for n in names)

    def final_labels(self, item_ids: list[str], consensus: str = "majority") -> list[dict]:
        """Pool-ready label records for ``item_ids``: latest label, or the consensus of overlap votes.

        ``majority`` is the store's vote; ``weighted`` re-decides items with two or more votes by
        annotator-quality-weighted voting (app.labeling.consensus.weighted_vote).
        """
        final = self.store.final_labels()
        if consensus == "weighted":
            multi = {i: r for i, r in self.store.ratings().items() if len(r) >= 2}
            if multi:
                res = weighted_vote(multi, self.store.allowed_labels)
                for i, v in res.labels.items():
                    if i in final:
                        final[i] = {**final[i], "value": v.value}
        out = []
        for i in item_ids:
            if i not in final:
                continue
            lab = final[i]
            ts = lab.get("created_at")
            when = dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat() if isinstance(ts, (int, float)) else str(ts)
            conf = lab.get("confidence")
            # reviewers give no probability; the pool records a reviewed label as certain (1.0)
            out.append({"item_id": i, "label": lab["value"], "label_source": lab["source"],
                        "label_confidence": 1.0 if conf is None else float(conf), "annotator": lab.get("annotator"),
                        "guideline_version": lab.get("guideline_version"), "labelled_at": when})
        return out

    def qc_report(self) -> dict:
        """Model suggestion vs reviewer on QC items: how often the auto-accept path would have been wrong."""
        sugg, final = self.store.qc_pairs()
        n = len(final)
        agree = sum(sugg[i] == final[i] for i in final)
        return {"qc_items": n, "qc_agreement": agree / n if n else None}

    def drift_report(self, psi_threshold: float = 0.2, p_threshold: float = 0.01, agreement_drop: float = 0.1) -> dict:
        """This round's label distribution vs all earlier labels (PSI, chi-square) and QC agreement vs
        the previous round; ``alerts`` lists what crossed a threshold (see app.labeling.rounds)."""
        sugg, _ = self.store.qc_pairs()
        return round_drift(self.store.labels(), self.store.final_labels(), sugg, self._marks,
                           psi_threshold=psi_threshold, p_threshold=p_threshold, agreement_drop=agreement_drop)

    def annotator_quality(self) -> dict[str, float]:
        """Smoothed agreement of each annotator with the consensus on multi-annotated items."""
        return quality_scores(self.store.ratings())

    def counts(self) -> dict:
        return {**self.store.counts(), "queue_depth": self.store.queue_depth(),
                "labels_per_hour": self.store.labels_per_hour(),
                "guideline_version": self.guideline_version, "stale_flagged": self.stale_flagged}
