"""Pre-label the chosen items, route them (auto-accept / review / QC), review, and write labels to the pool."""

from __future__ import annotations

from pathlib import Path

import ray

from jobs.stages.context import StageContext
from jobs.stages.select import score


def label(ctx: StageContext, chosen: dict, model_dir, r: int, label_names: list[str]) -> dict:
    """Label round ``r``'s chosen rows; returns routing counts, drift alerts and the new pool version."""
    import mlflow

    from app.models.scoring import LMPrelabeler

    c = ctx.cfg
    rows = chosen["rows"]
    key = "text" if c.task == "classify" else "prompt"
    if c.task == "sft" and model_dir is not None:
        import pyarrow as pa

        t = pa.table({"item_id": [x["item_id"] for x in rows], "prompt": [x["prompt"] for x in rows]})
        pre = score(ctx, t, model_dir, LMPrelabeler, {"model_dir": model_dir, "max_length": c.model.max_length,
                                                      "max_new_tokens": c.labeler.max_new_tokens})
        for row, s, conf in zip(rows, pre["suggestion"], pre["confidence"]):
            row["suggestion"], row["confidence"] = str(s), float(conf)
    items = [{"item_id": x["item_id"], "payload": {key: x[key]}, "suggestion": x.get("suggestion"),
              "confidence": x.get("confidence")} for x in rows]
    model_name = f"model:{Path(str(model_dir)).name}" if model_dir else "none"
    L = c.labeler
    counts = ray.get(ctx.labeler.route_prelabels.remote(items, L.threshold, L.qc_fraction, L.seed + r, model_name,
                                                        L.overlap_fraction, L.overlap_k))
    gold = {x["item_id"]: x["gold"] for x in rows if x.get("gold") is not None}
    if c.labeler.reviewer != "oracle":
        raise NotImplementedError("labeler.reviewer: human needs the review page; use the oracle for the demo")
    reviewed = ray.get(ctx.labeler.review_with_oracle.remote(gold, L.overlap_k if L.overlap_fraction else 1))
    labels = ray.get(ctx.labeler.final_labels.remote([x["item_id"] for x in rows], L.consensus))
    drift = ray.get(ctx.labeler.drift_report.remote(L.drift_psi, L.drift_p, L.agreement_drop))
    mlflow.log_dict(drift, f"labels/drift_round{r}.json")
    if drift.get("psi") is not None:
        mlflow.log_metric(f"round{r}.label_psi", drift["psi"])
    for alert in drift.get("alerts", []):
        ctx.prog.say(f"  [yellow]ALERT[/yellow] {alert}")
        mlflow.set_tag(f"flywheel.alert.round{r}", alert[:500])
    if L.overlap_fraction:
        mlflow.log_dict(ray.get(ctx.labeler.annotator_quality.remote()), f"labels/annotator_quality_round{r}.json")
    lc = ray.get(ctx.labeler.counts.remote())
    qc = ray.get(ctx.labeler.qc_report.remote())
    version = ray.get(ctx.pool.add_labels.remote(labels, {
        "round": r, "strategy": chosen["strategy"], "labels": len(labels), "guideline_version": lc["guideline_version"],
        "item_ids": [lab["item_id"] for lab in labels],
        "routing": counts, "reviewer": "oracle (simulated annotator)", "mlflow_run_id": ctx.run_id}))
    ctx.prog.say(f"  routed: {counts['auto']} auto-accepted, {counts['review']} to review, {counts['qc']} QC; "
                 f"reviewer 'oracle' (simulated) labelled {reviewed}; pool now v{version}")
    mlflow.log_metrics({f"round{r}.auto": counts["auto"], f"round{r}.review": counts["review"],
                        f"round{r}.qc": counts["qc"], f"round{r}.oracle_labels": reviewed})
    if qc["qc_agreement"] is not None:
        mlflow.log_metric(f"round{r}.qc_agreement", qc["qc_agreement"])
    return {"auto": counts["auto"], "review": counts["review"], "qc": counts["qc"], "oracle": reviewed,
            "overlap": counts["overlap"], "drift_alerts": drift.get("alerts", []),
            "labels": len(labels), "pool_version": version, "qc_agreement": qc["qc_agreement"]}
