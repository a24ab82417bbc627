"""Demo data for block diffusion: the demo's stdlib chats and its tokenizer plus a mask token.

`make_diffusion_demo(out_dir)` makes (or reuses) the demo assets of `planc.demo_assets` — the
stdlib corpus, its 4096-token BPE and `stdlib_chat.jsonl` — and writes `tokenizer-mask/`: the same
tokenizer with `<|mask|>` added as a special token (id 4096, so the model's vocab_size must be at
least 4097: plans/models/tiny-qwen3-diffusion has 4160).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from runtime.data.kinds import load_tokenizer

from runtime.diffusion.tokenizer import MASK_TOKEN, add_mask_token, mask_token_id

from .demo_assets import make_demo_assets

__all__ = ["make_diffusion_demo"]


def make_diffusion_demo(out_dir: str | Path = "data/demo", token: str = MASK_TOKEN) -> dict:
    """The demo asset paths plus "tokenizer_mask" (a directory), "mask_token", "mask_id", "vocab"."""
    paths = make_demo_assets(out_dir)
    out = Path(paths["dir"]) / "tokenizer-mask"
    try:
        tok = load_tokenizer(out)
        mask_id = mask_token_id(tok, token)
    except (OSError, ValueError):
        tok = load_tokenizer(paths["tokenizer"])
        mask_id = add_mask_token(tok, token)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tok.save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:  # another process wrote the same directory first
            shutil.rmtree(tmp, ignore_errors=True)
    return {**paths, "tokenizer_mask": str(out), "mask_token": token, "mask_id": mask_id, "vocab": len(tok)}
