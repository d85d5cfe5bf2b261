"""The training loop, free of Ray: the same code runs in a Ray Train worker, a Ray Tune trial or a
plain process. What differs between those is given as :class:`Hooks` (rank, world size, where the
latest checkpoint is, how to report metrics and checkpoints).

Per optimiser step every rank runs ``grad_accum`` micro-batches of ``micro_batch_size`` rows, with
grad_accum = global_batch / (micro_batch × world) (app.train.elastic), so the optimiser sees the same
batch whatever the world size. A micro-batch whose loss is NaN/inf on any rank is skipped on every
rank (no backward: the update never sees it) and counted; ``max_nan_steps`` in a row abort the run,
whose checkpoints all predate the divergence.

Model parallelism (app.train.layout): ranks of one pipeline (app.train.pipeline) or one AutoTP group read
the same micro-batches, so the batch arithmetic counts data-parallel replicas, ``world / (pp·tp)``; under
pipeline stages one ``engine.train_batch`` runs a step's grad_accum micro-batches and the optimiser step.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from app.train import checkpointing as ck
from app.train import run_checkpoints as rc
from app.train.bad_input import NanGuard, finite_on_all_ranks
from app.train.data import shard_indices
from app.train.elastic import grad_accum_for
from app.train.deepspeed_config import effective_zero_stage
from app.train.engine import make_engine
from app.train.layout import choose_layout
from app.train.loader import MicroBatches
from app.train.profiling import StepProfiler
from app.train.reshard import resume_mode
from app.train.spec import TrainSpec, option
from app.train.tasks import Task, check_start_model, describe, make_task, row_tokens

log = logging.getLogger(__name__)


def _noop_report(metrics: dict, ckpt_dir: Path | None, name: str | None) -> None:
    return None


@dataclass
class Hooks:
    """How the runner talks to whatever hosts it.

    Attributes:
        rank, world_size: this worker's data-parallel rank and the number of workers.
        latest: returns the framework's latest checkpoint directory (or None) — called once at start.
        report: called on every rank with (metrics, checkpoint dir or None, checkpoint name or None);
            the directory is temporary: copy or upload it before returning.
        log: rank 0 only, one record per optimiser step (MLflow, dashboards).
    """

    rank: int = 0
    world_size: int = 1
    latest: Callable[[], Path | None] = lambda: None
    report: Callable[[dict, Path | None, str | None], None] = _noop_report
    log: Callable[[dict], None] | None = None
    say: Callable[[str], None] = field(default=lambda msg: print(msg, flush=True))


def _mean_over_ranks(values: dict[str, float], world: int) -> dict[str, float]:
    if world == 1 or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def _mfu_terms(t: dict, model, seq_len: int, hooks: Hooks) -> tuple[float | None, float]:
    """(training FLOPs per token, peak FLOP/s per device) for MFU, or (None, 0) without CUDA or a known peak.

    Only CUDA devices are counted: a CPU has no meaningful dense peak to compare with.
    """
    if not torch.cuda.is_available():
        return None, 0.0
    from app.train.layout import model_shape
    from app.train.mfu import flops_per_token, peak_flops

    name = torch.cuda.get_device_name(0)
    peak = peak_flops(name, option(t, "precision"), option(t, "peak_tflops"))
    if peak is None:
        hooks.say(f"[train] MFU not logged: peak FLOP/s of {name!r} unknown; set trainer.peak_tflops")
        return None, 0.0
    s = model_shape(model)
    # seq_len: the token budget; trimmed batches are shorter, so the attention term is an upper bound
    return flops_per_token(s["params"], int(s["layers"]), int(s["hidden"]), seq_len), peak


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Plan:
    """Batch arithmetic of one run at one world size.

    Optimiser step s of epoch e = s // S (S = max(1, n // G) steps per epoch, G the global batch) takes
    rows perm_e[(s mod S)·G + j mod n] for j < G, perm_e a seeded permutation of the n rows; rank r's
    m-th micro-batch holds slots j in [(r·ga + m)·mb, (r·ga + m + 1)·mb). The rows of a step depend on
    G only, not on the world size, so a run resumed on another number of workers sees the same batches.
    """

    def __init__(self, spec: TrainSpec, n: int, world: int, difficulty: np.ndarray | None = None,
                 dp: int | None = None):
        t = spec.trainer
        dp = dp or world  # data-parallel replicas: pipeline stages / tensor-parallel ranks of one share a batch
        self.t = t
        self.pacing = option(t, "curriculum")
        if self.pacing != "none" and (difficulty is None or len(difficulty) != n):
            raise ValueError(f"trainer.curriculum={self.pacing!r} needs one difficulty per row ({n})")
        self.difficulty = difficulty
        self.mb = t["micro_batch_size"]
        self.global_batch = (option(t, "global_batch_size")
                             or self.mb * t["grad_accum"] * max(1, t["num_workers"] * dp // world))
        self.ga = grad_accum_for(self.global_batch, self.mb, dp)
        if n < 1:
            raise ValueError("no training rows")
        self.steps_per_epoch = max(1, n // self.global_batch)  # world-independent: a resize keeps the step count
        self.total = t["max_steps"] or max(1, math.ceil(t["epochs"] * self.steps_per_epoch))
        self.n, self.world, self.dp = n, world, dp

    def indices(self, k: int, rank: int, seed: int, losses: list[float] | None = None) -> tuple[list[int], int]:
        """Rows of this rank's k-th micro-batch (k counts this rank's micro-batches) and its epoch.

        With ``trainer.curriculum``, step s draws its G rows from ``allowed(s)`` (the easiest c(s)·n rows, see
        :func:`app.selection.curriculum.curriculum_order`) through a permutation seeded by (seed, s), so the
        batch again depends on G and s only. ``losses``: step losses so far (adaptive pacing; the same on
        every rank, they are means over ranks).
        """
        step, m = divmod(k, self.ga)
        epoch, pos = divmod(step, self.steps_per_epoch)
        slot = (rank * self.ga + m) * self.mb
        if self.pacing != "none":
            allowed = self.allowed(step, seed, losses or [])
            perm = np.random.default_rng([seed, step]).permutation(len(allowed))
            return [int(allowed[perm[(slot + j) % len(allowed)]]) for j in range(self.mb)], epoch
        order = shard_indices(self.n, 0, 1, epoch, seed)  # the epoch's permutation, the same on every rank
        base = pos * self.global_batch + slot
        return [order[(base + j) % self.n] for j in range(self.mb)], epoch

    def allowed(self, step: int, seed: int, losses: list[float]) -> np.ndarray:
        """Rows the curriculum lets step ``step`` draw from (Platanios et al. 2019 competence pacing)."""
        from app.selection.curriculum import curriculum_order

        t = self.t
        ramp = max(1, math.ceil(option(t, "curriculum_ramp") * self.total))
        return curriculum_order(self.difficulty, step, ramp, self.pacing, c0=option(t, "curriculum_c0"),
                                loss_history=losses, anti=option(t, "curriculum_anti"),
                                replay=option(t, "curriculum_replay"), seed=seed + step)


def run(spec: TrainSpec, hooks: Hooks, task: Task | None = None) -> dict:
    """Train ``spec`` to its step count, resuming from the newest verified checkpoint.

    Returns:
        Summary: steps, final_loss, history (per-step records incl. earlier attempts), events
        (resumes, fallbacks, resizes), world_size, grad_accum, global_batch, nan_skipped, rows, truncated.
    """
    t = spec.trainer
    rank, world = hooks.rank, hooks.world_size
    torch.manual_seed(t["seed"] + rank)
    task = task or make_task(spec)
    model, tok = task.build(check_start_model(spec.start_model, spec.task))
    model.train()
    # new option (not yet a TrainerConfig field): share of transformer blocks to checkpoint, largest first
    ratio = float(option(t, "activation_checkpoint_ratio"))
    if ratio > 0:
        from app.train.activation_ckpt import checkpoint_model

        wrapped = checkpoint_model(model, ratio)
        hooks.say(f"[train] activation checkpointing on {len(wrapped)} blocks (ratio {ratio}): {wrapped}")
    feats = task.features(tok)
    info = describe(feats)
    if info["truncated"]:
        hooks.say(f"[train] {info['truncated']} of {info['rows']} rows exceed max_length={spec.max_length} "
                  f"tokens and were truncated")
    difficulty = None
    if option(t, "curriculum") != "none":
        difficulty = (np.asarray(spec.difficulty, dtype=np.float64) if spec.difficulty is not None
                      else row_tokens(feats))  # default: longer rows are harder
    layout = choose_layout(t, model, world, spec.max_length)
    if layout.pp * layout.tp > 1 and spec.task != "sft":
        raise ValueError(f"pipeline / tensor parallelism (pp={layout.pp}, tp={layout.tp}) run task 'sft' only; "
                         f"got task {spec.task!r}")
    plan = Plan(spec, info["rows"], world, difficulty, dp=layout.dp)
    root = Path(spec.ckpt_root) if spec.ckpt_root else None
    found, kind, skipped = rc.find_resume(hooks.latest(), root)
    meta = rc.read_meta(found) if found else None
    stage, why = effective_zero_stage(t, world, meta["zero_stage"] if meta and meta.get("engine") == "deepspeed" else None)
    configured_stage = int(t["zero_stage"])
    if why:  # the whole run (engine, checkpoint meta) sees the stage it really uses
        t = {**t, "zero_stage": stage}
        spec = spec.model_copy(update={"trainer": t})
        hooks.say(f"[train] {why}")
    events: list[dict] = rc.read_records(found, rc.EVENTS)
    if why and meta is None:
        events.append({"event": "zero_stage", "configured": configured_stage, "effective": stage,
                       "reason": why, "step": 0})
    for path, problem in skipped:
        hooks.say(f"[train] WARNING: skipping checkpoint {path}: {problem}")
        events.append({"event": "skipped_checkpoint", "path": path, "problem": problem})
    start = int(meta["step"]) if meta else 0
    if spec.task == "dpo" and option(t, "dpo_reference") == "precompute" and spec.ref_chosen_logps is None:
        task.precompute(model, feats)  # the start model is π_ref: score before any weight is loaded
    mode = resume_mode(meta, kind, world, option(t, "engine"), t["zero_stage"], pp=layout.pp, tp=layout.tp)
    if mode == "weights":
        model.load_state_dict(rc.load_weights(found))
        why = ("only the kept best verified" if kind == "weights" else
               f"engine {meta['engine']} → {option(t, 'engine')} / ZeRO {meta['zero_stage']} → {t['zero_stage']} / "
               f"pp×tp {meta.get('pp', 1)}×{meta.get('tp', 1)} → {layout.pp}×{layout.tp} at world "
               f"{meta['world_size']} → {world}")
        hooks.say(f"[train] resuming weights only from {found} ({why}); optimiser state starts fresh")
    engine = make_engine(model, task.param_groups(model), t, world, rank, plan.ga, plan.total, offset=start,
                         universal=mode == "universal", pp=layout.pp, tp=layout.tp)
    drank = engine.dp_rank  # which share of the global batch this rank reads
    if layout.source == "planner" or layout.pp * layout.tp > 1:
        hooks.say(f"[train] rank {rank}: layout dp={layout.dp} × tp={layout.tp} × pp={layout.pp} "
                  f"({layout.source}): {layout.reason}")
        if meta is None or (meta.get("pp", 1), meta.get("tp", 1)) != (layout.pp, layout.tp):
            events.append({**layout.as_event(world), "step": start})
    k = start * plan.ga  # this rank's micro-batch counter: the data position follows from it
    if mode in ("same", "replicated", "universal"):
        client = engine.load_state(found, mode)
        if mode == "same":  # same grad_accum: the counter also holds the micro-batches NaN guards skipped
            k = int(client.get("micro", k))
        else:
            how = ("re-partitioned through a DeepSpeed universal checkpoint" if mode == "universal"
                   else "loaded as is (replicated, not partitioned)")
            hooks.say(f"[train] rank {rank}: world size {meta['world_size']} → {world}: optimiser state {how}")
    if meta:
        events.append({"event": "resumed", "from": str(found), "step": start,
                       "kind": "full" if mode == "same" else mode})
        hooks.say(f"[train] rank {rank}: resumed from {found} at step {start}")
    if meta is None or meta.get("world_size") != world or meta.get("grad_accum") != plan.ga:
        msg = (f"world size {world}: grad_accum {plan.ga} keeps the global batch at {plan.global_batch} "
               f"(= micro_batch {plan.mb} × {plan.dp} data-parallel workers × {plan.ga})")
        hooks.say(f"[train] {msg}")
        events.append({"event": "batch_plan", "world_size": world, "grad_accum": plan.ga,
                       "global_batch": plan.global_batch, "step": start})
    gen = rc.next_gen(root, meta)
    history = rc.read_records(found, rc.HISTORY)[:start]
    guard = NanGuard(option(t, "max_nan_steps"))
    best = rc.best_value(root, option(t, "best_metric"))
    since_ckpt: list[float] = []
    t0 = time.time()
    # new options (not yet TrainerConfig fields): torch.profiler trace of a few steps, comm share printed
    prof_steps = option(t, "profile_steps")
    profiler = StepProfiler(option(t, "profile_dir"), rank, int(prof_steps[0]), int(prof_steps[1]))
    flops, peak = _mfu_terms(t, model, spec.max_length, hooks)

    def make(kk: int) -> tuple[dict, int]:  # this rank's micro-batch kk (a pure function of kk, see Plan)
        idx, ep = plan.indices(kk, drank, t["seed"], [h["loss"] for h in history] if plan.pacing == "adaptive" else None)
        return task.batch(feats, idx), ep

    source = MicroBatches(make, k, int(option(t, "loader_workers")))
    for step in range(start, plan.total):
        profiler.before(step + 1)
        ts, done, tokens, loss_sum, sums = time.time(), 0, 0, 0.0, {}
        while engine.kind == "pipeline":  # one train_batch = grad_accum micro-batches through the stages + step
            picks = [source.next() for _ in range(plan.ga)]
            k, epoch = k + plan.ga, picks[-1][1]
            bs = [b for b, _ in picks]
            loss = engine.train_batch(bs)
            # the engine dropped the update if the loss was non-finite on the last stage (PipeEngine._guarded_step)
            if guard.check(float("nan") if engine.step_skipped else loss.detach(), step=step + 1):
                done, tokens, loss_sum = plan.ga, sum(task.tokens(b) for b in bs), float(loss) * plan.ga
                break
            hooks.say(f"[train] step {step + 1}: non-finite loss under pipeline parallelism, update dropped and "
                      f"{plan.ga} micro-batches skipped ({guard.consecutive} in a row, {guard.skipped} in total)")
        while done < plan.ga:
            b, epoch = source.next()
            k += 1
            loss, mets = task.loss(engine, b)
            finite = finite_on_all_ranks(loss, world)  # every rank skips the same micro-batch
            if not guard.check(loss.detach() if finite else float("nan"), step=step + 1):
                hooks.say(f"[train] step {step + 1}: non-finite loss on some rank, micro-batch skipped "
                          f"({guard.consecutive} in a row, {guard.skipped} in total)")
                continue
            engine.backward(loss)
            engine.step()
            done += 1
            tokens += task.tokens(b)
            loss_sum += float(loss.detach())
            for key, v in mets.items():
                sums[key] = sums.get(key, 0.0) + v
        dt = time.time() - ts
        avg = _mean_over_ranks({"loss": loss_sum / plan.ga, "tokens": float(tokens), "peak_rss_mb": _peak_rss_mb(),
                                **{key: v / plan.ga for key, v in sums.items()}}, world)
        tokens_all, rss = avg.pop("tokens") * plan.dp, avg.pop("peak_rss_mb")  # replicas' ranks see the same tokens
        rec = {"step": step + 1, **avg, "lr": engine.lr(), "step_time_s": dt,
               "tokens_per_s": tokens_all / max(dt, 1e-9), "peak_rss_mb_per_worker": rss, "wall_time": time.time(),
               "world_size": world, "grad_accum": plan.ga, "nan_skipped": guard.skipped}
        if flops is not None:
            rec["mfu"] = rec["tokens_per_s"] * flops / (world * peak)
        summary = profiler.after(step + 1, plan.total)
        if summary is not None:
            rec["comm_share"] = summary["comm_share"]
            if rank == 0:
                hooks.say(f"[train] profile of steps {summary['steps'][0]}-{summary['steps'][1]}: "
                          f"{100 * summary['comm_share']:.1f}% of CPU time in communication; "
                          f"trace {summary['trace']}")
        history.append(rec)
        since_ckpt.append(avg["loss"])
        if rank == 0 and hooks.log is not None:
            hooks.log(rec)
        last = step + 1 == plan.total
        metrics = {"step": step + 1, "epoch": epoch, "world_size": world, "grad_accum": plan.ga,
                   "nan_skipped": guard.skipped, **avg}
        if (step + 1) % t["checkpoint_every"] == 0 or last:
            metrics["ckpt_loss"] = sum(since_ckpt) / len(since_ckpt)  # smoother than one step's loss
            since_ckpt = []
            with tempfile.TemporaryDirectory(prefix="flywheel-ckpt-") as tmp:
                name = rc.ckpt_name(gen, step + 1)
                best = _write_checkpoint(Path(tmp), name, engine, task, tok, spec, hooks, plan, k, metrics,
                                         history, events, gen, last, root, best)
                hooks.report(metrics, Path(tmp), name)
        elif (step + 1) % option(t, "report_every") == 0:
            hooks.report(metrics, None, None)
        if rank == 0 and ((step + 1) % 10 == 0 or last):
            hooks.say(f"[train] step {step + 1}/{plan.total} loss {avg['loss']:.4f} "
                      f"{rec['tokens_per_s']:.0f} tok/s ({time.time() - t0:.0f}s)")
    source.close()
    return {"steps": plan.total, "final_loss": history[-1]["loss"] if history else float("nan"),
            "history": history, "events": events, "world_size": world, "grad_accum": plan.ga,
            "global_batch": plan.global_batch, "nan_skipped": guard.skipped, **info}


def _write_checkpoint(tmp: Path, name: str, engine, task: Task, tok, spec: TrainSpec, hooks: Hooks, plan: Plan,
                      k: int, metrics: dict, history: list, events: list, gen: int, last: bool,
                      root: Path | None, best: float | None) -> float | None:
    """Fill ``tmp`` with this rank's share of checkpoint ``name`` and seal it; returns the best metric value."""
    t = spec.trainer
    rank = hooks.rank
    step = int(metrics["step"])
    engine.save_state(tmp / f"rank_{rank}", {"micro": k, "step": step})  # collective under DeepSpeed
    with engine.gathered() as sd:  # collective under ZeRO-3
        if rank == 0:
            (tmp / "rank_0").mkdir(exist_ok=True)
            torch.save(sd, tmp / "rank_0" / rc.WEIGHTS)
            if last and option(t, "export"):
                task.export(engine.module, sd, tok, tmp / "model")
    if rank == 0:
        meta = {"step": step, "world_size": plan.world, "engine": option(t, "engine"), "zero_stage": t["zero_stage"],
                "pp": engine.stages if engine.kind == "pipeline" else 1, "tp": getattr(engine, "tp", 1),
                "grad_accum": plan.ga, "global_batch": plan.global_batch, "gen": gen, "task": spec.task}
        (tmp / rc.META).write_text(json.dumps(meta, indent=1))
        ck.write_metrics(tmp, metrics)
        (tmp / rc.HISTORY).write_text(json.dumps(history))
        (tmp / rc.EVENTS).write_text(json.dumps(events))
    rc.seal_rank(tmp, rank)
    metric, mode = option(t, "best_metric"), option(t, "best_mode")
    if metric not in metrics:
        raise KeyError(f"trainer.best_metric={metric!r} is not a checkpoint metric; available: {sorted(metrics)}")
    value = float(metrics[metric])
    if not rc.better(value, best, mode):  # every rank tracks the same (all-reduced) value
        return best
    if rank == 0 and root is not None:
        rc.keep_best(root, tmp, name, metric, mode, value, best)
    return value


