"""Selective activation checkpointing: recompute only the layers whose activations cost the most.

Checkpointing a layer frees its activations after forward and recomputes them in backward (Chen et
al. 2016, "Training Deep Nets with Sublinear Memory Cost"), ~33% more compute for that layer.
Checkpointing the largest layers first buys the most memory per recomputed FLOP. Transformers'
``gradient_checkpointing_enable`` is all-or-nothing, hence this module.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

_WRAPPED = "_flywheel_checkpointed"


def layers_to_checkpoint(layer_sizes: Sequence[int], ratio: float) -> list[int]:
    """Indices of the ceil(ratio · L) largest layers (ties broken by lower index), ascending.

    Args:
        layer_sizes: (L,) cost per layer, parameters or activation bytes.
        ratio: fraction of layers to checkpoint, in [0, 1].

    Returns:
        Sorted layer indices to wrap with :func:`apply_checkpointing`.
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"layers_to_checkpoint: ratio={ratio!r} must be in [0, 1]")
    bad = [(i, s) for i, s in enumerate(layer_sizes) if s < 0]
    if bad:
        raise ValueError(f"layers_to_checkpoint: layer_sizes must be >= 0; got (index, size) {bad[:5]}")
    n = math.ceil(round(ratio * len(layer_sizes), 9))  # round: 0.3 * 10 = 3.0000000000000004
    order = sorted(range(len(layer_sizes)), key=lambda i: (-layer_sizes[i], i))
    return sorted(order[:n])


def apply_checkpointing(model_layers: Sequence, indices: Sequence[int]) -> int:
    """Wrap the forward of ``model_layers[i]`` for each i with non-reentrant torch checkpointing.

    ``use_reentrant=False`` supports keyword arguments, inputs that do not require grad and
    ``torch.autograd.grad``; PyTorch recommends it over the reentrant variant.

    Args:
        model_layers: (L,) ``nn.Module`` s, e.g. ``model.model.layers`` of a Hugging Face decoder.
        indices: which layers to wrap.

    Returns:
        How many layers were newly wrapped (already-wrapped layers are left as they are).
    """
    from torch.utils.checkpoint import checkpoint

    out_of_range = [i for i in indices if not 0 <= i < len(model_layers)]
    if out_of_range:
        raise IndexError(f"apply_checkpointing: indices {out_of_range} out of range for {len(model_layers)} layers")
    wrapped = 0
    for i in sorted(set(indices)):
        layer = model_layers[i]
        if getattr(layer, _WRAPPED, False):
            continue
        forward = layer.forward

        @functools.wraps(forward)
        def checkpointed(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        layer.forward = checkpointed  # instance attribute: nn.Module.__call__ dispatches to it
        setattr(layer, _WRAPPED, True)
        wrapped += 1
    return wrapped


def find_layers(model) -> tuple[str, "object"]:
    """The transformer block list of a Hugging Face model: the largest ``nn.ModuleList`` of same-class modules.

    Covers decoders (``model.layers``), encoders (``encoder.layer``), GPT-2 (``transformer.h``) and peft
    or Flywheel wrappers around them, without a per-architecture table.

    Returns:
        (dotted name, the ModuleList). Raises ValueError when the model has no such list.
    """
    import torch

    best: tuple[str, object] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise ValueError(f"activation checkpointing: {type(model).__name__} has no list of identical blocks "
                         f"(nn.ModuleList) to checkpoint; set trainer.activation_checkpoint_ratio to 0")
    return best


def checkpoint_model(model, ratio: float) -> list[str]:
    """Checkpoint the ceil(ratio · L) largest blocks (by parameter count, ties: earlier first) of ``model``.

    Turns off the model's KV cache (``config.use_cache``): a recomputed block would append to it twice.

    Returns:
        Dotted names of the wrapped blocks, e.g. ``["model.layers.0", "model.layers.1"]``.
    """
    if ratio == 0:
        return []
    name, layers = find_layers(model)
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    idx = layers_to_checkpoint(sizes, ratio)
    apply_checkpointing(layers, idx)
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "use_cache", None):
        cfg.use_cache = False
    return [f"{name}.{i}" for i in idx]
