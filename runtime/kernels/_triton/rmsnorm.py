"""RMSNorm forward and backward in Triton.

Each program handles a (BLOCK_R rows, whole hidden dim) tile: one row per program for wide
hidden sizes, several when rows are short (Qwen3's per-head q/k norms). Backward gives each
program a contiguous range of rows and writes one partial weight gradient per program (summed
in torch), so no atomics are needed.
"""
import torch
import triton
import triton.language as tl

from ..backend import launch_warps, program_count

MAX_BLOCK = 65536
TILE = 4096  # elements per tile when rows are short


@triton.jit
def _fwd(X, W, Y, RSTD, stride_x, stride_y, n_rows, N, eps, offset,
         GEMMA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < N)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32) + offset
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / N + eps)
    n = x * rstd[:, None]
    if GEMMA:
        y = n * w[None, :]
    else:
        # Llama casting: the normalised value is rounded to the input dtype before the weight.
        y = n.to(X.dtype.element_ty).to(tl.float32) * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _bwd(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, n_rows, N, offset,
         rows_per_program, GEMMA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    col_ok = cols < N
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32) + offset
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    # int64 bounds keep row * stride from overflowing on big activations.
    start = pid.to(tl.int64) * rows_per_program
    end = tl.minimum(start + rows_per_program, n_rows)
    for r0 in range(start, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < end
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        n = x * rstd[:, None]
        if GEMMA:
            dw += tl.sum(dy * n, axis=0)
        else:
            dw += tl.sum(dy * n.to(X.dtype.element_ty).to(tl.float32), axis=0)
        dn = dy * w[None, :]
        dx = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / N)[:, None])
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PART + pid * N + cols, dw, mask=col_ok)


def _blocks(rows: int, n: int):
    block = triton.next_power_of_2(n)
    if block > MAX_BLOCK:
        raise ValueError(f"rmsnorm: hidden size {n} is above the Triton kernel's limit {MAX_BLOCK}")
    block_r = max(1, min(triton.next_power_of_2(max(rows, 1)), TILE // block))
    return block_r, block


def forward(x2d, weight, eps, offset, gemma, out_dtype):
    rows, n = x2d.shape
    y = torch.empty((rows, n), dtype=out_dtype, device=x2d.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x2d.device)
    block_r, block = _blocks(rows, n)
    if rows:
        _fwd[(triton.cdiv(rows, block_r),)](x2d, weight, y, rstd, x2d.stride(0), y.stride(0), rows, n, eps,
                                            offset, GEMMA=gemma, BLOCK_R=block_r, BLOCK=block,
                                            num_warps=launch_warps(block_r * block))
    return y, rstd


def backward(dy2d, x2d, weight, rstd, offset, gemma):
    rows, n = x2d.shape
    dy2d = dy2d.contiguous()
    dx = torch.empty_like(x2d)
    block_r, block = _blocks(rows, n)
    programs = program_count(x2d.device, triton.cdiv(rows, block_r))
    per_program = triton.cdiv(rows, programs) if rows else 0
    dw_part = torch.zeros((programs, n), dtype=torch.float32, device=x2d.device)
    if rows:
        _bwd[(programs,)](dy2d, x2d, weight, rstd, dx, dw_part, dy2d.stride(0), x2d.stride(0),
                          dx.stride(0), rows, n, offset, per_program, GEMMA=gemma, BLOCK_R=block_r,
                          BLOCK=block, num_warps=launch_warps(block_r * block))
    return dx, dw_part.sum(0)
