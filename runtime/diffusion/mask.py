"""Attention masks of block diffusion, as the attention implementation needs them.

Training input is a row of 2L tokens, ``[x_t ; x_0]``: the noisy copy then the clean copy, both
with the row's position ids. A token's *block* is ``position_id // block``. planc's packer restarts
position ids at 0 for every document, so blocks are counted from each document's start (dFactory
trains one sample per row, where ``position // block`` is the same thing). Which query may see
which key (q -> k), always only inside one document of a packed row:

    noisy -> noisy   same block               (the block is denoised jointly, bidirectionally)
    noisy -> clean   strictly earlier block   (the context the block is conditioned on)
    clean -> clean   same or earlier block    (block-causal: the clean copy computes that context)
    clean -> noisy   never

Inference (`block_causal_mask`) is the clean rule on a plain sequence: the block being denoised
and every earlier one, which is what a noisy block sees in training.

A document starts where the position ids do not continue the previous token (+1), as in
`runtime.parallel.ulysses.block_causal_mask`. A 4-D mask switches off transformers' own
packed-sequence detection, hence the same-document term.

Dtypes are not a choice of the caller: `sdpa` takes a bool mask (True = attend); `eager` ADDS its
mask to the scores, so it must get an additive float mask (0 / most negative) — a bool mask there is
silently added as 0/1 and leaks. Flash attention takes no 4-D mask and flex_attention has no
backward on CPU: both are refused here with the reason.
"""
from __future__ import annotations

import torch

__all__ = ["MASK_KINDS", "mask_kind", "document_ids", "block_diffusion_mask", "block_causal_mask",
           "split_halves"]

# attention implementation -> the kind of 4-D mask it takes
MASK_KINDS = {"sdpa": "bool", "eager": "additive"}
_REFUSED = {
    "flash_attention_2": "flash attention takes no 4-D attention mask (only padding masks)",
    "flash_attention_3": "flash attention takes no 4-D attention mask (only padding masks)",
    "flex_attention": "flex_attention needs a BlockMask and has no backward on CPU; not built here",
}
_ULYSSES = "Ulysses sequence parallelism slices the row; the 2L block-diffusion mask is not sliced"


def mask_kind(attention: str) -> str:
    """'bool' or 'additive' for an attention implementation; ValueError when it cannot take a
    block-diffusion mask."""
    if attention in MASK_KINDS:
        return MASK_KINDS[attention]
    if attention.startswith("ulysses"):  # runtime.parallel.ulysses registers ulysses_<inner>
        why = _ULYSSES
    else:
        why = _REFUSED.get(attention, f"unknown attention implementation {attention!r}")
    raise ValueError(f"block diffusion needs attention = sdpa or eager: {why}")


def _as_kind(allowed: torch.Tensor, attention: str, dtype: torch.dtype) -> torch.Tensor:
    kind = mask_kind(attention)
    if kind == "bool":
        return allowed
    if not dtype.is_floating_point:
        raise ValueError(f"eager attention adds its mask to the scores: dtype must be floating, got {dtype}")
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) -> (B, L) document number of each token: a new document wherever the position ids
    do not continue the previous token."""
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be (batch, seq), got shape {tuple(position_ids.shape)}")
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts.long().cumsum(dim=1)


def _relations(position_ids: torch.Tensor, block: int):
    """(same document, key block < query block, key block == query block), each (B, L, L)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    doc = document_ids(position_ids)
    blk = position_ids // block
    same_doc = doc[:, :, None] == doc[:, None, :]
    bq, bk = blk[:, :, None], blk[:, None, :]
    return same_doc, same_doc & (bk < bq), same_doc & (bk == bq)


def split_halves(position_ids: torch.Tensor) -> torch.Tensor:
    """The (B, L) position ids of a (B, 2L) block-diffusion row, checking both halves agree."""
    if position_ids.dim() != 2 or position_ids.shape[1] % 2:
        raise ValueError(f"a block-diffusion row is [x_t ; x_0]: position_ids must be (batch, 2L), "
                         f"got shape {tuple(position_ids.shape)}")
    n = position_ids.shape[1] // 2
    half = position_ids[:, :n]
    if not torch.equal(half, position_ids[:, n:]):
        raise ValueError("the noisy and clean halves of a block-diffusion row have different position ids")
    return half


def block_diffusion_mask(position_ids: torch.Tensor, block: int, attention: str,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, 2L, 2L) training mask for a (B, 2L) ``[x_t ; x_0]`` row, in the kind `attention`
    takes (bool for sdpa; additive `dtype` for eager). `position_ids` is the doubled row's."""
    mask_kind(attention)  # refuse before building anything
    half = split_halves(position_ids)
    _, earlier, same = _relations(half, block)
    noisy = torch.cat([same, earlier], dim=2)                           # noisy queries: [noisy keys | clean keys]
    clean = torch.cat([torch.zeros_like(same), earlier | same], dim=2)  # clean queries
    return _as_kind(torch.cat([noisy, clean], dim=1)[:, None], attention, dtype)


def block_causal_mask(position_ids: torch.Tensor, block: int, attention: str,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, L, L) inference mask of a plain row: same or earlier block, same document."""
    mask_kind(attention)
    _, earlier, same = _relations(position_ids, block)
    return _as_kind((earlier | same)[:, None], attention, dtype)
