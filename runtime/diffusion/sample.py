"""Text from a trained block-diffusion model: what a `planc sample` of a diffusion export calls.

    text = run("out/diffusion-demo/hf", "def main(", block=32)                        # HF export
    text = run("out/diffusion-demo/step_40", "def main(", block=32,
               config="plans/models/tiny-qwen3-diffusion", tokenizer="data/demo/tokenizer-mask")

Loading is runtime.sample's (an HF export, or a DCP checkpoint with its config); generation is
`sampler.generate`: block by block, unmasking the most confident predictions (not transformers'
left-to-right `generate`, which a diffusion model does not follow). `block` is the plan's
`train.block` (the blocks it trained on); the tokenizer must hold the plan's mask token.
"""
from __future__ import annotations

import torch

from runtime.vocab import MASK_TOKEN

from .sampler import generate
from .tokenizer import mask_token_id

__all__ = ["run"]


def run(path, prompt: str, *, block: int, steps: int | None = None, max_new_tokens: int = 64,
        mask_token: str = MASK_TOKEN, temperature: float = 0.0, threshold: float | None = None, seed: int = 0,
        config=None, tokenizer=None, dtype: str = "fp32", device: str = "cpu") -> str:
    """The prompt's continuation (new text only). `steps`: denoising iterations per block (default
    `block`: one token per iteration). Stops after the block holding the tokenizer's eos token."""
    from pathlib import Path

    from runtime.data import load_tokenizer
    from runtime.sample import load_model

    model = load_model(path, config=config, dtype=dtype, device=device)
    model.config.use_cache = False  # every iteration recomputes its window under the block mask
    tok_dir = tokenizer or path
    if not (Path(tok_dir) / "tokenizer.json").is_file() and not (Path(tok_dir) / "tokenizer_config.json").is_file():
        raise SystemExit(f"error: no tokenizer in {tok_dir}: give one (--tokenizer DIR)")
    tok = load_tokenizer(tok_dir)
    try:
        mask_id = mask_token_id(tok, mask_token)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    gen = torch.Generator().manual_seed(seed) if temperature > 0 else None
    out = generate(model, ids, mask_id=mask_id, block=block, steps=steps or block, gen_length=max_new_tokens,
                   temperature=temperature, threshold=threshold, eos_id=tok.eos_token_id, generator=gen)
    return tok.decode(out.tolist(), skip_special_tokens=True)
