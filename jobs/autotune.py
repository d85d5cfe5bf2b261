"""Throughput autotuner: short training trials over micro-batch × gradient accumulation (global batch fixed)
× data-loader workers, measured in tokens/s; the best settings are written into a copy of the run config.

Run:   .venv/bin/python -m jobs.autotune --config jobs/configs/sft.yaml --out sft.tuned.yaml
Then:  .venv/bin/python -m jobs.loop --config sft.tuned.yaml

Each trial trains one worker in this process (app.train.runner, the same engine as the run) on the first
``--rows`` rows of the config's first pool source, with the per-worker share of the global batch
(global_batch / data-parallel workers), so its grad_accum is the one the real run will use; tokens/s is the
mean over the steps after the first (warm-up). What one worker cannot show is left out: communication
between workers, and pipeline bubbles (trials run with pipeline_stages = tensor_parallel = 1).
Search: app.train.autotune.search (climb the micro-batch until throughput drops or a trial fails, then the
loader-worker counts).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

from app.atomic_files import write_text_atomic
from jobs.common import set_offline_env, store_root


def _rows(cfg, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` usable (input, target) pairs of the first pool source."""
    from app.pool.readers import iter_records

    src = cfg.pool.sources[0]
    f = src.fields
    key_in, key_out = ("text", "label") if cfg.task == "classify" else ("prompt", "response")
    xs, ys = [], []
    for rec in iter_records(src):
        d = rec.data or {}
        x, y = d.get(f.get(key_in, key_in)), d.get(f.get(key_out, key_out))
        if isinstance(x, str) and x.strip() and y is not None and str(y).strip():
            xs.append(x)
            ys.append(str(y))
        if len(xs) == n:
            break
    if not xs:
        raise SystemExit(f"autotune: no usable {key_in}/{key_out} rows in {src.path}")
    return xs, ys


def _measure_fn(cfg, start_model: str, xs: list[str], ys: list[str], per_worker_batch: int, steps: int, log: list):
    from app.train.autotune import Trial
    from app.train.runner import Hooks, run
    from app.train.spec import TrainSpec

    labels = sorted(set(ys)) if cfg.task == "classify" else []

    def measure(trial: Trial) -> float | None:
        t = {**cfg.trainer.model_dump(), "num_workers": 1, "global_batch_size": per_worker_batch,
             "micro_batch_size": trial.micro_batch, "grad_accum": trial.grad_accum,
             "loader_workers": trial.loader_workers, "max_steps": steps + 1, "checkpoint_every": 10**9,
             "export": False, "pipeline_stages": 1, "tensor_parallel": 1, "parallel_plan": "manual",
             "profile_dir": None, "min_workers": None}
        spec = TrainSpec(task=cfg.task, start_model=start_model, start_is_flywheel=False, base_name=cfg.model.name,
                         label_names=labels, inputs=xs, targets=ys, max_length=cfg.model.max_length, trainer=t)
        t0 = time.time()
        try:
            hist = run(spec, Hooks(say=lambda msg: None))["history"]
        except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
            print(f"  {trial.as_dict()}: failed ({type(e).__name__}: {str(e)[:120]})", flush=True)
            log.append({**trial.as_dict(), "tokens_per_s": None, "error": str(e)[:300]})
            return None
        tps = statistics.mean(h["tokens_per_s"] for h in hist[1:])  # step 1 pays one-off warm-up costs
        print(f"  {trial.as_dict()}: {tps:,.0f} tokens/s ({time.time() - t0:.0f}s)", flush=True)
        log.append({**trial.as_dict(), "tokens_per_s": tps, "step_time_s": [h["step_time_s"] for h in hist]})
        return tps

    return measure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="loop config (YAML) whose trainer section is tuned")
    ap.add_argument("--out", help="where the tuned config goes (default: <config>.tuned.yaml beside it)")
    ap.add_argument("--rows", type=int, default=64, help="rows of the first pool source used by the trials")
    ap.add_argument("--steps", type=int, default=3, help="measured optimiser steps per trial (plus 1 warm-up)")
    ap.add_argument("--loader-workers", default="0,1,2", help="comma-separated data-loader worker counts to try")
    ap.add_argument("--max-micro", type=int, default=None, help="largest micro-batch tried")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.global_batch_size=32")
    a = ap.parse_args(argv)
    set_offline_env()
    import torch

    from app.config import load_config, read_yaml_mapping
    from app.models.backbones import resolve
    from app.train.autotune import search

    cfg = load_config(a.config, a.overrides)
    t = cfg.trainer
    world = t.num_workers // (t.pipeline_stages * t.tensor_parallel)  # data-parallel workers of the real run
    global_batch = t.global_batch_size or t.micro_batch_size * t.grad_accum * world
    if global_batch % world:
        raise SystemExit(f"autotune: global batch {global_batch} is not a multiple of the {world} data-parallel workers")
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    start = str(resolve(cfg.model.name, store_root(cfg.store) / "models"))
    xs, ys = _rows(cfg, a.rows)
    workers = [int(w) for w in a.loader_workers.split(",") if w.strip()]
    print(f"autotune {a.config}: global batch {global_batch} over {world} data-parallel workers "
          f"({global_batch // world} rows per worker per step), {len(xs)} rows, {a.steps}+1 steps per trial", flush=True)
    log: list[dict] = []
    best, _ = search(global_batch, world, _measure_fn(cfg, start, xs, ys, global_batch // world, a.steps, log),
                     loader_workers=workers, max_micro=a.max_micro)
    best_tps = max(r["tokens_per_s"] for r in log if r["tokens_per_s"] is not None)
    raw = read_yaml_mapping(a.config, a.overrides)
    raw.setdefault("trainer", {}).update(micro_batch_size=best.micro_batch, grad_accum=best.grad_accum,
                                         loader_workers=best.loader_workers, global_batch_size=global_batch)
    out = Path(a.out) if a.out else Path(a.config).with_suffix(".tuned.yaml")
    header = (f"# Tuned by jobs.autotune from {a.config} ({time.strftime('%Y-%m-%d %H:%M')}): best of {len(log)} trials,\n"
              f"# {best_tps:,.0f} tokens/s per worker. Run: .venv/bin/python -m jobs.loop --config {out}\n")
    write_text_atomic(out, header + yaml.safe_dump(raw, sort_keys=False))
    write_text_atomic(out.with_suffix(".trials.json"), json.dumps({"best": best.as_dict(), "global_batch": global_batch,
                                                               "world": world, "trials": log}, indent=1))
    print(f"best: micro_batch {best.micro_batch} × grad_accum {best.grad_accum} × {world} workers = {global_batch}, "
          f"loader_workers {best.loader_workers}: {best_tps:,.0f} tokens/s → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
