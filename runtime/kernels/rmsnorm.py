"""RMSNorm as HF models compute it, with a fused torch path and a Triton path.

Two casting rules exist in HF models, both computing the statistics in fp32:
- "llama" (Llama, Qwen2/3, Mistral): y = w * (x * rstd).to(x.dtype), so the output dtype is the
  promotion of the weight and input dtypes;
- "gemma" (Gemma): y = ((x * rstd) * (offset + w)) in fp32, cast back to x.dtype; Gemma stores
  w - 1 and uses offset 1.0.
The fused paths save only x and the per-row rstd for backward (HF's graph keeps the fp32 copies).
"""
from __future__ import annotations

import torch

from .backend import check_impl, triton_module

CASTINGS = ("llama", "gemma")


def rms_norm_reference(x, weight, eps: float = 1e-6, offset: float = 0.0, casting: str = "llama"):
    """The unfused HF formulas, op for op (what the kernels are checked against)."""
    if casting == "llama":
        input_dtype = x.dtype
        h = x.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + eps)
        w = weight if offset == 0.0 else weight + offset
        return w * h.to(input_dtype)
    if casting == "gemma":
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return (h * (offset + weight.float())).type_as(x)
    raise ValueError(f"unknown rmsnorm casting {casting!r}; choose one of {CASTINGS}")


def _out_dtype(x, weight, casting):
    return torch.promote_types(weight.dtype, x.dtype) if casting == "llama" else x.dtype


class _TorchRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, offset, casting):
        n_cols = x.shape[-1]
        h = x.reshape(-1, n_cols).to(torch.float32)
        rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        n = h * rstd
        w = weight.to(torch.float32) + offset if offset else weight.to(torch.float32)
        if casting == "llama":
            y = w * n.to(x.dtype)
        else:
            y = n * w
        ctx.save_for_backward(x, weight, rstd)
        ctx.offset, ctx.casting = offset, casting
        return y.to(_out_dtype(x, weight, casting)).reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        n_cols = x.shape[-1]
        n = x.reshape(-1, n_cols).to(torch.float32) * rstd
        dy = dy.reshape(-1, n_cols).to(torch.float32)
        w = weight.to(torch.float32) + ctx.offset
        dw = None
        if ctx.needs_input_grad[1]:
            n_w = n.to(x.dtype).to(torch.float32) if ctx.casting == "llama" else n
            dw = (dy * n_w).sum(0).to(weight.dtype)
        dx = None
        if ctx.needs_input_grad[0]:
            dn = dy * w
            dx = rstd * (dn - n * (dn * n).mean(-1, keepdim=True))
            dx = dx.to(x.dtype).reshape(x.shape)
        return dx, dw, None, None, None


class _TritonRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, offset, casting):
        k = triton_module("rmsnorm")
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        gemma = casting == "gemma"
        y, rstd = k.forward(x2d, weight.contiguous(), eps, offset, gemma, _out_dtype(x, weight, casting))
        ctx.save_for_backward(x2d, weight, rstd)
        ctx.offset, ctx.gemma, ctx.shape = offset, gemma, x.shape
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, rstd = ctx.saved_tensors
        k = triton_module("rmsnorm")
        dx, dw = k.backward(dy.reshape(x2d.shape), x2d, weight.contiguous(), rstd, ctx.offset, ctx.gemma)
        return dx.reshape(ctx.shape), dw.to(weight.dtype), None, None, None


def rms_norm(x, weight, eps: float = 1e-6, offset: float = 0.0, casting: str = "llama",
             impl: str = "torch"):
    """RMSNorm over the last dim of x; impl "torch" (fused autograd), "triton", or "auto"."""
    if casting not in CASTINGS:
        raise ValueError(f"unknown rmsnorm casting {casting!r}; choose one of {CASTINGS}")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"rmsnorm weight shape {tuple(weight.shape)} does not match hidden size {x.shape[-1]}")
    impl = check_impl(impl, x, weight)
    fn = _TritonRMSNorm if impl == "triton" else _TorchRMSNorm
    return fn.apply(x, weight, float(eps), float(offset), casting)


def norm_module_forward(self, hidden_states):
    """forward() of a swapped HF RMSNorm module; settings in self._planc_rmsnorm (see registry)."""
    impl, offset, casting, eps_attr = self._planc_rmsnorm
    return rms_norm(hidden_states, self.weight, getattr(self, eps_attr), offset, casting, impl)