def local_hooks(root: str | Path, keep_last: int = 2, metric: str = "ckpt_loss", mode: str = "min",
                rank: int = 0, world_size: int = 1) -> Hooks:
    """Hooks for plain processes: checkpoints committed under ``root`` (temp copy, manifest, atomic
    rename), the newest ``keep_last`` kept plus the best by ``metric``; resume from the newest.

    With ``world_size`` > 1 (processes of one torch.distributed group on a shared filesystem) every rank
    copies its share into one staging directory and rank 0 commits it, between barriers — what Ray
    Train does when it merges the ranks' uploads.
    """
    import shutil

    root = Path(root)

    def barrier() -> None:
        if world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def latest() -> Path | None:
        found = ck.list_checkpoints(root)
        return found[-1] if found else None

    def report(metrics: dict, d: Path | None, name: str | None) -> None:
        if d is None:
            return
        stage = root / f".tmp-{name}"
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(stage, ignore_errors=True)
        barrier()
        shutil.copytree(d, stage, dirs_exist_ok=True)
        barrier()
        if rank == 0:
            ck.commit(stage, root / name)
            ck.retain(root, keep_last=keep_last, metric=metric, mode=mode)
        barrier()

    return Hooks(rank=rank, world_size=world_size, latest=latest, report=report)
