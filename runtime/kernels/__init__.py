"""Kernels with Triton and torch implementations, swapped into HF models by operation and family.

    chosen = apply_kernels(model, {"rmsnorm": "auto", "fused_ce": "auto"}, device)   # before TP/FSDP
    loss_sum = fused_lm_loss_sum(model, batch)                                     # in the train step

Ops (KERNEL_OPS): rmsnorm, swiglu (SwiGLU/GeGLU act-and-mul), rotary, fused_ce (linear +
cross-entropy without full logits), moe (grouped GEMM experts). Every kernel also has a plain
function (rms_norm, act_and_mul, apply_rotary, fused_linear_cross_entropy, grouped_mm) taking
impl="torch" | "triton" | "auto". Triton is imported only when a Triton kernel runs.
"""
from ..vocab import KERNEL_BACKENDS, KERNEL_OPS
from .backend import device_support
from .fused_ce import fused_linear_cross_entropy, fused_lm_loss_sum, linear_cross_entropy_reference
from .moe import expert_mlp_sorted, experts_forward, grouped_mm, grouped_mm_reference
from .registry import FAMILIES, apply_kernels, available
from .rmsnorm import rms_norm, rms_norm_reference
from .rotary import apply_rotary, apply_rotary_reference
from .swiglu import act_and_mul, act_and_mul_reference

__all__ = [
    "FAMILIES", "KERNEL_BACKENDS", "KERNEL_OPS", "act_and_mul", "act_and_mul_reference", "apply_kernels",
    "apply_rotary", "apply_rotary_reference", "available", "device_support", "expert_mlp_sorted",
    "experts_forward", "fused_linear_cross_entropy", "fused_lm_loss_sum", "grouped_mm",
    "grouped_mm_reference", "linear_cross_entropy_reference", "rms_norm", "rms_norm_reference",
]
