"""Pipeline parallelism for Llama- and GPT-2-style causal LMs through DeepSpeed's ``PipelineModule``.

A Hugging Face model becomes a flat layer list (Huang et al. 2019, "GPipe"; DeepSpeed's 1F1B schedule):

    embedding  →  decoder block 0 … L-1  →  final norm  →  LM head (tied to the embedding when the model ties)

Between stages only ``(hidden (B, T, h) float, attention_mask (B, T) long)`` travels: DeepSpeed sends the
gradient of every floating tensor back to the previous stage, so each block rebuilds what it needs (the
causal mask, rotary angles or positions) from the integer mask instead of receiving it. The blocks are
split evenly over the stages (``partition_method="type:_Block"``) and a tied LM head is a
``TiedLayerSpec`` whose gradient DeepSpeed all-reduces between the first and last stage.

:func:`make_pipe_engine` wraps the result in ``deepspeed.initialize``; the runner then drives one optimiser
step per ``engine.train_batch`` (``grad_accum`` micro-batches through the pipeline).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Iterator

import torch
from torch import nn

from app.train.bad_input import finite_on_all_ranks
from app.train.engine import DeepSpeedEngine, _scheduler
from app.train.losses import sft_loss

log = logging.getLogger(__name__)


def _arch(model) -> str:
    """'llama' (model.model.{embed_tokens, layers, norm, rotary_emb}) or 'gpt2' (model.transformer.{wte, wpe, h, ln_f})."""
    if hasattr(model, "model") and all(hasattr(model.model, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "llama"
    if hasattr(model, "transformer") and all(hasattr(model.transformer, a) for a in ("wte", "wpe", "h", "ln_f")):
        return "gpt2"
    raise ValueError(f"trainer.pipeline_stages > 1 supports Llama-style (Llama, Mistral, Qwen2, SmolLM2) and GPT-2 "
                     f"causal LMs; {type(model).__name__} has neither layout (a LoRA-wrapped model is not supported)")


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 padding mask → (B, 1, T, T) additive causal mask: 0 where query i may see key j ≤ i."""
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    allowed = causal[None, None] & mask[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)


class _Embed(nn.Module):
    """Stage input: (input_ids, attention_mask) → (hidden, attention_mask)."""

    def __init__(self, arch: str, embed: nn.Embedding, wpe: nn.Embedding | None = None, drop: nn.Module | None = None):
        super().__init__()
        self.arch, self.embed, self.wpe, self.drop = arch, embed, wpe, drop or nn.Identity()

    def forward(self, inputs):
        ids, mask = inputs
        h = self.embed(ids)  # (B, T, h)
        if self.wpe is not None:  # GPT-2: learned absolute positions
            h = h + self.wpe(torch.arange(ids.shape[1], device=ids.device))[None]
        return self.drop(h), mask


class _Block(nn.Module):
    """One decoder block; rebuilds its causal mask (and Llama's rotary angles) from the padding mask."""

    def __init__(self, arch: str, block: nn.Module, rotary: nn.Module | None = None):
        super().__init__()
        self.arch, self.block = arch, block
        self.rotary = copy.deepcopy(rotary)  # parameter-free (inv_freq buffer): every stage holds its own

    def forward(self, inputs):
        h, mask = inputs
        m4 = _additive_mask(mask, h.dtype)
        if self.arch == "llama":
            pos = torch.arange(h.shape[1], device=h.device)[None].expand(h.shape[0], -1)
            out = self.block(h, attention_mask=m4, position_ids=pos, position_embeddings=self.rotary(h, pos))
        else:
            out = self.block(h, attention_mask=m4)
        return (out[0] if isinstance(out, tuple) else out), mask


class _Norm(nn.Module):
    """Final norm; drops the mask (the head needs only the hidden states)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, inputs):
        return self.norm(inputs[0])


class _Head(nn.Module):
    """Untied LM head: (B, T, h) → logits (B, T, V)."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, h):
        return self.head(h)


