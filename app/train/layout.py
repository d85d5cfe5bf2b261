"""The run's dp × tp × pp layout: as configured, or chosen by :func:`app.train.planner.plan_parallelism`.

``trainer.parallel_plan: auto`` reads the model's size from its Hugging Face config (parameters, layers,
hidden size, heads, vocabulary), the device memory (``trainer.device_memory_gb``, else the GPU's, else
the machine's RAM shared by the workers) and the run's precision, ZeRO stage, micro-batch and sequence
length, and uses the planner's tp and pp for the run: pp becomes the number of DeepSpeed pipeline stages,
tp the AutoTP size, and the rest of the world is data parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.train.spec import option


@dataclass(frozen=True)
class Layout:
    """dp × tp × pp = world size, where it came from and why."""

    dp: int
    tp: int
    pp: int
    source: str  # "manual" | "planner"
    reason: str
    memory_gb: dict | None = None

    def as_event(self, world: int) -> dict:
        return {"event": "parallel_layout", "world_size": world, "dp": self.dp, "tp": self.tp, "pp": self.pp,
                "source": self.source, "reason": self.reason, "memory_gb": self.memory_gb}


def want_gpu(setting: bool | str, cluster_gpus: float, min_workers: int) -> tuple[bool, str]:
    """Whether the run asks Ray Train for one GPU per worker, and why.

    ``auto`` asks when the cluster already has a GPU for each of the minimum workers (Ray Train then uses
    NCCL); a GPU worker group an autoscaler would start from zero is not visible yet, so set ``true`` for it.
    """
    if setting is True or setting is False:
        return setting, f"trainer.use_gpu: {str(setting).lower()}"
    if setting != "auto":
        raise ValueError(f"trainer.use_gpu must be true, false or auto, got {setting!r}")
    ok = cluster_gpus >= max(1, min_workers)
    return ok, (f"trainer.use_gpu auto: the cluster has {cluster_gpus:g} GPU(s) for {min_workers} minimum worker(s)"
                + ("" if ok else ", training on CPU"))


def _device_memory_gb(trainer: dict, world: int) -> float:
    given = option(trainer, "device_memory_gb")
    if given:
        return float(given)
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 1e9
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return ram / max(1, world)  # CPU workers on one machine share its RAM


def model_shape(model) -> dict:
    """Parameters, layers, hidden size, heads and vocabulary of a Hugging Face model (for the planner)."""
    c = model.config
    get = lambda *names: next((getattr(c, n) for n in names if getattr(c, n, None) is not None), None)  # noqa: E731
    shape = {"params": float(sum(p.numel() for p in model.parameters())),
             "layers": get("num_hidden_layers", "n_layer"), "hidden": get("hidden_size", "n_embd"),
             "num_heads": get("num_attention_heads", "n_head"), "vocab_size": get("vocab_size") or 0}
    missing = [k for k, v in shape.items() if v is None]
    if missing:
        raise ValueError(f"trainer.parallel_plan='auto': the model config has no {missing} "
                         f"(needs num_hidden_layers / hidden_size / num_attention_heads or GPT-2 names)")
    return shape


def choose_layout(trainer: dict, model, world: int, seq_len: int) -> Layout:
    """The layout of this run (see module docstring). Raises ValueError when it cannot split ``world``."""
    if option(trainer, "parallel_plan") == "auto":
        from app.train.planner import plan_parallelism

        shape = model_shape(model)
        plan = plan_parallelism(shape["params"], int(shape["layers"]), int(shape["hidden"]), world,
                                _device_memory_gb(trainer, world), option(trainer, "precision"), seq_len=seq_len,
                                micro_batch=trainer["micro_batch_size"], zero_stage=trainer["zero_stage"],
                                activation_checkpointing=float(option(trainer, "activation_checkpoint_ratio")) >= 1,
                                gpus_per_node=int(option(trainer, "gpus_per_node")),
                                num_heads=int(shape["num_heads"]), vocab_size=int(shape["vocab_size"]))
        return Layout(plan.dp, plan.tp, plan.pp, "planner", plan.reason, plan.memory_gb)
    pp, tp = int(option(trainer, "pipeline_stages")), int(option(trainer, "tensor_parallel"))
    if world % (pp * tp):
        raise ValueError(f"trainer.pipeline_stages={pp} × trainer.tensor_parallel={tp} must divide the world "
                         f"size {world} (the rest is data parallel)")
    return Layout(world // (pp * tp), tp, pp, "manual", f"configured: pipeline_stages={pp}, tensor_parallel={tp}")
