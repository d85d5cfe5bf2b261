"""One training-engine interface over DeepSpeed and plain torch, so the runner has a single loop.

Both take the loss of one micro-batch: ``backward(loss)`` scales it by 1/grad_accum and
``step()`` applies the optimiser (clip, AdamW, LR schedule) on every grad_accum-th call — DeepSpeed's
own contract, which the plain engine copies. ``save_state`` / ``load_state`` write and read this
rank's part of a resumable checkpoint; ``gathered()`` yields the full module state dict on rank 0
(ZeRO-3 shards parameters, so every rank must enter it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from app.train.spec import option

log = logging.getLogger(__name__)
DS_TAG = "ckpt"


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then linear decay: min(1, (s+1)/w) · max(0, 1 - max(0, s-w)/(T-w))."""
    return min(1.0, (step + 1) / max(1, warmup)) * max(0.0, 1 - max(0, step - warmup) / max(1, total - warmup))


def _scheduler(opt, total: int, warmup: int, offset: int):
    # the schedule is a function of the optimiser step; ``offset`` resumes it without its saved state
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s + offset, total, warmup))


def ensure_process_group() -> None:
    """A one-process gloo group for DeepSpeed outside Ray Train (a plain process or a Tune trial)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(k, v)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # in-process store: no port, no file


class TorchEngine:
    """DeepSpeed-shaped plain torch training: AdamW, grad accumulation and clipping; one process, or
    DistributedDataParallel over the process group when the world size is > 1 (with an optional
    gradient-compression comm hook, :func:`attach_compression`)."""

    kind = "torch"

    def __init__(self, model, optimizer, scheduler, grad_accum: int, grad_clip: float, ddp=None, rank: int = 0):
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.grad_accum, self.grad_clip, self.micro_steps = grad_accum, grad_clip, 0
        self.ddp, self.rank, self.dp_rank = ddp, rank, rank

    def __call__(self, *a, **k):
        if self.ddp is None:
            return self.module(*a, **k)
        # DDP reads this flag in forward (it is what no_sync() sets): gradients are all-reduced only on
        # the micro-batch that completes the accumulation
        self.ddp.require_backward_grad_sync = (self.micro_steps + 1) % self.grad_accum == 0
        return self.ddp(*a, **k)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> None:
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            return
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save_state(self, d: Path, client_state: dict) -> None:
        d.mkdir(parents=True, exist_ok=True)
        if self.rank:  # DDP replicas hold the same state: rank 0's copy is the checkpoint
            return
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "client": client_state}, d / "torch_state.pt")

    def load_state(self, d: Path, mode: str = "same") -> dict:
        s = torch.load(d / "rank_0" / "torch_state.pt", map_location="cpu", weights_only=False)
        self.module.load_state_dict(s["model"])
        # Hyperparameters (lr, weight decay, ...) belong to this run's spec, the moments to the checkpoint: a
        # PBT trial restoring its donor's checkpoint must train with its own perturbed lr from the first step.
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(s["optimizer"])
        for g, h in zip(self.optimizer.param_groups, hyper):
            g.update(h)
        return s["client"]

    @contextlib.contextmanager
    def gathered(self) -> Iterator[dict]:
        yield self.module.state_dict()


class DeepSpeedEngine:
    """Thin adapter over ``deepspeed.DeepSpeedEngine`` with the same methods as :class:`TorchEngine`."""

    kind = "deepspeed"

    def __init__(self, ds_engine, zero_stage: int, rank: int, tp: int = 1):
        self.ds, self.zero_stage, self.rank, self.tp = ds_engine, zero_stage, rank, tp
        self.module = ds_engine.module
        self.dp_rank = rank  # which share of the global batch this rank reads
        if tp > 1:  # the ranks of one AutoTP group read the same batch: ask DeepSpeed which group this is
            from deepspeed.utils import groups

            self.dp_rank = groups.get_data_parallel_rank()

    def __call__(self, *a, **k):
        return self.ds(*a, **k)

    def backward(self, loss):
        self.ds.backward(loss)

    def step(self):
        self.ds.step()

    def lr(self) -> float:
        return self.ds.get_lr()[0]

    def save_state(self, d: Path, client_state: dict) -> None:
        # every rank writes its own ZeRO partition files; rank 0 adds the model states
        self.ds.save_checkpoint(str(d / "ds"), tag=DS_TAG, client_state=client_state, save_latest=False)

    def load_state(self, d: Path, mode: str = "same") -> dict:
        """Load checkpoint ``d`` written by any world size (``mode`` from app.train.reshard.resume_mode).

        ``universal`` converts the ZeRO partitions with DeepSpeed's ds_to_universal first; every rank
        converts into its own scratch directory (no shared scratch needed across nodes).
        """
        from app.train.reshard import link_rank_files, to_universal

        with tempfile.TemporaryDirectory(prefix="flywheel-ds-load-") as tmp:
            merged = Path(tmp) / "ds"
            link_rank_files(d, merged / DS_TAG, DS_TAG)
            load_dir = merged
            if mode == "universal":
                load_dir = Path(tmp) / "universal"
                to_universal(merged / DS_TAG, load_dir / DS_TAG)
            # the schedule is rebuilt from the step (``offset``), so its saved state is not needed
            path, client = self.ds.load_checkpoint(str(load_dir), tag=DS_TAG, load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {d} (mode {mode!r})")
        return client or {}

    @contextlib.contextmanager
    def gathered(self) -> Iterator[dict | None]:
        import deepspeed

        if self.tp > 1:
            yield from self._gathered_tp()
            return
        params = list(self.module.parameters())
        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.zero_stage == 3 \
            else contextlib.nullcontext()
        with ctx:
            yield ({k: v.detach().clone() for k, v in self.module.state_dict().items()}
                   if self.rank == 0 else None)

    def _gathered_tp(self) -> Iterator[dict | None]:
        """AutoTP: every rank joins the all-gather of the weight shards; rank 0 gets the full weights in a
        fresh copy of the Hugging Face model, which stands in for ``module`` (export) inside the context."""
        sd = self.ds._replace_module_consolidated_state_dict()  # collective; parameters only, rank 0 only
        if self.rank != 0:
            yield None
            return
        full = type(self.module)(self.module.config)
        missing, unexpected = full.load_state_dict(sd, strict=False)
        persistent = {k for k in full.state_dict() if k not in dict(full.named_parameters(remove_duplicate=False))}
        if unexpected or set(missing) - persistent:
            raise RuntimeError(f"AutoTP gather: missing {sorted(set(missing) - persistent)}, unexpected {unexpected}")
        sharded, self.module = self.module, full
        try:
            yield {k: v.detach().clone() for k, v in full.state_dict().items()}
        finally:
            self.module = sharded


def make_engine(model, groups: list[dict], trainer: dict[str, Any], world: int, rank: int, grad_accum: int,
                total: int, offset: int, universal: bool = False, pp: int = 1, tp: int = 1):
    """AdamW + warm-up/decay schedule, wrapped by DeepSpeed (``engine: deepspeed``) or plain torch.

    ``universal``: the engine will load a universal checkpoint (DeepSpeed must know at initialize).
    ``pp`` / ``tp``: pipeline stages (app.train.pipeline) and AutoTP size; the DeepSpeed batch arithmetic
    counts the ``world / pp`` pipeline replicas (DeepSpeed's batch check includes AutoTP ranks).
    """
    from app.train.deepspeed_config import build_deepspeed_config

    opt = torch.optim.AdamW(groups, weight_decay=trainer["weight_decay"])
    sched = _scheduler(opt, total, int(trainer["warmup_ratio"] * total), offset)
    kind = option(trainer, "engine")
    # new option (not yet a TrainerConfig field): "none" | "powersgd" | "topk" on the DDP gradient all-reduce
    compression = option(trainer, "grad_compression")
    if compression not in COMPRESSIONS:
        raise ValueError(f"trainer.grad_compression={compression!r}; allowed: {list(COMPRESSIONS)}")
    if kind == "torch":
        ddp = None
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: heads that skip a backbone part (BERT's pooler) leave grads unset
            ddp = DistributedDataParallel(model, find_unused_parameters=True)
            attach_compression(ddp, trainer)
        return TorchEngine(model, opt, sched, grad_accum, trainer["grad_clip"], ddp=ddp, rank=rank)
    if kind != "deepspeed":
        raise ValueError(f"trainer.engine={kind!r}; allowed: 'deepspeed', 'torch'")
    if compression != "none":
        # ZeRO reduces (and partitions) gradients inside DeepSpeed, out of reach of DDP comm hooks, and
        # DeepSpeed 0.19 ships no compressed-communication optimiser (1-bit Adam/LAMB are gone)
        raise ValueError(f"trainer.grad_compression={compression!r} needs trainer.engine='torch' (DDP comm "
                         f"hooks); with engine 'deepspeed' use 'none'")
    import deepspeed

    ensure_process_group()
    if world % (pp * tp):
        raise ValueError(f"pipeline stages {pp} × tensor parallel {tp} must divide the world size {world}")
    # the pipeline engine checks the batch against its data-parallel replicas; without one DeepSpeed counts
    # every rank, AutoTP's included (4 != 2 * 2 * 2 otherwise, with tp=2 on 2 ranks)
    cfg = build_deepspeed_config(trainer["zero_stage"], trainer["micro_batch_size"], grad_accum, world // pp,
                                 grad_clip=trainer["grad_clip"], precision=option(trainer, "precision"),
                                 offload_optimizer=option(trainer, "offload_optimizer"),
                                 offload_params=option(trainer, "offload_params"), overrides=trainer["deepspeed"])
    if universal:
        cfg["checkpoint"] = {**cfg.get("checkpoint", {}), "load_universal": True}
    if pp > 1:
        if tp > 1:
            raise ValueError("pipeline and tensor parallelism together (3D) are not wired: set "
                             "trainer.pipeline_stages or trainer.tensor_parallel to 1")
        from app.train.pipeline import make_pipe_engine

        return make_pipe_engine(model, trainer, world, rank, grad_accum, total, offset, cfg, pp)
    if tp > 1:
        # DeepSpeed AutoTP (training, DeepSpeed >= 0.16.4): deepspeed.initialize shards the Linear layers
        # vocab_parallel_lm_head False: a column-parallel head that gathers full logits, because our losses
        # take the whole vocabulary (a tied head would otherwise return only this rank's vocabulary shard)
        cfg["tensor_parallel"] = {"vocab_parallel_lm_head": False, **cfg.get("tensor_parallel", {}), "autotp_size": tp}
    ds, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=cfg,
                                       dist_init_required=False)
    if world == 1 and int(ds.zero_optimization_stage()) == 0:
        # One rank: DeepSpeed's backward still flattens every gradient into buckets, all-reduces them over
        # the single rank and copies them back (buffered_allreduce_fallback), an identity that costs a full
        # gradient copy per micro-batch; its own engine turns this off when there is no process group.
        ds.enable_backward_allreduce = False
    return DeepSpeedEngine(ds, trainer["zero_stage"], rank, tp=tp)


COMPRESSIONS = ("none", "powersgd", "topk")


def attach_compression(ddp, trainer: dict[str, Any]):
    """Register the gradient-compression comm hook named by ``trainer['grad_compression']`` on ``ddp``.

    powersgd: torch's PowerSGD hook (Vogels et al. 2019), rank ``powersgd_rank`` (default 4), plain
    all-reduce for the first ``powersgd_start_iter`` (default 10) iterations, error feedback and warm start.
    topk: top-k with error feedback (app.train.compression), ``topk_ratio`` (default 0.01) of each bucket.
    The hook state lives in memory only: a resumed run restarts its error-feedback residuals at zero.

    Returns:
        The hook state (None for "none"); its counters report what was sent.
    """
    from app.train import compression as gc

    # new options (not yet TrainerConfig fields), read with their defaults
    name = option(trainer, "grad_compression")
    if name == "none":
        return None
    if name == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

        state = gc.powersgd_hook_state(rank=int(option(trainer, "powersgd_rank")),
                                       start_iter=int(option(trainer, "powersgd_start_iter")))
        hook = powerSGD_hook.powerSGD_hook
        if ddp.process_group is None or torch.distributed.get_backend(ddp.process_group) == "gloo":
            hook = gc.serialized_hook(hook)  # gloo pairs collectives by issue order (see serialized_hook)
        ddp.register_comm_hook(state, hook)
        return state
    state = gc.TopKHookState(gc.TopKCompressor(float(option(trainer, "topk_ratio"))))
    ddp.register_comm_hook(state, gc.topk_hook(state))
    return state