def _tied_logits(embed: _Embed, h: torch.Tensor) -> torch.Tensor:
    """Tied LM head: logits = h · Eᵀ with E the (V, h) embedding matrix (Press & Wolf 2017)."""
    return h @ embed.embed.weight.t()


def _parts(model) -> list[tuple[str | None, type, tuple, Any]]:
    """(tie key or None, layer class, constructor args, forward_fn) for every pipeline layer, in order."""
    arch = _arch(model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if arch == "llama":
        m = model.model
        embed_args = ("llama", m.embed_tokens)
        blocks = [("llama", b, m.rotary_emb) for b in m.layers]
        norm = m.norm
    else:
        m = model.transformer
        embed_args = ("gpt2", m.wte, m.wpe, m.drop)
        blocks = [("gpt2", b) for b in m.h]
        norm = m.ln_f
    key = "embed" if tied else None
    parts = [(key, _Embed, embed_args, None)]
    parts += [(None, _Block, args, None) for args in blocks]
    parts.append((None, _Norm, (norm,), None))
    parts.append((key, _Embed, embed_args, _tied_logits) if tied else (None, _Head, (model.lm_head,), None))
    return parts


def forward_unpiped(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) through the pipeline's layers run in one process (what the stages compute in turn)."""
    x: Any = (ids, mask)
    built: dict[str, nn.Module] = {}
    for key, cls, args, fn in _parts(model):
        layer = built[key] if key in built else cls(*args)
        if key is not None:
            built.setdefault(key, layer)
        x = fn(layer, x) if fn is not None else layer(x)
    return x


def layer_specs(model) -> list:
    """DeepSpeed ``LayerSpec`` / ``TiedLayerSpec`` list of ``model`` (each stage builds only its own layers)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    specs = []
    for key, cls, args, fn in _parts(model):
        if key is None:
            specs.append(LayerSpec(cls, *args))
        else:
            specs.append(TiedLayerSpec(key, cls, *args, forward_fn=fn, tied_weight_attr=["embed.weight"]))
    return specs


def pipe_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Last-stage loss: next-token cross-entropy on response tokens (app.train.losses.sft_loss)."""
    return sft_loss(logits, labels)


def pipe_batch(b: dict) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A runner micro-batch as DeepSpeed's pipeline wants it: ((input_ids, attention_mask), labels)."""
    return (b["input_ids"], b["attention_mask"]), b["labels"]


class PipeEngine(DeepSpeedEngine):
    """A ``deepspeed.PipelineEngine`` behind the runner's engine interface.

    ``train_batch`` replaces backward/step: it runs the 1F1B schedule over ``grad_accum`` micro-batches and
    steps the optimiser once. ``module`` is the Hugging Face model (export); ``gathered`` collects every
    stage's trained layers into its state dict on rank 0.
    """

    kind = "pipeline"

    def __init__(self, ds_engine, hf_model, zero_stage: int, rank: int):
        super().__init__(ds_engine, zero_stage, rank)
        self.module = hf_model
        self.stages = ds_engine.num_stages
        self.dp_rank = ds_engine.grid.get_data_parallel_rank()
        self.dp_world = ds_engine.grid.get_data_parallel_world_size()
        self.stage = ds_engine.stage_id
        self._names = {id(p): n for n, p in hf_model.named_parameters()}
        self.step_skipped = False
        # The 1F1B schedule ends in DeepSpeed's optimiser step, inside train_batch: the only place to skip an
        # update whose loss was NaN/inf (the runner's NanGuard, which the other engines apply before backward).
        self._take_step = ds_engine._take_model_step
        ds_engine._take_model_step = self._guarded_step

    def _guarded_step(self, lr_kwargs=None, *args, **kwargs):
        import torch.distributed as dist
        from deepspeed.runtime.base_optimizer import ZeROOptimizer

        # only the last stage holds the summed micro-batch loss (total_loss) when the schedule reaches the step
        self.step_skipped = not finite_on_all_ranks(self.ds.total_loss if self.ds.is_last_stage() else None,
                                                    dist.get_world_size())
        if self.step_skipped and not isinstance(self.ds.optimizer, ZeROOptimizer):
            self.ds.zero_grad()  # ZeRO-0: the gradients live on the parameters only; drop them, no step
            return
        # ZeRO-1 keeps reduced partitions of its own: its step sees the non-finite gradient norm, skips the
        # update and clears them (DeepSpeed's overflow path), and reports that through was_step_applied
        self._take_step(lr_kwargs, *args, **kwargs)
        if self.step_skipped and self.ds.was_step_applied():
            raise FloatingPointError("a non-finite loss reached an optimiser step that DeepSpeed applied anyway; "
                                     "the run stops and its checkpoints all predate this step")

    def train_batch(self, batches: list[dict]) -> torch.Tensor:
        """One optimiser step over ``batches`` (grad_accum micro-batches); the mean loss, on every stage.
        ``step_skipped`` says afterwards whether the update was dropped for a non-finite loss."""
        return self.ds.train_batch(data_iter=iter([pipe_batch(b) for b in batches]))

    @contextlib.contextmanager
    def gathered(self) -> Iterator[dict | None]:
        import torch.distributed as dist

        # data-parallel replicas hold the same stage weights: the first replica of each stage sends them
        mine = ({self._names[id(p)]: p.detach().cpu() for p in self.ds.module.parameters() if id(p) in self._names}
                if self.dp_rank == 0 else {})
        got = [None] * dist.get_world_size() if self.rank == 0 else None
        dist.gather_object(mine, got, dst=0)
        if self.rank != 0:
            yield None
            return
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for part in got:
                for name, t in part.items():
                    params[name].copy_(t)
        yield {k: v.detach().clone() for k, v in self.module.state_dict().items()}


def make_pipe_engine(model, trainer: dict[str, Any], world: int, rank: int, grad_accum: int, total: int,
                     offset: int, cfg: dict, pp: int) -> PipeEngine:
    """Split ``model`` into ``pp`` stages and build DeepSpeed's pipeline engine.

    Args:
        cfg: the DeepSpeed config (app.train.deepspeed_config) for world/pp data-parallel replicas.
    """
    import deepspeed
    from deepspeed.pipe import PipelineModule

    if world % pp:
        raise ValueError(f"trainer.pipeline_stages={pp} must divide the world size {world}")
    if trainer["zero_stage"] >= 2:
        raise ValueError(f"trainer.pipeline_stages={pp} needs trainer.zero_stage 0 or 1 (DeepSpeed's pipeline "
                         f"engine rejects ZeRO-{trainer['zero_stage']}, which partitions gradients)")
    deepspeed.init_distributed("gloo" if not torch.cuda.is_available() else "nccl")
    pipe = PipelineModule(layers=layer_specs(model), num_stages=pp, loss_fn=pipe_loss,
                          partition_method="type:_Block", dynamic_shape=True)  # batches are trimmed to their longest row
    opt = torch.optim.AdamW([p for p in pipe.parameters() if p.requires_grad], lr=trainer["lr"],
                            weight_decay=trainer["weight_decay"])
    sched = _scheduler(opt, total, int(trainer["warmup_ratio"] * total), offset)
    ds, _, _, _ = deepspeed.initialize(model=pipe, optimizer=opt, lr_scheduler=sched, config=cfg,
                                       dist_init_required=False)
    engine = PipeEngine(ds, model, trainer["zero_stage"], rank)
    log.info("pipeline: rank %d is stage %d of %d (data-parallel rank %d of %d), layers %s", rank, engine.stage,
             pp, engine.dp_rank, engine.dp_world, pipe.parts)
    return engine
