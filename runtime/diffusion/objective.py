"""Block-diffusion SFT (LLaDA2 as dFactory trains it) on planc's packed batches.

What is noised. planc's documents carry ALREADY-SHIFTED labels: ``labels[t] = ids[t+1]`` when
token t+1 is a target (an assistant token of an SFT conversation; every token after the first of
a pretraining chunk), else -100. A diffusion model predicts a token AT its own position, so the
response (maskable) positions are the target tokens themselves: ``response[t] = labels[t-1] !=
-100`` (never the first token of a document: a document's last label is always -100, so the
shift never crosses into the next document of a packed row). The clean ids ``x_0`` are the row's
``input_ids``, prompt included; the prompt and padding are never masked.

The transform (`noise_batch`, for a whole step `noise_step`), per micro-batch of B rows of L:

    before: input_ids (B, L)   labels (B, L) shifted, -100 = none   position_ids (B, L)
    after:  input_ids (B, 2L)  = [x_t ; x_0]      x_t: response tokens -> mask_id with prob. t
            position_ids (B, 2L) = [pos ; pos]
            labels (B, 2L)     = [x_0 where masked, else -100 ; all -100]

so `runtime.loss.count_targets` counts the masked tokens: the loss is normalised by the step's
global number of masked tokens, like every planc loss (dFactory averages per micro-batch; no 1/t
weight, as in its code). Then `loss_sum` runs the model with the block-diffusion mask for the
model's attention implementation (mask.py) and sums the cross-entropy of the noisy half.

Departures from dFactory, deliberate: every assistant turn is a response (planc's SFT labels), not
only the last one; padding is not a target (rows are packed, not padded to max_len); documents
are packed several to a row, blocks counted from each document's start.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from runtime.loss import IGNORE, cross_entropy_sum

from .mask import block_diffusion_mask, document_ids
from .noise import check_noise, document_rng, draw_mask

__all__ = ["response_mask", "noise_batch", "noise_step", "loss_sum"]


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the tokens that are targets of planc's shifted labels (the maskable ones)."""
    out = torch.zeros_like(labels, dtype=torch.bool)
    out[:, 1:] = labels[:, :-1] != IGNORE
    return out


def noise_batch(batch: dict, *, mask_id: int, noise, seed: int, step: int, first_row: int) -> dict:
    """One micro-batch -> its block-diffusion form (see the module docstring). `first_row` is the
    global number, within the step, of the batch's first row; `step` the optimizer step."""
    if mask_id < 0:
        raise ValueError(f"mask_id must be a token id >= 0, got {mask_id}")
    check_noise(noise)
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    if not (ids.shape == labels.shape == pos.shape) or ids.dim() != 2:
        raise ValueError(f"input_ids, labels and position_ids must all be (batch, seq); got "
                         f"{tuple(ids.shape)}, {tuple(labels.shape)}, {tuple(pos.shape)}")
    maskable = response_mask(labels).cpu().numpy()
    docs = document_ids(pos).cpu().numpy()
    masked = np.zeros_like(maskable)
    for r in range(ids.shape[0]):
        bounds = np.flatnonzero(np.diff(docs[r], prepend=docs[r, 0] - 1))  # each document's first token
        for d, (a, b) in enumerate(zip(bounds, list(bounds[1:]) + [ids.shape[1]])):
            if maskable[r, a:b].any():
                _, masked[r, a:b] = draw_mask(maskable[r, a:b], noise, document_rng(seed, step, first_row + r, d))
    masked = torch.from_numpy(masked).to(ids.device)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    targets = torch.where(masked, ids, torch.full_like(ids, IGNORE))
    return {"input_ids": torch.cat([noisy, ids], dim=1),
            "position_ids": torch.cat([pos, pos], dim=1),
            "labels": torch.cat([targets, torch.full_like(ids, IGNORE)], dim=1)}


def noise_step(micro_batches, *, mask_id: int, noise, seed: int, step: int, dp_rank: int) -> list[dict]:
    """All micro-batches of this rank's step -> their block-diffusion form.

    Global rows: the loader hands data-parallel rank r the r-th contiguous share of the step's rows
    (every rank the same number), in micro-batch order; so this rank's first row is
    ``dp_rank * rows here``, and every layout numbers each row, hence seeds its noise, the same."""
    rows = sum(int(mb["input_ids"].shape[0]) for mb in micro_batches)
    out, at = [], dp_rank * rows
    for mb in micro_batches:
        out.append(noise_batch(mb, mask_id=mask_id, noise=noise, seed=seed, step=step, first_row=at))
        at += int(mb["input_ids"].shape[0])
    return out


def _takes_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def loss_sum(model, batch: dict, *, block: int) -> torch.Tensor:
    """Summed cross-entropy of the masked tokens of one block-diffusion micro-batch (on the
    device). The mask comes in the kind the model's attention implementation takes. Only the noisy
    half's logits are computed when the model supports `logits_to_keep`.

    No MoE load-balancing loss, as dFactory trains LLaDA2 (`output_router_logits=False`; its router
    balances with an expert bias). transformers computes that loss from a 2-D padding mask and
    fails on a 4-D one, so a config asking for router logits is refused here."""
    if getattr(model.config, "output_router_logits", False):
        raise ValueError("block diffusion trains without the MoE load-balancing loss (transformers computes it "
                         "from a 2-D mask; this objective passes a 4-D one): set output_router_logits=False")
    n = batch["input_ids"].shape[1] // 2
    mask = block_diffusion_mask(batch["position_ids"], block, model.config._attn_implementation)
    extra = {}
    if _takes_logits_to_keep(model):
        extra["logits_to_keep"] = torch.arange(n, device=batch["input_ids"].device)
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask,
                use_cache=False, **extra)
    return cross_entropy_sum(out.logits[:, :n], batch["labels"][:, :n])
