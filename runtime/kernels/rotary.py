"""Rotary position embedding applied to q and k, HF's rotate_half convention.

cos/sin come from the model's own rotary module (any rope type, attention scaling included); the
kernels only apply them. They are constants (computed under no_grad), so no gradient flows to
them; passing cos/sin that require grad is refused rather than silently dropping that gradient.
The fused paths save only cos and sin for backward (the rotation's transpose), not q and k.
"""
from __future__ import annotations

import torch

from .backend import check_impl, triton_module


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_reference(q, k, cos, sin, unsqueeze_dim: int = 1):
    """HF's apply_rotary_pos_emb, op for op."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _to_bshd(t, unsqueeze_dim):
    """View q/k as (batch, seq, heads, dim) whichever side of seq the heads are on."""
    return t.transpose(1, 2) if unsqueeze_dim == 1 else t


def _torch_rotate(x, cos, sin, unsqueeze_dim, backward):
    """x*cos + rotate_half(x)*sin in forward; its transpose g*cos + rotate_half^T(g*sin) in backward."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    if not backward:
        return x * cos + _rotate_half(x) * sin
    gs = x * sin
    half = x.shape[-1] // 2
    return x * cos + torch.cat((gs[..., half:], -gs[..., :half]), dim=-1)


class _TorchRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, unsqueeze_dim):
        ctx.save_for_backward(cos, sin)
        ctx.unsqueeze_dim = unsqueeze_dim
        return (_torch_rotate(q, cos, sin, unsqueeze_dim, False),
                _torch_rotate(k, cos, sin, unsqueeze_dim, False))

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        u = ctx.unsqueeze_dim
        return _torch_rotate(dq, cos, sin, u, True), _torch_rotate(dk, cos, sin, u, True), None, None, None


def _triton_rotate(q, k, cos, sin, unsqueeze_dim, backward):
    k_mod = triton_module("rotary")
    cos3 = cos.expand(q.shape[0], q.shape[2 if unsqueeze_dim == 1 else 1], q.shape[-1])
    sin3 = sin.expand(cos3.shape)
    qo, ko = k_mod.apply(_to_bshd(q, unsqueeze_dim), _to_bshd(k, unsqueeze_dim), cos3, sin3, backward)
    return _to_bshd(qo, unsqueeze_dim), _to_bshd(ko, unsqueeze_dim)


class _TritonRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, unsqueeze_dim):
        ctx.save_for_backward(cos, sin)
        ctx.unsqueeze_dim = unsqueeze_dim
        return _triton_rotate(q, k, cos, sin, unsqueeze_dim, False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        # autograd materialises a missing output gradient as zeros (the Function default).
        dq, dk = _triton_rotate(dq, dk, cos, sin, ctx.unsqueeze_dim, True)
        return dq, dk, None, None, None


def apply_rotary(q, k, cos, sin, unsqueeze_dim: int = 1, impl: str = "torch"):
    """Rotate q and k by cos/sin (HF layout: q (B, H, S, D) with unsqueeze_dim=1, (B, S, H, D) with 2)."""
    if unsqueeze_dim not in (1, 2):
        raise ValueError(f"unsqueeze_dim must be 1 or 2 (heads before or after seq), got {unsqueeze_dim}")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be 4-D, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[-1] % 2 or q.shape[-1] != k.shape[-1] or cos.shape[-1] != q.shape[-1]:
        raise ValueError(f"head_dim must be even and shared by q, k, cos: {q.shape[-1]}, {k.shape[-1]}, "
                         f"{cos.shape[-1]} (partial rotary is not supported by this kernel)")
    if cos.dim() != 3 or cos.shape != sin.shape:
        raise ValueError(f"cos and sin must be (batch or 1, seq, head_dim), got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}")
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("apply_rotary: cos/sin require grad; the fused kernels treat them as constants")
    impl = check_impl(impl, q, k, cos, sin)
    fn = _TritonRotary if impl == "triton" else _TorchRotary
    return fn.apply(q, k, cos, sin, unsqueeze_dim)
