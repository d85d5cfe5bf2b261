"""Model FLOPs utilisation (Chowdhery et al. 2022, "PaLM", appendix B).

Training FLOPs per token of a decoder-only transformer, forward + backward, without recomputation:

    F = 6·N + 12·L·h·s

N the model's parameters (the weight matmuls: 2 FLOPs per weight per token forward, 4 backward; PaLM
counts non-embedding parameters, so pass that count for a vocabulary-heavy model), L layers, h hidden size (= heads × head dim, PaLM's H·Q), s sequence length (the attention scores
QKᵀ and their product with V: 2·2·s·h per layer per token forward, ×3 with backward).

    MFU = tokens/s · F / (devices · peak FLOP/s)

Peak FLOP/s is the device's dense figure at the training precision; activation recomputation is not
counted (that would be hardware FLOPs utilisation, HFU).
"""

from __future__ import annotations

# dense tensor-core peak TFLOP/s per device (vendor data sheets), by (name fragment, 16-bit?); fp32 uses TF32
_PEAK_TFLOPS = (
    ("H200", 989.0, 494.5), ("H100", 989.0, 494.5), ("A100", 312.0, 156.0),
    ("L40S", 362.0, 183.0), ("A10", 125.0, 62.5), ("L4", 121.0, 60.0), ("V100", 125.0, 15.7), ("T4", 65.0, 8.1),
)


def flops_per_token(params: float, layers: int, hidden: int, seq_len: int) -> float:
    """F = 6·N + 12·L·h·s training FLOPs per token (module docstring)."""
    if params <= 0 or layers < 1 or hidden < 1 or seq_len < 1:
        raise ValueError(f"flops_per_token: need params > 0 and layers, hidden, seq_len >= 1; got "
                         f"{params}, {layers}, {hidden}, {seq_len}")
    return 6.0 * params + 12.0 * layers * hidden * seq_len


def mfu(tokens_per_s: float, params: float, layers: int, hidden: int, seq_len: int, devices: int,
        peak_flops_per_device: float) -> float:
    """Achieved / peak FLOP/s = tokens/s · F / (devices · peak)."""
    if devices < 1 or peak_flops_per_device <= 0:
        raise ValueError(f"mfu: need devices >= 1 and peak > 0; got {devices}, {peak_flops_per_device}")
    return tokens_per_s * flops_per_token(params, layers, hidden, seq_len) / (devices * peak_flops_per_device)


def peak_flops(device_name: str, precision: str, given_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: ``given_tflops`` (trainer.peak_tflops) or the table above; None if unknown."""
    if given_tflops:
        return float(given_tflops) * 1e12
    for frag, half, tf32 in _PEAK_TFLOPS:
        if frag.lower() in device_name.lower():
            return (half if precision in ("bf16", "fp16") else tf32) * 1e12
    return None
