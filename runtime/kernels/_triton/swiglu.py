"""act(gate) * up in Triton (SwiGLU with silu, GeGLU with gelu tanh/erf), forward and backward.

Rows may be strided (gate and up can be the two halves of one fused projection); columns are
contiguous. The activation is recomputed in backward instead of being stored.
"""
import torch
import triton
import triton.language as tl

BLOCK = 1024
_ACTS = {"silu": 0, "gelu_tanh": 1, "gelu": 2}


@triton.jit
def _act(g, ACT: tl.constexpr):
    """(act(g), act'(g)) in fp32."""
    if ACT == 0:
        s = tl.sigmoid(g)
        a = g * s
        da = s * (1.0 + g * (1.0 - s))
    elif ACT == 1:
        k = 0.7978845608028654  # sqrt(2 / pi)
        # tanh through sigmoid (portable to the interpreter); |inner| > 15 is +-1 in fp32 anyway,
        # and the clamp keeps exp() from overflowing.
        inner = tl.minimum(tl.maximum(k * (g + 0.044715 * g * g * g), -15.0), 15.0)
        t = 2.0 * tl.sigmoid(2.0 * inner) - 1.0
        a = 0.5 * g * (1.0 + t)
        da = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * g * g)
    else:
        a = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
        da = 0.5 * (1.0 + tl.erf(g * 0.7071067811865476)) + g * 0.3989422804014327 * tl.exp(-0.5 * g * g)
    return a, da


@triton.jit
def _fwd(G, U, Y, stride_g, stride_u, stride_y, n_cols, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    a, _ = _act(g, ACT)
    # HF rounds act(gate) to the activation dtype before the product: do the same.
    a = a.to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (a * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd(DY, G, U, DG, DU, stride_dy, stride_g, stride_u, stride_dg, stride_du, n_cols,
         ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    a, da = _act(g, ACT)
    tl.store(DG + row * stride_dg + cols, (dy * u * da).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + row * stride_du + cols, (dy * a).to(DU.dtype.element_ty), mask=mask)


def _rows(t):
    """(rows, cols) view with unit column stride; copies only when the layout needs it."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _grid(rows, cols):
    return (rows, triton.cdiv(cols, BLOCK))


def forward(gate, up, activation):
    g, u = _rows(gate), _rows(up)
    rows, cols = g.shape
    y = torch.empty((rows, cols), dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    if rows and cols:
        _fwd[_grid(rows, cols)](g, u, y, g.stride(0), u.stride(0), y.stride(0), cols,
                                ACT=_ACTS[activation], BLOCK=BLOCK, num_warps=4)
    return y.reshape(gate.shape)


def backward(dy, gate, up, activation):
    g, u, d = _rows(gate), _rows(up), _rows(dy)
    rows, cols = g.shape
    dg = torch.empty((rows, cols), dtype=gate.dtype, device=gate.device)
    du = torch.empty((rows, cols), dtype=up.dtype, device=up.device)
    if rows and cols:
        _bwd[_grid(rows, cols)](d, g, u, dg, du, d.stride(0), g.stride(0), u.stride(0), dg.stride(0),
                                du.stride(0), cols, ACT=_ACTS[activation], BLOCK=BLOCK, num_warps=4)
    return dg.reshape(gate.shape), du.reshape(up.shape)
