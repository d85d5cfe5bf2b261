"""Warm-started vs cold: trial-iterations until some trial first reaches a target validation accuracy on a
second, related task, with `warm_start` on and off, same seeds, same search space and budget.

    nice -n 10 python bench/tune_warm_start.py --seeds 0 1 2 --target 0.7

Source task A: SST-2 (shipped dev file), 2048 train / 200 val rows, shuffle seed 0; one random-search study
with MLflow tracking on records its task features and best configs (what `warm_start` reads). Task B: the
same file, 1024 train / 200 val rows of a different shuffle (seed 1): a smaller, related task. Every task-B
study is random search over the wide space of bench/tune_compute_to_target.py; the warm ones seed
points_to_evaluate with the nearest past study's best configs (jittered, clipped to the space). Task-B studies
do not log to MLflow, so a warm study only ever sees the source study, never an earlier task-B study.
Studies stop once a trial reaches the target; one that never does is charged its whole spend.
Writes bench/results/tune_warm_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tune_compute_to_target import SPACE, TASK  # noqa: E402  (the same space and source task)

TASK_B = TASK | {"n_train": 1024, "seed": 1}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--target", type=float, default=0.7, help="validation accuracy on task B")
    p.add_argument("--source-target", type=float, default=0.72, help="the source study stops at this")
    p.add_argument("--num-samples", type=int, default=12)
    p.add_argument("--max-t", type=int, default=9)
    p.add_argument("--steps-per-iteration", type=int, default=16)
    p.add_argument("--store", default="/tmp/flywheel-bench-tune-warm")
    p.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"), help="study-name suffix (names are unique)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "tune_warm_start.json"))
    args = p.parse_args()

    import ray

    from app.tune.results import iterations_to_target
    from app.tune.study import parse_study
    from jobs.tune_run import run_study, study_dir

    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=f"{args.store}/ray-tmp")

    def study(name: str, task: dict, seed: int, **kw) -> tuple[dict, list[dict]]:
        cfg, space = parse_study({
            "name": f"{name}-{args.tag}", "space": SPACE, "scheduler": {"type": "random"},
            "search": {"type": "random"}, "metric": "val_accuracy", "mode": "max",
            "num_samples": args.num_samples, "max_t": args.max_t, "seed": seed, "store": args.store, "task": task,
            "trainer": {"steps_per_iteration": args.steps_per_iteration, "reuse_actors": True},
            "tracking": {"experiment": "bench-warm"}} | kw)
        result = run_study(cfg, space)
        return result, json.loads((study_dir(cfg) / "history.json").read_text())

    t0 = time.time()
    source, _ = study("warm-source", TASK, 0, target=args.source_target)
    out = {"bench": "tune_warm_start", "target": args.target, "task_a": TASK, "task_b": TASK_B, "space": SPACE,
           "num_samples": args.num_samples, "max_t": args.max_t, "steps_per_iteration": args.steps_per_iteration,
           "machine": f"{platform.machine()}, 2 CPUs for Ray, shared with other jobs",
           "source": {"best": source["best"], "total_iterations": source["total_iterations"],
                      "wall_s": round(time.time() - t0, 1)}, "runs": []}
    print(json.dumps(out["source"]), flush=True)
    for seed in args.seeds:
        for warm in (False, True):
            t0 = time.time()
            result, records = study(f"warm-{'on' if warm else 'off'}-s{seed}", TASK_B, seed, warm_start=warm,
                                    target=args.target, tracking={"experiment": "bench-warm", "enabled": False})
            hit = iterations_to_target(records, "val_accuracy", "max", args.target)
            out["runs"].append({"seed": seed, "warm_start": warm, "iterations_to_target": hit,
                                "total_iterations": result["total_iterations"],
                                "best_score": result["best"]["score"] if result["best"] else None,
                                "warm_start_from": result["warm_start_from"], "wall_s": round(time.time() - t0, 1),
                                "load_avg_1m": round(os.getloadavg()[0], 2)})
            print(json.dumps(out["runs"][-1]), flush=True)
            write(args.out, out)
    ray.shutdown()
    print(json.dumps(write(args.out, out)["summary"], indent=1))


def write(path: str, out: dict) -> dict:
    """Add the summary (censored mean iterations to target per arm, ratio warm / cold) and write atomically."""
    summary = {}
    for warm in (False, True):
        rs = [r for r in out["runs"] if r["warm_start"] == warm]
        if rs:
            cost = [r["iterations_to_target"] or r["total_iterations"] for r in rs]
            summary["warm" if warm else "cold"] = {
                "mean_iterations_to_target": statistics.mean(cost), "per_seed": cost,
                "reached": sum(r["iterations_to_target"] is not None for r in rs), "seeds": len(rs)}
    if "warm" in summary and "cold" in summary:
        summary["ratio_warm_to_cold"] = round(summary["warm"]["mean_iterations_to_target"]
                                              / summary["cold"]["mean_iterations_to_target"], 3)
    out["summary"] = summary
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(path)
    return out


if __name__ == "__main__":
    main()
