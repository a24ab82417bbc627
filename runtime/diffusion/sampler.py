"""Generation from a block-diffusion model: block by block, iterative unmasking by confidence.

The way LLaDA-style models generate (LLaDA2's own `generate` follows the same plan): the prompt,
then blocks of `block` mask tokens. Blocks are aligned to position 0, as in training, so the
prompt's last, partial block is completed first. Each block is denoised in at most `steps`
iterations; an iteration runs the model on everything up to the block's end under the block-causal
mask (the block and every earlier one: what a noisy block sees in training), predicts every
still-masked position, and keeps the most confident predictions — an even share of the block's
masks per iteration, or every prediction above `threshold` when that is more — leaving the rest
masked for the next iteration. Generation stops after `gen_length` tokens, or after the block in
which `eos_id` appears (the output is cut just after it).

No KV cache: the window is recomputed each iteration (a check of an exported model, not a server).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .mask import block_causal_mask

__all__ = ["transfer_counts", "generate"]


def transfer_counts(masked: int, steps: int) -> list[int]:
    """How many of `masked` positions to keep at each of min(steps, masked) iterations: an even
    split, the remainder going to the first iterations; the counts sum to `masked`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = min(steps, masked)
    if n == 0:
        return []
    base, extra = divmod(masked, n)
    return [base + (i < extra) for i in range(n)]


def _predict(logits: torch.Tensor, mask_id: int, temperature: float, generator):
    """Token and its probability per position; the mask token itself is never predicted."""
    logits = logits.float()
    logits[..., mask_id] = float("-inf")
    if temperature > 0:
        probs = torch.softmax(logits / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    else:
        probs = torch.softmax(logits, dim=-1)
        token = probs.argmax(dim=-1)
    return token, probs.gather(-1, token[:, None]).squeeze(-1)


@torch.no_grad()
def generate(model, prompt: Sequence[int] | torch.Tensor, *, mask_id: int, block: int, steps: int,
             gen_length: int, temperature: float = 0.0, threshold: float | None = None,
             eos_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The generated ids after `prompt` (1-D), at most `gen_length`, ending at `eos_id` if one
    was produced. temperature 0 is greedy; `generator` seeds sampling otherwise."""
    if block < 1 or gen_length < 1:
        raise ValueError(f"block and gen_length must be >= 1, got {block}, {gen_length}")
    device = next(model.parameters()).device
    prompt = torch.as_tensor(prompt, dtype=torch.long, device=device).reshape(-1)
    p = prompt.numel()
    total = -(-(p + gen_length) // block) * block
    x = torch.full((total,), mask_id, dtype=torch.long, device=device)
    x[:p] = prompt
    pending = torch.zeros(total, dtype=torch.bool, device=device)
    pending[p:] = True  # positions still to generate (a mask id in the prompt is not one)
    pos = torch.arange(total, device=device)
    attention = model.config._attn_implementation
    was_training = model.training
    model.eval()
    try:
        for b in range(p // block, total // block):
            start, end = b * block, (b + 1) * block
            mask = block_causal_mask(pos[None, :end], block, attention)
            for k in transfer_counts(int(pending[start:end].sum()), steps):
                logits = model(input_ids=x[None, :end], position_ids=pos[None, :end], attention_mask=mask,
                               use_cache=False).logits[0, start:end]
                token, conf = _predict(logits, mask_id, temperature, generator)
                todo = pending[start:end]
                conf = torch.where(todo, conf, torch.full_like(conf, float("-inf")))
                keep = torch.zeros_like(todo)
                if threshold is not None and int((conf > threshold).sum()) >= k:
                    keep = conf > threshold
                else:
                    keep[conf.topk(k).indices] = True
                x[start:end] = torch.where(keep, token, x[start:end])
                pending[start:end] &= ~keep
            if eos_id is not None and bool((x[p:end] == eos_id).any()):
                break
    finally:
        model.train(was_training)
    out = x[p:p + gen_length]
    if eos_id is not None:
        hits = (out == eos_id).nonzero()
        if hits.numel():
            out = out[:int(hits[0, 0]) + 1]
    return out
