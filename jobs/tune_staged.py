"""A staged study (the seed's pitfall 10): a coarse stage, then Bayesian search where the coarse stage did well.

Stage 1 is the study as configured (a grid or random search, any early-stopping scheduler); stage 2 runs
Optuna TPE (or GP) through Ray Tune over the space `app.tune.staged.narrow_space` narrows around stage 1's
`staged.top_k` best configs. Each stage is a study of its own under the store (`<name>.stage1`,
`<name>.stage2`: its own Ray experiment, history and MLflow parent run); the staged study's directory holds
the combined history and result. The narrowed ranges go to the result JSON ("narrowed") and to stage 2's
MLflow run (tag `flywheel.narrowed_ranges`, artifact `narrowing.json`).

`--resume NAME` resumes the stage that was interrupted; a finished stage 1 is not rerun, and stage 2's
space is narrowed again from the same stage-1 result, so it comes out the same.
"""

from __future__ import annotations

import json
from typing import Any

from app.tune.params import GridParam
from app.tune.space import SearchSpace, parse_space
from app.tune.study import StudyConfig, StudyError


def stage1_config(cfg: StudyConfig) -> StudyConfig:
    """Stage 1 of a staged study: the study itself under `<name>.stage1`, unstaged."""
    return StudyConfig.model_validate(cfg.model_dump() | {"name": f"{cfg.name}.stage1", "staged": None})


def stage2_space(cfg: StudyConfig, space: SearchSpace, stage1: dict[str, Any]) -> tuple[SearchSpace, dict[str, Any]]:
    """Stage 2's space and the record of how it was narrowed: {"around": best configs, "factor", "log",
    "space"}. Grid keys narrow_space keeps (non-numeric values) become `choice` keys: TPE samples
    categories, it cannot enumerate a grid."""
    from app.tune.staged import narrow_space

    ranked = sorted((t for t in stage1["trials"] if t["score"] is not None and t["status"] != "errored"),
                    key=lambda t: t["score"], reverse=cfg.mode == "max")
    if not ranked:
        raise StudyError(f"staged: stage 1 of {cfg.name!r} has no scored trial to narrow around "
                         f"(trials: {[t['stop_reason'] for t in stage1['trials']]})")
    best = [t["config"] for t in ranked[: cfg.staged.top_k]]
    narrowed, log = narrow_space(space, best, factor=cfg.staged.factor)
    raw = narrowed.to_dict()
    for key, p in narrowed.params.items():
        if isinstance(p, GridParam):
            raw[key] = {"type": "choice", "values": list(p.values)} | ({"when": p.when} if p.when else {})
            log.append(f"{key}: grid {list(p.values)} -> choice (stage 2 samples it)")
    return parse_space(raw), {"around": best, "scores": [t["score"] for t in ranked[: cfg.staged.top_k]],
                              "factor": cfg.staged.factor, "log": log, "space": raw}


def _reached(cfg: StudyConfig, result: dict[str, Any]) -> bool:
    best = result["best"]
    if cfg.target is None or best is None:
        return False
    return best["score"] >= cfg.target if cfg.mode == "max" else best["score"] <= cfg.target


def run_staged(cfg: StudyConfig, space: SearchSpace, resume: str | None = None,
               claimed: bool | None = None) -> dict[str, Any]:
    """Run (or resume) both stages and return the combined result JSON.

    The result has the keys of an unstaged study (best and trials over both stages, each trial with its
    "stage"; total_iterations of both) plus "stages" (study name, search, best, total_iterations of each)
    and "narrowed" (see `stage2_space`). When stage 1 already reached `cfg.target`, stage 2 does not run.
    """
    from app.tune.results import pick_best
    from jobs import tune_mlflow
    from jobs.tune_run import claim_name, run_study, study_dir

    resuming = claim_name(cfg, resume) if claimed is None else claimed
    d = study_dir(cfg)

    def run_stage(sub: StudyConfig, sub_space: SearchSpace) -> dict[str, Any]:
        done = study_dir(sub) / "result.json"
        if resuming and done.exists():  # a finished stage is not run again
            return json.loads(done.read_text())
        again = resuming and (study_dir(sub) / "study.yaml").exists()
        return run_study(sub, sub_space, claimed=claim_name(sub, sub.name if again else None))

    one = stage1_config(cfg)
    r1 = run_stage(one, space)
    results, narrowed = [r1], None
    if not _reached(cfg, r1):
        space2, narrowed = stage2_space(cfg, space, r1)
        s = cfg.staged
        two = StudyConfig.model_validate(cfg.model_dump() | {
            "name": f"{cfg.name}.stage2", "staged": None, "space": narrowed["space"], "warm_start": False,
            "num_samples": s.num_samples,
            "search": {"type": s.search, "n_startup_trials": s.n_startup_trials,
                       "max_concurrent": cfg.search.max_concurrent}})
        (d / "narrowing.json").write_text(json.dumps(narrowed, indent=1))
        results.append(run_stage(two, space2))
        if cfg.tracking.enabled:
            tune_mlflow.log_narrowing(two, narrowed)
    trials = [t | {"stage": i + 1} for i, r in enumerate(results) for t in r["trials"]]
    searches = [cfg.search.type] + ([cfg.staged.search] if narrowed else [])
    result = {
        "study": cfg.name, "scheduler": cfg.scheduler.type, "search": "staged:" + "->".join(searches),
        "metric": cfg.metric, "mode": cfg.mode, "best": pick_best(trials, cfg.mode), "trials": trials,
        "total_iterations": sum(r["total_iterations"] for r in results), "warm_start_from": r1["warm_start_from"],
        "stages": [{"study": r["study"], "search": r["search"], "best": r["best"],
                    "total_iterations": r["total_iterations"]} for r in results],
        "narrowed": narrowed,
    }
    # combined per-trial history: what the Tuner actor's status() reads for this study
    paths = [d.parent / r["study"] / "history.json" for r in results]
    history = [rec for p in paths if p.exists() for rec in json.loads(p.read_text())]
    (d / "history.json").write_text(json.dumps(history))
    tmp = d / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(d / "result.json")
    return result
