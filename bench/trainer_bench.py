"""Trainer benchmarks (issue 2 of 5): Ray Train + DeepSpeed overhead, memory per ZeRO stage, recovery time.

    python bench/trainer_bench.py overhead --model smollm2 --steps 8      # tokens/s: plain torch vs Ray+DS, 1 worker
    python bench/trainer_bench.py memory --model smollm2 --steps 3        # peak RSS per worker, ZeRO 0-3, 2 workers
    python bench/trainer_bench.py recovery                                # SIGKILL a worker → first step after resume

Each prints one JSON object and writes it to bench/results/trainer_<what>.json. SFT on Alpaca-Libre rows
(prompt = instruction, response = output). Throughput is the median tokens/s over steps after the first
two (warm-up); the plain loop and the Ray worker use the same thread count and the same batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"


def _rows(n: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in open(ROOT / "data/alpaca_libre/alpaca_libre_tasks_v1.jsonl")]
    rows = [r for r in rows if r.get("status") == "ok" and r["output"].strip()][:n]
    return [r["instruction"] for r in rows], [r["output"] for r in rows]


def _spec(args, workers: int, cpus: float, zero: int, **extra):
    from app.config import TrainerConfig
    from app.models.backbones import resolve
    from app.train.spec import TrainSpec

    t = TrainerConfig(num_workers=workers, cpus_per_worker=cpus, zero_stage=zero, micro_batch_size=args.micro_batch,
                      max_steps=args.steps, checkpoint_every=10_000, warmup_ratio=0.0, lr=1e-4,
                      max_failures=1).model_dump()
    t["lora"]["enabled"] = args.lora
    t.update(extra)
    prompts, responses = _rows(args.rows)
    model = resolve(args.model, ROOT / ".flywheel" / "models")
    return TrainSpec(task="sft", start_model=str(model), start_is_flywheel=False, base_name=args.model,
                     inputs=prompts, targets=responses, max_length=args.max_length, trainer=t)


def _steady(history: list[dict], key: str = "tokens_per_s") -> float:
    vals = [h[key] for h in history[2:]] or [h[key] for h in history]
    return statistics.median(vals)


def plain_loop(spec, threads: int) -> list[dict]:
    """A single-process torch loop with nothing but AdamW, the SFT loss and clipping (the reference)."""
    import torch

    from app.models.lm import sft_features
    from app.train.losses import sft_loss
    from app.train.runner import Plan
    from app.train.tasks import make_task, trim_padding

    torch.set_num_threads(threads)
    t = spec.trainer
    task = make_task(spec)
    model, tok = task.build(False)
    model.train()
    f = sft_features(tok, spec.inputs, spec.targets, spec.max_length)
    plan = Plan(spec, len(spec.inputs), 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t["lr"],
                            weight_decay=t["weight_decay"])
    hist = []
    for step in range(plan.total):
        ts, tokens = time.time(), 0
        for m in range(plan.ga):
            idx, _ = plan.indices(step * plan.ga + m, 0, t["seed"])  # the runner's batches
            ids, mask, labels = trim_padding(f["input_ids"][idx], f["attention_mask"][idx], f["labels"][idx])
            loss = sft_loss(model(input_ids=ids, attention_mask=mask).logits, labels) / plan.ga
            loss.backward()
            tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.time() - ts
        hist.append({"step": step + 1, "loss": float(loss) * plan.ga, "tokens_per_s": tokens / dt, "step_time_s": dt})
    return hist


def _ray(num_cpus: int):
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    return ray


def overhead(args) -> dict:
    from actors.trainer import run_training

    threads = args.threads
    spec = _spec(args, 1, float(threads), args.zero)
    plain = plain_loop(spec, threads)
    ray = _ray(threads)
    try:
        out = run_training(spec, Path(args.storage), f"overhead-{int(time.time())}", None)
    finally:
        ray.shutdown()
    plain2 = plain_loop(spec, threads)  # again after: the machine's load drifts
    p = statistics.mean([_steady(plain), _steady(plain2)])
    r = _steady(out["history"])
    return {"plain_tokens_per_s": [_steady(plain), _steady(plain2)], "ray_deepspeed_tokens_per_s": r,
            "ratio": r / p, "ray_wall_s": out["wall_s"], "zero_stage": args.zero, "threads": threads,
            "plain_step_s": [h["step_time_s"] for h in plain], "ray_step_s": [h["step_time_s"] for h in out["history"]]}


def memory(args) -> dict:
    from actors.trainer import run_training

    res = {}
    for zero in args.stages:
        for offload in ([False, True] if args.offload and zero >= 2 else [False]):
            spec = _spec(args, 2, 1.0, zero, offload_optimizer=offload, export=False)
            ray = _ray(2)
            try:
                out = run_training(spec, Path(args.storage), f"mem-z{zero}-o{int(offload)}-{int(time.time())}", None)
            finally:
                ray.shutdown()
            h = out["history"]
            res[f"zero{zero}{'+offload' if offload else ''}"] = {
                "peak_rss_mb_per_worker": max(x["peak_rss_mb_per_worker"] for x in h),
                "step_time_s": _steady(h, "step_time_s"), "wall_s": out["wall_s"]}
            print(json.dumps({zero: res[f"zero{zero}{'+offload' if offload else ''}"]}), flush=True)
    return res


def recovery(args) -> dict:
    from actors.trainer import run_training

    args.model, args.lora = "tiny-llama", False
    spec = _spec(args, 2, 0.75, 2, checkpoint_every=4)
    storage, name = Path(args.storage), f"recovery-{int(time.time())}"
    root = storage / name
    box: dict = {}
    ray = _ray(2)
    th = threading.Thread(target=lambda: box.update(out=run_training(spec, storage, name, None)), daemon=True)
    th.start()
    from app.train import checkpointing as ck
    from app.train import run_checkpoints as rc

    while not [c for c in ck.list_checkpoints(root) if rc.verify_checkpoint(c)[0]]:
        time.sleep(0.05)
    t_kill = time.time()
    os.kill(int((root / "workers" / "rank_1.pid").read_text()), signal.SIGKILL)
    th.join()
    ray.shutdown()
    out = box["out"]
    resumed = [e for e in out["events"] if e["event"] == "resumed"][0]
    first = next(h for h in out["history"] if h["step"] == resumed["step"] + 1)
    return {"kill_to_first_step_done_s": first["wall_time"] - t_kill,
            "kill_to_first_step_start_s": first["wall_time"] - first["step_time_s"] - t_kill,
            "resumed_from_step": resumed["step"], "steps": out["steps"],
            "steady_step_s": _steady(out["history"], "step_time_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "memory", "recovery"])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--lora", action="store_true", help="LoRA r=8 on q/v instead of full fine-tuning")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--offload", action="store_true", help="memory: also ZeRO-2/3 with optimiser offload")
    ap.add_argument("--storage", default="/tmp/flywheel-trainer-bench")
    args = ap.parse_args()
    if args.what == "recovery":
        args.steps, args.micro_batch, args.max_length = 40, 2, 32
    t0 = time.time()
    res = {"what": args.what, **globals()[args.what](args)}
    res.update(args={k: v for k, v in vars(args).items()}, machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
               load_avg_at_end=os.getloadavg(), wall_s_total=time.time() - t0)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"trainer_{args.what}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
