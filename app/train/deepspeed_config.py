"""Map Flywheel's trainer config to a DeepSpeed config dict.

In the spirit of the seed chapter's ``configure_zero_optimization``: the stage decides what is
sharded across data-parallel ranks (1: optimiser state, 2: + gradients, 3: + parameters).
A raw DeepSpeed JSON given in ``trainer.deepspeed`` is merged over the generated one, key by key.
"""

from __future__ import annotations

import copy
from typing import Any


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def build_deepspeed_config(zero_stage: int, micro_batch: int, grad_accum: int, world_size: int,
                           grad_clip: float = 1.0, precision: str = "fp32", offload_optimizer: bool = False,
                           offload_params: bool = False, overrides: dict[str, Any] | None = None) -> dict:
    """DeepSpeed config with ``train_batch_size = micro_batch × grad_accum × world_size``.

    Args:
        zero_stage: 0-3.
        precision: fp32 | bf16 | fp16 (bf16/fp16 only where the device supports them).
        offload_optimizer / offload_params: ZeRO-Offload to CPU memory (params needs stage 3).
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"trainer.zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if offload_params and zero_stage != 3:
        raise ValueError("parameter offload needs trainer.zero_stage=3")
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    cfg = {
        "train_batch_size": micro_batch * grad_accum * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,  # we log ourselves; DeepSpeed's own print is noise
        "wall_clock_breakdown": False,
        # DeepSpeed wants to know an optimizer it did not build may not be one it knows.
        "zero_allow_untested_optimizer": True,
    }
    if offload_optimizer:
        # DeepSpeed 0.19 refuses a torch optimizer under optimizer offload unless told otherwise
        # (ZeRORuntimeException, zero_force_ds_cpu_optimizer defaults to True); torch AdamW steps on CPU fine.
        cfg["zero_force_ds_cpu_optimizer"] = False
    return _merge(cfg, overrides or {})


def effective_zero_stage(trainer: dict[str, Any], world: int, resumed_stage: int | None) -> tuple[int, str | None]:
    """The ZeRO stage a run uses, and why it differs from ``trainer.zero_stage`` (None: it does not).

    ZeRO stages 1-3 partition optimiser state, gradients and parameters over the data-parallel ranks
    (Rajbhandari et al., SC 2020); with one rank there is nothing to partition, and stage 2 still copies every
    gradient into its reduce bucket and flat fp32 partition on each backward (measured: ~0.77x the tokens per
    CPU-second of a plain loop on SmolLM2-135M, BENCHMARKS.md). So a single-worker run without CPU offload (the
    one thing those stages buy on one device) runs stage 0 — unless it is elastic (it may grow to a world the
    stage partitions), resumes a checkpoint written at another stage (whose optimiser state loads only at that
    stage), or a raw ``trainer.deepspeed`` override sets ``zero_optimization`` itself.
    """
    from app.train.spec import option

    stage = int(trainer["zero_stage"])
    if (stage == 0 or world != 1 or option(trainer, "engine") != "deepspeed" or option(trainer, "min_workers")
            or option(trainer, "offload_optimizer") or option(trainer, "offload_params")
            or "zero_optimization" in (trainer.get("deepspeed") or {})
            or (resumed_stage is not None and int(resumed_stage) != 0)):
        return stage, None
    return 0, (f"trainer.zero_stage {stage} → 0 at world size 1: ZeRO-{stage} partitions nothing over one rank and "
               f"only adds per-backward copies (no offload asked, not elastic)")
