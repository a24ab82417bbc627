"""Grouped GEMM for MoE experts in Triton: y[rows of group e] = x[rows of group e] @ w[e].

Rows are sorted by group. The forward (and the input gradient, the same product with w[e]^T) is
one launch over all groups: the host lists (group, first row) for every BLOCK_M tile of every
group, once per call. The weight gradient dw[e] = x_e^T @ dy_e is one launch over (group, K
tile, N tile) programs that loop over the group's rows. Accumulation is fp32; fp32 inputs use
IEEE products unless torch allows TF32 for matmuls, to give what torch.mm gives.
"""
import torch
import triton
import triton.language as tl

from ..backend import interpreter_on

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32


@triton.jit
def _grouped_mm(X, W, Y, TILE_GROUP, TILE_ROW, GROUP_END, K, N,
                sxm, sxk, swe, swk, swn, sym, syn,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    tile = tl.program_id(0)
    pn = tl.program_id(1)
    group = tl.load(TILE_GROUP + tile).to(tl.int64)
    row0 = tl.load(TILE_ROW + tile).to(tl.int64)
    row_end = tl.load(GROUP_END + group).to(tl.int64)
    rows = row0 + tl.arange(0, BM)
    cols = pn * BN + tl.arange(0, BN)
    row_ok = rows < row_end
    col_ok = cols < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < K
        a = tl.load(X + rows[:, None] * sxm + ks[None, :] * sxk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(W + group * swe + ks[:, None] * swk + cols[None, :] * swn,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    tl.store(Y + rows[:, None] * sym + cols[None, :] * syn, acc.to(Y.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grouped_wgrad(X, DY, DW, GROUP_START, GROUP_END, K, N,
                   sxm, sxk, sdm, sdn, swe, swk, swn,
                   PRECISION: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    group = tl.program_id(0).to(tl.int64)
    pk = tl.program_id(1)
    pn = tl.program_id(2)
    start = tl.load(GROUP_START + group)
    end = tl.load(GROUP_END + group)
    ks = pk * BK + tl.arange(0, BK)
    cols = pn * BN + tl.arange(0, BN)
    k_ok = ks < K
    col_ok = cols < N
    acc = tl.zeros((BK, BN), dtype=tl.float32)
    for m0 in range(start, end, BM):
        rows = (m0 + tl.arange(0, BM)).to(tl.int64)
        row_ok = rows < end
        xt = tl.load(X + rows[None, :] * sxm + ks[:, None] * sxk, mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        dy = tl.load(DY + rows[:, None] * sdm + cols[None, :] * sdn, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            xt, dy = xt.to(tl.float32), dy.to(tl.float32)
        acc = tl.dot(xt, dy, acc, input_precision=PRECISION)
    tl.store(DW + group * swe + ks[:, None] * swk + cols[None, :] * swn, acc.to(DW.dtype.element_ty),
             mask=k_ok[:, None] & col_ok[None, :])


def _precision(dtype):
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _upcast(dtype) -> bool:
    # The interpreter's tl.dot multiplies the raw bits of bf16/fp16 operands (triton 3.9); there,
    # and only there, 16-bit tiles are widened to fp32 first. GPUs take them as they are.
    return interpreter_on() and dtype != torch.float32


def _bounds(group_sizes, device):
    """Group sizes and first rows as host lists (one sync), and the groups' start/end rows as int32
    tensors on `device`."""
    sizes = [int(s) for s in group_sizes.tolist()]
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    ends = [start + size for start, size in zip(starts, sizes)]

    def on_device(values):
        return torch.tensor(values, dtype=torch.int32, device=device)

    return sizes, starts, on_device(starts), on_device(ends)


def grouped_mm(x, w, group_sizes):
    """x (S, K) sorted by group, w (E, K, N) any strides, group_sizes (E,): y (S, N), rows past the
    last group zero."""
    s_rows, k_dim = x.shape
    n_groups, _, n_dim = w.shape
    sizes, starts, _, ends = _bounds(group_sizes, x.device)
    y = torch.zeros((s_rows, n_dim), dtype=x.dtype, device=x.device)
    tile_group, tile_row = [], []  # one (group, first row) per BLOCK_M rows of every group
    for e, (start, size) in enumerate(zip(starts, sizes)):
        for r in range(start, start + size, BLOCK_M):
            tile_group.append(e)
            tile_row.append(r)
    if not tile_group or n_dim == 0:
        return y
    tg = torch.tensor(tile_group, dtype=torch.int32, device=x.device)
    tr = torch.tensor(tile_row, dtype=torch.int32, device=x.device)
    grid = (len(tile_group), triton.cdiv(n_dim, BLOCK_N))
    _grouped_mm[grid](x, w, y, tg, tr, ends, k_dim, n_dim, *x.stride(), *w.stride(), *y.stride(),
                      PRECISION=_precision(x.dtype), UPCAST=_upcast(x.dtype), BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K,
                      num_warps=4)
    return y


def grouped_wgrad(x, dy, group_sizes, like):
    """dw[e] = x_e^T @ dy_e for every group, laid out with the strides of `like` (the weight)."""
    k_dim, n_dim = x.shape[1], dy.shape[1]
    n_groups = like.shape[0]
    _, _, starts, ends = _bounds(group_sizes, x.device)
    # Same layout as the weight (often a transposed view of the parameter): its grad stays contiguous.
    dw = torch.empty_like(like)
    if dw.numel() == 0:
        return dw
    grid = (n_groups, triton.cdiv(k_dim, BLOCK_K), triton.cdiv(n_dim, BLOCK_N))
    _grouped_wgrad[grid](x, dy, dw, starts, ends, k_dim, n_dim, *x.stride(), *dy.stride(), *dw.stride(),
                         PRECISION=_precision(x.dtype), UPCAST=_upcast(x.dtype), BM=BLOCK_M, BN=BLOCK_N,
                         BK=BLOCK_K, num_warps=4)
    return dw
