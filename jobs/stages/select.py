"""Score the unlabelled pool with the current model (Ray Data actor pool) and pick a batch to label."""

from __future__ import annotations

import numpy as np
import ray

from jobs.stages.context import StageContext


def score(ctx: StageContext, table, model_dir, udf, kwargs):
    """Run ``udf`` (a scorer class) over ``table`` with Ray Data; rows come back in ``table``'s order."""
    import ray.data

    c = ctx.cfg.selection
    # several blocks so every actor of the pool gets work (one Arrow table is one block). Slice in the
    # driver: a repartition would run tasks needing a whole free CPU, which the actor pool may hold.
    blocks = max(1, min(c.concurrency * 4, table.num_rows // max(1, c.batch_size)))
    size = -(-table.num_rows // blocks)
    parts = [table.slice(i, size) for i in range(0, table.num_rows, size)]
    ds = ray.data.from_arrow(parts).map_batches(
        udf, fn_constructor_kwargs=kwargs, batch_size=c.batch_size, concurrency=c.concurrency,
        num_cpus=c.actor_cpus, batch_format="numpy")
    df = ds.to_pandas()
    pos = {i: k for k, i in enumerate(df["item_id"])}
    return df.iloc[[pos[i] for i in table.column("item_id").to_pylist()]].reset_index(drop=True)


def _with_reserved(strategy: str, pre, budget: int, seed: int, run_strategy):
    """Reserved failure neighbours first, then the strategy's picks among the other rows."""
    from app.selection import SelectionResult

    reserved, bonus, nearest, inp, fails = pre
    rest = budget - len(reserved)
    res = (run_strategy(strategy, inp, rest, seed=seed) if rest > 0 and inp.n > len(inp.exclude)
           else SelectionResult([], {}, []))
    why = []
    for i in reserved:
        f = fails[int(nearest[i])]
        why.append(f"feedback: bonus {bonus[i]:.3f} near failed test item {f['text'][:50]!r} "
                   f"(gold {f['target']}, predicted {f['pred']})")
    return SelectionResult([int(i) for i in reserved] + list(res.selected),
                           {**res.scores, "feedback_bonus": bonus}, why + list(res.reasons))


def select(ctx: StageContext, model_dir, r: int, failures_file: str | None = None) -> dict:
    """Pick ``selection.budget`` unlabelled train items for round ``r``.

    ``failures_file`` (an earlier evaluation's ``failures.json``, see ``jobs.stages.failures``) makes
    pool items near those failures claim up to ``controller.feedback.share`` of the budget first; their
    reasons say so and ``scores["feedback_bonus"]`` records every row's bonus.

    Returns ``{"rows": [pool rows, with the model's suggestion and confidence when classify], "strategy"}``.
    """
    from app.models.scoring import ClassifierScorer, LMScorer
    from app.selection import SelectionInput
    from app.selection import select as run_strategy

    c, sc = ctx.cfg, ctx.cfg.selection
    key = "text" if c.task == "classify" else "prompt"
    table = ray.get(ctx.pool.read.remote(split="train", labelled=False)).select(["item_id", key, "gold"])
    if sc.max_pool and table.num_rows > sc.max_pool:
        idx = np.sort(np.random.default_rng(sc.seed + r).choice(table.num_rows, sc.max_pool, replace=False))
        table = table.take(idx)
    n = table.num_rows
    if n == 0:
        raise RuntimeError("no unlabelled training items left in the pool: ingest more data")
    scored = None
    if model_dir is None:
        strategy, inp = sc.cold_start, SelectionInput(n=n)
    elif c.task == "classify":
        scored = score(ctx, table.select(["item_id", "text"]), model_dir, ClassifierScorer, {"model_dir": model_dir})
        inp = SelectionInput(n=n, probs=np.stack(scored["probs"].to_numpy()),
                             embeddings=np.stack(scored["embedding"].to_numpy()))
        strategy = sc.strategy
    else:
        scored = score(ctx, table.select(["item_id", "prompt"]), model_dir, LMScorer,
                       {"model_dir": model_dir, "max_length": c.model.max_length})
        inp = SelectionInput(n=n, scores={"token_entropy": scored["token_entropy"].to_numpy()})
        strategy = sc.strategy
    budget = min(sc.budget, n)
    pre = None
    if failures_file and model_dir is not None and c.task == "classify":
        from jobs.stages.failures import prioritise

        pre = prioritise(ctx, table.select(["item_id", "text"]), inp, budget, model_dir, failures_file)
    if pre is None:
        res = run_strategy(strategy, inp, budget, seed=sc.seed + r)
    else:
        res = _with_reserved(strategy, pre, budget, sc.seed + r, run_strategy)
        ctx.prog.say(f"  feedback: {len(pre[0])} of {budget} picks reserved for items near {len(pre[4])} failed test items")
    ctx.prog.say(f"  {strategy}: picked {len(res.selected)} of {n} unlabelled items"
                 + (f" — e.g. {res.reasons[0]}" if res.reasons else ""))
    import mlflow

    from app.selection.engine import report_selection

    mlflow.log_metrics({f"round{r}.selected": len(res.selected), f"round{r}.pool_unlabelled": n})
    # per-item component scores and reasons (JSON) and the pool-vs-selected map, kept and logged per round
    emb = inp.embeddings
    rep = report_selection(res, ctx.store / "runs" / ctx.run_id / f"round{r}" / "selection",
                           None if emb is None else emb.__getitem__, n, strategy,
                           ids=table.column("item_id").to_numpy(zero_copy_only=False), meta={"round": r})
    if rep["map_png"]:
        mlflow.log_artifact(rep["map_png"], f"plots/round{r}")
    rows = table.take(np.asarray(res.selected, dtype=np.int64)).to_pylist()
    if scored is not None and c.task == "classify":
        for row, i in zip(rows, res.selected):
            row["suggestion"], row["confidence"] = str(scored["pred"][i]), float(scored["confidence"][i])
    return {"rows": rows, "strategy": strategy}
