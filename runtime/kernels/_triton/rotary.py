"""Rotary embedding (HF rotate_half convention) on q or k in Triton.

The tensor is addressed as (batch, seq, heads, head_dim) through its strides, so both HF layouts
(heads before or after seq) work without copies; cos/sin are (batch, seq, head_dim), broadcast by
stride 0. Each program rotates a block of (batch, seq, head) rows.
Forward:  o1 = x1*c1 - x2*s1,  o2 = x2*c2 + x1*s2   (x1, x2 the two halves of head_dim)
Backward: d1 = g1*c1 + g2*s2,  d2 = g2*c2 - g1*s1   (the transpose of the rotation)
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _rope(X, O, COS, SIN, n_rows, seq, heads, half,
          sxb, sxs, sxh, sxd, sob, sos, soh, sod, scb, scs, scd, ssb, sss, ssd,
          BACKWARD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = (r % heads)[:, None]
    s = ((r // heads) % seq)[:, None]
    b = (r // (heads * seq))[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (r < n_rows)[:, None] & (d < half)
    cb = COS + b * scb + s * scs
    sb = SIN + b * ssb + s * sss
    c1 = tl.load(cb + d * scd, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cb + (d + half) * scd, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sb + d * ssd, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sb + (d + half) * ssd, mask=mask, other=0.0).to(tl.float32)
    xb = X + b * sxb + s * sxs + h * sxh
    x1 = tl.load(xb + d * sxd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(xb + (d + half) * sxd, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    ob = O + b * sob + s * sos + h * soh
    tl.store(ob + d * sod, o1.to(O.dtype.element_ty), mask=mask)
    tl.store(ob + (d + half) * sod, o2.to(O.dtype.element_ty), mask=mask)


def _rotate(x, cos, sin, backward):
    bsz, seq, heads, dim = x.shape
    out = torch.empty_like(x)  # same memory layout as x (dense strides are kept)
    n_rows = bsz * seq * heads
    if n_rows == 0:
        return out
    half = dim // 2
    block_d = triton.next_power_of_2(half)
    block_r = max(1, min(triton.next_power_of_2(n_rows), 4096 // block_d))
    _rope[(triton.cdiv(n_rows, block_r),)](
        x, out, cos, sin, n_rows, seq, heads, half, *x.stride(), *out.stride(), *cos.stride(), *sin.stride(),
        BACKWARD=backward, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4)
    return out


def apply(q, k, cos, sin, backward=False):
    """q, k: (B, S, H, D) views (any strides); cos, sin: (B, S, D) views. Returns rotated q, k
    with the same shapes and memory layouts."""
    return _rotate(q, cos, sin, backward), _rotate(k, cos, sin, backward)
