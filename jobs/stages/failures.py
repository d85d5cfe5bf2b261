"""Evaluation feedback (7.1.5): the candidate's test failures, kept for the next selection and the review.

``collect``  (after evaluate) scores the test set with the candidate, keeps the failures
(``app.controller.failures.find_failures``) in ``failures.json``, clusters them into
guideline-review items (``guideline_review.json`` in the run store, and in MLflow).

``prioritise`` (inside select) embeds the saved failure texts with the model that scores the pool
(the same space as the pool embeddings), gives pool items near them a bounded bonus and reserves at
most ``feedback.share`` of the budget for the highest bonuses; the strategy picks the rest.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray

from app.atomic_files import write_json_atomic
from jobs.stages.context import StageContext


@ray.remote(num_cpus=1)
def _score_test_set(model_dir: str, texts: list[str], batch_size: int) -> dict[str, np.ndarray]:
    """A model's probabilities, predictions and embeddings of a few texts (test set, saved failures), in order.

    One task, not the pool's Ray Data actor pool: these sets are small and scored once, and the task lands in a
    worker an evaluate or scoring task already used (same resource shape), where torch and transformers are
    imported; starting a Data pipeline and its actor costs more than the scoring (about 10 s on 2 CPUs).
    """
    from app.models.scoring import ClassifierScorer

    scorer = ClassifierScorer(model_dir)
    parts = [scorer({"item_id": np.arange(i, min(i + batch_size, len(texts))),
                     "text": np.asarray(texts[i:i + batch_size], dtype=object)})
             for i in range(0, len(texts), batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("probs", "pred", "embedding")}


def collect(ctx: StageContext, model_dir: str, inputs: list[str], targets: list[str], label_names: list[str],
            out_dir: Path, r: int, guideline_version=None) -> dict:
    """Save the candidate's failures and their guideline-review clusters; returns counts and file paths."""
    import mlflow

    from app.controller.failures import find_failures, guideline_review_items
    from app.controller.feedback import failure_clusters

    fc = ctx.cfg.controller.feedback
    known = {n: i for i, n in enumerate(label_names)}
    rows = [(x, t) for x, t in zip(inputs, targets) if t in known]  # a gold label outside the label set cannot be scored
    if not rows:
        return {"failures": 0, "failures_file": None, "review_items": 0, "review_file": None}
    scored = ray.get(_score_test_set.remote(model_dir, [x for x, _ in rows], ctx.cfg.selection.batch_size))
    probs = scored["probs"]
    y = np.array([known[t] for _, t in rows], dtype=np.int64)
    idx = find_failures(probs, y, fc.low_score, fc.max_failures)
    fails = [{"text": rows[i][0], "target": rows[i][1], "pred": str(scored["pred"][i]),
              "p_true": round(float(probs[i, y[i]]), 6)} for i in idx]
    ffile = out_dir / "failures.json"
    write_json_atomic(ffile, {"iteration": r, "model_dir": model_dir, "low_score": fc.low_score,
                              "test_items": len(rows), "failures": fails})
    review = []
    if fails:
        emb = scored["embedding"][idx]
        clusters = failure_clusters(emb, [f["text"] for f in fails], fc.n_clusters, seed=r)
        review = guideline_review_items(clusters, fails, r, guideline_version)
    rfile = ctx.store / "runs" / str(ctx.run_id) / "guideline_review.json"
    write_json_atomic(rfile, review)
    mlflow.log_dict({"failures": fails}, f"feedback/failures_iter{r}.json")
    mlflow.log_dict(review, f"feedback/guideline_review_iter{r}.json")
    mlflow.log_metrics({"feedback.failures": len(fails), "feedback.review_items": len(review)})
    ctx.prog.say(f"  feedback: {len(fails)} failed test items of {len(rows)}; {len(review)} guideline-review clusters")
    return {"failures": len(fails), "failures_file": str(ffile), "review_items": len(review), "review_file": str(rfile)}


def prioritise(ctx: StageContext, table, inp, budget: int, model_dir: str, failures_file: str | None):
    """Reserve rows near the saved failures before the strategy picks.

    Args:
        table: pool rows being selected from (``item_id``, ``text``), in ``inp`` order.
        inp: the ``SelectionInput`` built from the pool (its ``embeddings`` are used).
        budget: rows to pick in all.
        model_dir: the model that embedded the pool (embeds the failures too).
        failures_file: ``failures.json`` of an earlier iteration, or None.

    Returns:
        ``(reserved (q,) int64, bonus (n,), nearest (n,), inp with the reserved rows excluded, failures)``;
        ``None`` when there is nothing to do (no file, no failures, no embeddings, share 0).
    """
    from app.controller.failures import failure_bonus, reserve_for_failures

    fc = ctx.cfg.controller.feedback
    if not fc.enabled or not failures_file or inp.embeddings is None or not Path(failures_file).exists():
        return None
    fails = json.loads(Path(failures_file).read_text())["failures"]
    if not fails:
        return None
    femb = ray.get(_score_test_set.remote(model_dir, [f["text"] for f in fails],
                                          ctx.cfg.selection.batch_size))["embedding"]
    bonus, nearest = failure_bonus(inp.embeddings, femb, fc.k, fc.max_bonus)
    reserved = reserve_for_failures(bonus, budget, fc.share, inp.exclude)
    if reserved.size == 0:
        return None
    excl = reserved if inp.exclude is None else np.union1d(np.asarray(inp.exclude, dtype=np.int64), reserved)
    return reserved, bonus, nearest, replace(inp, exclude=excl), fails
