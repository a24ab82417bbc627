"""Gated MLP activation act(gate) * up: SwiGLU (silu) and GeGLU (gelu, tanh or erf form).

The fused paths save gate and up only and recompute the activation in backward; HF's graph also
keeps act(gate). Activations are named by HF's `hidden_act` through `ACTIVATIONS`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..loss import compute_dtype
from .backend import check_impl, triton_module

# HF hidden_act name -> kernel activation. gelu_new is HF's own tanh-approximation formula.
ACTIVATIONS = {
    "silu": "silu", "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
    "gelu": "gelu",
}
KINDS = ("silu", "gelu_tanh", "gelu")


def _activation(g, activation):
    if activation == "silu":
        return F.silu(g)
    if activation == "gelu_tanh":
        return F.gelu(g, approximate="tanh")
    if activation == "gelu":
        return F.gelu(g)
    raise ValueError(f"unknown gated activation {activation!r}; choose one of {KINDS}")


def act_and_mul_reference(gate, up, activation: str = "silu"):
    """The unfused HF expression act_fn(gate) * up."""
    return _activation(gate, activation) * up


def _act_and_grad(g, activation):
    """act(g) and d act / dg (in g's dtype: fp32 or wider), written out so backward needs no saved
    activation."""
    if activation == "silu":
        s = torch.sigmoid(g)
        return g * s, s * (1 + g * (1 - s))
    if activation == "gelu_tanh":
        k = math.sqrt(2 / math.pi)
        t = torch.tanh(k * (g + 0.044715 * g.pow(3)))
        return 0.5 * g * (1 + t), 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * k * (1 + 3 * 0.044715 * g * g)
    e = torch.erf(g * (1 / math.sqrt(2)))
    return 0.5 * g * (1 + e), 0.5 * (1 + e) + g * torch.exp(-0.5 * g * g) / math.sqrt(2 * math.pi)


class _TorchActMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, activation):
        ctx.save_for_backward(gate, up)
        ctx.activation = activation
        return _activation(gate, activation) * up

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        wide = compute_dtype(gate.dtype)  # fp32, or fp64 for an fp64 model
        a, da = _act_and_grad(gate.to(wide), ctx.activation)
        dy = dy.to(wide)
        return (dy * up.to(wide) * da).to(gate.dtype), (dy * a).to(up.dtype), None


class _TritonActMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, activation):
        ctx.save_for_backward(gate, up)
        ctx.activation = activation
        return triton_module("swiglu").forward(gate, up, activation)

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dg, du = triton_module("swiglu").backward(dy, gate, up, ctx.activation)
        return dg, du, None


def act_and_mul(gate, up, activation: str = "silu", impl: str = "torch"):
    """act(gate) * up, elementwise; gate and up have one shape. impl "torch", "triton" or "auto"."""
    if activation not in KINDS:
        raise ValueError(f"unknown gated activation {activation!r}; choose one of {KINDS}")
    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
    impl = check_impl(impl, gate, up)
    fn = _TritonActMul if impl == "triton" else _TorchActMul
    return fn.apply(gate, up, activation)


def mlp_module_forward(self, x):
    """forward() of a swapped HF gated MLP (gate_proj, up_proj, down_proj); see registry."""
    impl, activation = self._planc_swiglu
    return self.down_proj(act_and_mul(self.gate_proj(x), self.up_proj(x), activation, impl))
