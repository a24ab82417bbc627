"""Cross-entropy over one chunk of logits, loss and gradient in one pass, in place.

One program per row: an online max / sum-exp pass over the vocabulary, then a second pass that
overwrites the row with d loss / d logits (times `scale`). Rows whose label is ignore_index get
loss 0 and a zero gradient. Label smoothing follows torch: (1-e) * nll + e * mean_j(-log p_j).
"""
import torch
import triton
import triton.language as tl

MAX_BLOCK = 32768


@triton.jit
def _ce_rows(LOGITS, stride, LABELS, LOSS, n_vocab, ignore_index, smoothing, scale,
             SMOOTH: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * stride
    label = tl.load(LABELS + row)
    if label == ignore_index:
        for off in range(0, n_vocab, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            tl.store(ptr + cols, tl.zeros((BLOCK,), dtype=tl.float32).to(LOGITS.dtype.element_ty),
                     mask=cols < n_vocab)
        tl.store(LOSS + row, 0.0)
        return
    m = float("-inf")
    d = 0.0
    total = 0.0
    for off in range(0, n_vocab, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < n_vocab
        x = tl.load(ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
        if SMOOTH:
            total += tl.sum(tl.where(mask, x, 0.0), axis=0)
    lse = m + tl.log(d)
    x_label = tl.load(ptr + label).to(tl.float32)
    loss = lse - x_label
    if SMOOTH:
        loss = (1.0 - smoothing) * loss + smoothing * (lse - total / n_vocab)
    for off in range(0, n_vocab, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < n_vocab
        x = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.exp(x - lse)
        if SMOOTH:
            g = g - smoothing / n_vocab
        g = tl.where(cols == label, g - (1.0 - smoothing), g)
        tl.store(ptr + cols, (g * scale).to(LOGITS.dtype.element_ty), mask=mask)
    tl.store(LOSS + row, loss)


def ce_rows_(logits, labels, ignore_index, smoothing, scale):
    """Per-row loss (fp32) of a (rows, vocab) logits chunk, whose values become scale * dloss/dlogits."""
    rows, vocab = logits.shape
    assert logits.stride(1) == 1
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        block = min(MAX_BLOCK, triton.next_power_of_2(vocab))
        _ce_rows[(rows,)](logits, logits.stride(0), labels, loss, vocab, ignore_index, float(smoothing),
                          float(scale), SMOOTH=smoothing > 0, BLOCK=block,
                          num_warps=32 if block >= 16384 else 8)
    return loss
