"""Trainer benchmarks (issue 2 of 5): Ray Train + DeepSpeed overhead, memory per ZeRO stage, recovery time.

    python bench/trainer_bench.py overhead --model smollm2 --steps 6 --threads 1 [--also torch] [--grad-accum 4]
        # plain torch loop / Ray Train + DeepSpeed (1 worker) / [Ray Train, engine torch] / plain loop
    python bench/trainer_bench.py memory --model smollm2 --steps 3 --offload   # peak RSS per worker, 2 workers
    python bench/trainer_bench.py recovery                                # SIGKILL a worker → first step after resume

Each prints one JSON object and writes it to bench/results/trainer_<what>[_<tag>].json. SFT on Alpaca-Libre
rows (prompt = instruction, response = output). Throughput is the median tokens/s over steps after the first
two (warm-up); the plain loop and the Ray worker use the same thread count, niceness and batches. Overhead
also reports tokens per CPU-second (user + sys of the training process over the same steps), the figure that
survives a loaded machine; the DPO bench is bench/trainer_dpo.py.
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

from app.atomic_files import write_json_atomic  # noqa: E402

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
                      grad_accum=args.grad_accum, max_steps=args.steps, checkpoint_every=10_000, warmup_ratio=0.0, lr=1e-4,
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
        ts, tokens, cs = time.time(), 0, _cpu_self()
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
        hist.append({"step": step + 1, "loss": float(loss.detach()) * plan.ga, "tokens_per_s": tokens / dt,
                     "step_time_s": dt, "tokens": tokens, "cpu_s": _cpu_self() - cs})
        print(f"[plain] step {step + 1}/{plan.total} {dt:.1f}s {tokens / dt:.0f} tok/s", flush=True)
    return hist


def _cpu_self() -> float:
    """user + sys CPU seconds of this process, all threads (torch's intra-op pool included)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_of(pid: int) -> float | None:
    """user + sys CPU seconds of another process from /proc (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = stat[stat.rindex(")") + 2:].split()  # fields after "pid (comm)": f[11], f[12] = utime, stime
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed) of process ``pid``."""
    out: dict[str, float] = {}
    for t in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (t / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        f = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


class _CpuSampler(threading.Thread):
    """Samples the CPU time of the rank-0 Ray Train worker (found by its pid file) every 50 ms, so the CPU
    seconds of its steady steps can be read off between two step-end wall times."""

    def __init__(self, pid_file: Path):
        super().__init__(daemon=True)
        self.pid_file, self.samples, self.stop = pid_file, [], threading.Event()

        self.snaps: list[tuple[float, dict[str, float]]] = []  # (time, thread name -> CPU s), once a second

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            if self.pid_file.exists():
                pid = int(self.pid_file.read_text())
                c = _cpu_of(pid)
                if c is not None:
                    self.samples.append((time.time(), c))
                    n += 1
                    if n % 20 == 0:  # which threads burn the CPU
                        self.snaps.append((time.time(), _threads_cpu(pid)))
            time.sleep(0.05)

    def cpu_between(self, t0: float, t1: float) -> float:
        import numpy as np

        ts, cs = np.array([s[0] for s in self.samples]), np.array([s[1] for s in self.samples])
        return float(np.interp(t1, ts, cs) - np.interp(t0, ts, cs))

    def threads_between(self, t0: float, t1: float, top: int = 8) -> dict[str, float]:
        """CPU seconds per thread name between the snapshots nearest t0 and t1 (largest first)."""
        if not self.snaps:
            return {}
        a = min(self.snaps, key=lambda x: abs(x[0] - t0))
        b = min(self.snaps, key=lambda x: abs(x[0] - t1))
        d = {k: v - a[1].get(k, 0.0) for k, v in b[1].items()}
        d["_window_s"] = b[0] - a[0]
        return dict(sorted(d.items(), key=lambda kv: -kv[1])[:top])


def _steady_cpu(hist: list[dict]) -> dict:
    """Tokens per CPU-second over the steady steps (after the first two), where wall time is load-inflated."""
    h = hist[2:] or hist
    tok, cpu = sum(x["tokens"] for x in h), sum(x["cpu_s"] for x in h)
    return {"tokens": tok, "cpu_s": cpu, "tokens_per_cpu_s": tok / max(cpu, 1e-9),
            "cpu_per_wall": cpu / sum(x["step_time_s"] for x in h)}


def _ray(num_cpus: int):
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray renices its workers by +15 by default; the plain loop runs at this process's niceness, and on a
    # shared machine the extra niceness alone would decide the comparison. Same priority for both.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # a cluster of our own (FINDINGS: a bare ray.init() may join another run's cluster on this machine)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=f"/tmp/fw-bench-ray-{os.getpid()}")
    return ray


def overhead(args) -> dict:
    """plain / Ray+DeepSpeed / plain ... interleaved (``--rounds``): tokens/s and tokens per CPU-second."""
    from actors.trainer import run_training

    threads = args.threads
    spec = _spec(args, 1, float(threads), args.zero)
    runs: list[dict] = []

    def plain_run():
        la = os.getloadavg()
        h = plain_loop(spec, threads)
        runs.append({"kind": "plain", "tokens_per_s": _steady(h), **_steady_cpu(h), "load_avg_before": la,
                     "load_avg_after": os.getloadavg(), "step_s": [x["step_time_s"] for x in h],
                     "loss": [x["loss"] for x in h]})

    def ray_run(engine: str, zero: int):
        sp = spec if (engine, zero) == ("deepspeed", args.zero) else \
            spec.model_copy(update={"trainer": {**spec.trainer, "engine": engine, "zero_stage": zero}})
        la = os.getloadavg()
        ray = _ray(threads)
        name = f"overhead-{int(time.time())}"
        sampler = _CpuSampler(Path(args.storage).resolve() / name / "workers" / "rank_0.pid")
        sampler.start()
        try:
            out = run_training(sp, Path(args.storage), name, None)
        finally:
            sampler.stop.set()
            ray.shutdown()
        h = out["history"]
        for x in h:  # a step's CPU: the worker's CPU time between the step's start and end (interpolated)
            x["tokens"] = x["tokens_per_s"] * x["step_time_s"]
            x["cpu_s"] = sampler.cpu_between(x["wall_time"] - x["step_time_s"], x["wall_time"])
        kind = "ray_deepspeed" if engine == "deepspeed" else "ray_torch"
        steady = h[2:] or h
        top = sampler.threads_between(steady[0]["wall_time"] - steady[0]["step_time_s"], steady[-1]["wall_time"])
        # the stage the runner really used (a single worker without offload runs ZeRO-0: effective_zero_stage)
        used = next((e["effective"] for e in out["events"] if e["event"] == "zero_stage"), zero)
        runs.append({"kind": kind, "zero_stage": zero, "zero_stage_used": used, "tokens_per_s": _steady(h), **_steady_cpu(h),
                     "load_avg_before": la, "load_avg_after": os.getloadavg(), "wall_s": out["wall_s"],
                     "step_s": [x["step_time_s"] for x in h], "loss": [x["loss"] for x in h],
                     "worker_threads_cpu_s": dict(top)})
        print(json.dumps(runs[-1]), flush=True)

    variants = [("deepspeed", args.zero)] + [(e, 0) for e in args.also]
    for _ in range(args.rounds):
        plain_run()
        for engine, zero in variants:
            ray_run(engine, zero)
    plain_run()  # plain runs bracket the Ray runs: the machine's load drifts
    p = [r for r in runs if r["kind"] == "plain"]
    mean = statistics.mean
    res = {"runs": runs, "zero_stage": args.zero, "threads": threads}
    for kind, zero in [("ray_deepspeed", args.zero)] + [("ray_deepspeed" if e == "deepspeed" else "ray_torch", 0)
                                                         for e in args.also]:
        r = [x for x in runs if x["kind"] == kind and x["zero_stage"] == zero]
        res[f"{kind}_z{zero}"] = {
            "ratio_tokens_per_s": mean(x["tokens_per_s"] for x in r) / mean(x["tokens_per_s"] for x in p),
            "ratio_tokens_per_cpu_s": mean(x["tokens_per_cpu_s"] for x in r) / mean(x["tokens_per_cpu_s"] for x in p)}
    return res


def memory(args) -> dict:
    """Peak RSS per worker (mean of the 2 workers' ru_maxrss at the last step) for each ZeRO stage, and
    ZeRO-3 with optimiser + parameter offload (``--offload``)."""
    from actors.trainer import run_training

    configs = [(f"zero{z}", z, {}) for z in args.stages]
    if args.offload:
        # a client torch AdamW under ZeRO-Offload needs DeepSpeed's explicit consent (else it asserts)
        configs.append(("zero3+offload", 3, {"offload_optimizer": True, "offload_params": True,
                                              "deepspeed": {"zero_force_ds_cpu_optimizer": False}}))
    res = {}
    for key, zero, extra in configs:
        spec = _spec(args, 2, 1.0, zero, export=False, **extra)
        ray = _ray(2)
        try:
            out = run_training(spec, Path(args.storage), f"mem-{key.replace('+', '-')}-{int(time.time())}", None)
        except Exception as e:  # one failing configuration must not hide the others' numbers
            res[key] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            print(json.dumps({key: res[key]}), flush=True)
            continue
        finally:
            ray.shutdown()
        h = out["history"]
        res[key] = {"peak_rss_mb_per_worker": max(x["peak_rss_mb_per_worker"] for x in h),
                    "peak_rss_mb_after_step1": h[0]["peak_rss_mb_per_worker"],
                    "step_time_s": _steady(h, "step_time_s"), "wall_s": out["wall_s"],
                    "loss": [x["loss"] for x in h]}
        print(json.dumps({key: res[key]}), flush=True)
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
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="overhead: Ray runs, each bracketed by plain runs")
    ap.add_argument("--also", nargs="*", default=[], choices=["deepspeed", "torch"],
                    help="overhead: also run these engines at ZeRO 0 in Ray (torch: Ray Train without DeepSpeed)")
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--offload", action="store_true", help="memory: also ZeRO-3 with optimiser + parameter offload")
    ap.add_argument("--storage", default="/tmp/flywheel-trainer-bench")
    ap.add_argument("--tag", default="", help="results go to bench/results/trainer_<what>_<tag>.json")
    args = ap.parse_args()
    if args.what == "recovery":
        args.steps, args.micro_batch, args.max_length = 40, 2, 32
    t0 = time.time()
    res = {"what": args.what, **globals()[args.what](args)}
    res.update(args={k: v for k, v in vars(args).items()}, machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
               load_avg_at_end=os.getloadavg(), wall_s_total=time.time() - t0)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"trainer_{args.what}{'_' + args.tag if args.tag else ''}.json"
    write_json_atomic(out, res)  # a killed run leaves the previous result
    print(json.dumps(res))


if __name__ == "__main__":
    main()
