"""Model FLOPs utilisation: the model's training FLOPs per second over the device's peak.

FLOPs per token (training: forward + backward), after PaLM (Chowdhery et al. 2022, appendix B):

    6 * N  +  12 * L * H * Q * T

- N: parameters that multiply each token, counted from the model itself (a meta-device build of
  the config is enough): every weight of two or more dimensions, the output head included, the
  input embedding table excluded (a lookup, no multiply; a tied head is counted once, as the
  head). MoE expert weights (3-D, experts first) count top_k / num_experts of their size: only
  the active experts multiply a token; routers and shared experts count in full.
- 12 * L * H * Q * T: attention scores and their weighted sum (2 matmuls of T x Q per head,
  forward 4*T*H*Q per token per layer, x3 for training); L layers, H query heads, Q head dim,
  T the attended sequence length (the row length, max_len). As in PaLM, the causal mask's
  skipped half is not discounted, and packed documents count the whole row.
- The 6 = 2 (multiply-add) x 3 (forward, and backward for activations and for weights).
  Recomputation by activation checkpointing is not counted (that would be hardware FLOPs).

MFU = achieved FLOPs per second per device / peak FLOPs per second of the device, measured on
rank 0 from its own step: its computed tokens (input positions, padding included) x FLOPs per
token / tp degree (TP ranks share each token's work) / step time. Peak FLOPs come from `PEAK_TFLOPS`
(dense tensor-core figures from the vendors' datasheets, no sparsity) for the compute dtype, or
from `peak_tflops=` when given; a device not in the table, and any CPU, has no peak here: MFU is
then not measured (None), never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["PEAK_TFLOPS", "Flops", "flops_per_token", "peak_tflops", "MFU"]

# Dense TFLOPS per device by compute dtype (datasheets: NVIDIA H100/H200, A100, L40S, L4, V100;
# AMD MI300X). "tf32" applies to fp32 matmuls when torch allows TF32.
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},   # SXM
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "MI300X": {"bf16": 1307.4, "fp16": 1307.4, "tf32": 653.7, "fp32": 163.4},
}
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Flops:
    """Training FLOPs per token and their parts."""
    active_params: int   # N
    dense: float         # 6 N
    attention: float     # 12 L H Q T
    seq_len: int

    @property
    def total(self) -> float:
        return self.dense + self.attention


def _num_experts(config) -> int | None:
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def active_params(model: nn.Module) -> int:
    """N of the module docstring, from the parameters' (global) shapes."""
    config = model.config
    experts, top_k = _num_experts(config), getattr(config, "num_experts_per_tok", None)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    n = 0.0
    for _, p in model.named_parameters():  # a tied head appears once, as the embedding
        if p.ndim < 2 or id(p) in embeddings:
            continue
        if p.ndim == 3 and experts and top_k and p.shape[0] == experts:
            n += p.numel() * top_k / experts
        else:
            n += p.numel()
    if head is not None and id(head.weight) in embeddings:
        n += head.weight.numel()  # tied: the head's multiply is real work
    return int(n)


def flops_per_token(model: nn.Module, seq_len: int) -> Flops:
    """Training FLOPs per token of `model` (a meta-device build is fine) at row length `seq_len`."""
    c = model.config
    c = getattr(c, "text_config", None) or c
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    n = active_params(model)
    return Flops(active_params=n, dense=6.0 * n,
                 attention=12.0 * c.num_hidden_layers * heads * head_dim * seq_len, seq_len=seq_len)


def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype, "fp32")
    if name == "fp32" and torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return name


def peak_tflops(device: torch.device, dtype: torch.dtype, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOPS, where it came from); (None, why) when unknown."""
    if override:
        return float(override), "given"
    if device.type != "cuda":
        return None, f"not measured on {device.type}: no peak FLOPs for it"
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            dname = _dtype_name(dtype)
            if dname in table:
                return table[dname], f"{key} {dname} peak"
            return None, f"not measured: no {dname} peak for {key}"
    return None, f"not measured: {name!r} is not in runtime/mfu.py's peak table (give peak_tflops)"


class MFU:
    """Turns a step's computed tokens and time into MFU (None when the peak is unknown)."""

    def __init__(self, model: nn.Module, *, seq_len: int, device: torch.device, dtype: torch.dtype,
                 tp: int = 1, peak: float | None = None):
        self.flops = flops_per_token(model, seq_len)
        self.tp = tp
        self.peak, self.source = peak_tflops(torch.device(device), dtype, peak)

    def utilization(self, tokens: int, seconds: float) -> float | None:
        """MFU of a step in which this rank computed `tokens` input positions in `seconds`."""
        if self.peak is None or seconds <= 0:
            return None
        return tokens * self.flops.total / self.tp / seconds / (self.peak * 1e12)

    def describe(self) -> str:
        f = self.flops
        head = (f"model FLOPs per token {f.total:.3g} (6 x {f.active_params:,} active parameters + "
                f"attention {f.attention:.3g} at {f.seq_len} tokens; PaLM's count)")
        if self.peak is None:
            return f"{head}; MFU {self.source}"
        return f"{head}; MFU against {self.peak:g} TFLOPS ({self.source})"
