"""The mask token of a diffusion model's tokenizer: add it, or find it."""
from __future__ import annotations

from runtime.vocab import MASK_TOKEN

__all__ = ["MASK_TOKEN", "add_mask_token", "mask_token_id"]


def add_mask_token(tok, token: str = MASK_TOKEN) -> int:
    """Make `token` the tokenizer's special mask token (added to the vocabulary when absent, as
    one indivisible token); returns its id. `len(tok)` grows by one when it was added: the model's
    vocab_size must cover it."""
    tok.add_special_tokens({"mask_token": token})
    return mask_token_id(tok, token)


def mask_token_id(tok, token: str = MASK_TOKEN) -> int:
    """The id of `token`, which must encode as that single id; ValueError otherwise."""
    ids = tok(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or tok.convert_ids_to_tokens(ids[0]) != token:
        raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has no single token {token!r} "
                         f"(it encodes as {ids}); add it with runtime.diffusion.add_mask_token")
    return int(ids[0])
