"""Gradient compression on the data-parallel path: bytes handed to the collectives and step time, PowerSGD and
top-k (error feedback) against the uncompressed all-reduce, 2 gloo processes on this machine.

    nice -n 10 python bench/trainer_compression.py --steps 20 --width 1024 --layers 4

Each variant trains the same MLP (``layers`` × Linear(width, width), fp32) on the same random regression
batches with ``app.train.engine.make_engine(engine='torch')`` — DistributedDataParallel plus the comm hook
``trainer.grad_compression`` selects. Bytes are what each rank passes to all_reduce / all_gather per step
(counted by wrapping ``torch.distributed``'s Python collectives; the uncompressed case runs DDP's built-in
reducer, whose payload is every gradient: 4 bytes × parameters). Step time is the median over the steps
after the warm-up (PowerSGD all-reduces uncompressed for its first ``powersgd_start_iter`` steps).
Writes bench/results/trainer_compression.json. The machine is shared: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"


def _worker(rank: int, world: int, port: int, args: dict, variant: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from app.config import TrainerConfig
    from app.train.engine import make_engine

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sent = {"bytes": 0}
    for name in ("all_reduce", "all_gather"):  # count the payload the Python comm hooks hand over
        orig = getattr(dist, name)

        def counted(*a, _orig=orig, _name=name, **k):
            t = a[1] if _name == "all_gather" else a[0]
            sent["bytes"] += t.numel() * t.element_size()
            return _orig(*a, **k)

        setattr(dist, name, counted)
    torch.manual_seed(0)
    w = args["width"]
    model = torch.nn.Sequential(*[m for _ in range(args["layers"]) for m in (torch.nn.Linear(w, w), torch.nn.Tanh())])
    t = TrainerConfig(num_workers=world, micro_batch_size=args["batch"], lr=1e-3, warmup_ratio=0.0).model_dump()
    t.update(engine="torch", grad_compression=variant, powersgd_rank=args["rank"], powersgd_start_iter=args["warmup"],
             topk_ratio=args["topk_ratio"])
    engine = make_engine(model, [{"params": list(model.parameters()), "lr": t["lr"]}], t, world, rank, 1,
                         args["steps"], 0)
    g = torch.Generator().manual_seed(1 + rank)  # each rank its own shard of the data
    target = torch.nn.Linear(w, w)
    times, losses, bytes_per_step = [], [], []
    for step in range(args["steps"]):
        x = torch.randn(args["batch"], w, generator=g)
        with torch.no_grad():
            y = target(x)
        before, t0 = sent["bytes"], time.perf_counter()
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - t0)
        bytes_per_step.append(sent["bytes"] - before)
        losses.append(float(loss.detach()))
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        steady = slice(args["warmup"] + 1, None)
        b = statistics.median(bytes_per_step[steady]) if variant != "none" else 4 * n_params
        Path(out).write_text(json.dumps({"step_s": statistics.median(times[steady]), "bytes_per_step": b,
                                         "params": n_params, "final_loss": statistics.mean(losses[-3:])}))
    dist.destroy_process_group()


def run_variant(args: dict, variant: str, tmp: Path) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp / f"{variant}.json"
    mp.start_processes(_worker, args=(2, port, args, variant, str(out)), nprocs=2, join=True, start_method="spawn")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rank", type=int, default=4, help="PowerSGD matrix approximation rank")
    ap.add_argument("--topk-ratio", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the timing (and PowerSGD's start_iter)")
    a = vars(ap.parse_args())
    import tempfile

    t0 = time.time()
    res: dict = {"what": "compression"}
    with tempfile.TemporaryDirectory() as tmp:
        for v in ("none", "powersgd", "topk", "none"):  # the baseline again at the end: the load drifts
            r = run_variant(a, v, Path(tmp))
            key = v if v not in res else "none_again"
            res[key] = r
            print(json.dumps({key: r}), flush=True)
    base_s = statistics.mean([res["none"]["step_s"], res["none_again"]["step_s"]])
    for v in ("powersgd", "topk"):
        res[v]["bytes_ratio_vs_none"] = res[v]["bytes_per_step"] / res["none"]["bytes_per_step"]
        res[v]["step_time_ratio_vs_none"] = res[v]["step_s"] / base_s
    res.update(args=a, machine=f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs",
               load_avg_at_end=os.getloadavg(), wall_s_total=time.time() - t0)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "trainer_compression.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
