"""A small byte-level BPE tokenizer with the Qwen-VL special tokens, for CPU demos and tests.

`train_vl_tokenizer(texts, out)` trains it on the given texts and saves it as a Hugging Face
tokenizer directory whose vision tokens are named (``tok.image_token``, ``tok.image_token_id``...)
as the Qwen-VL processors expect, with the built-in vision-language chat template. The special
tokens take ids 0-6 in the order of `SPECIAL_TOKENS`; the tiny VL configs in plans/models/
(tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-qwen3-vl, tiny-qwen3-vl-moe) use exactly these ids. With
`audio=True` the audio tokens follow (ids 7-9, `AUDIO_TOKENS`), as the tiny Omni thinker configs
(tiny-qwen2.5-omni-thinker, tiny-qwen3-omni-moe-thinker) expect.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
AUDIO_SPECIAL_TOKENS = ["<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"]
# Named as the Qwen-VL processors look them up on the tokenizer.
VISION_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}


def train_vl_tokenizer(texts: Iterable[str], out: str | Path, vocab_size: int = VOCAB_SIZE, audio: bool = False) -> Path:
    """Train on `texts`, save to `out` (replacing it); pad = <|endoftext|>, eos = <|im_end|>; with
    `audio`, the audio start/end/pad tokens too."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from runtime.data.multimodal.template import QWEN_VL_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = SPECIAL_TOKENS + (AUDIO_SPECIAL_TOKENS if audio else [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # every byte: no <unk>
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   extra_special_tokens=dict(VISION_TOKENS, **(
                                       {"audio_token": "<|audio_pad|>"} if audio else {})),
                                   model_max_length=1_000_000)
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = QWEN_VL_TEMPLATE
    if audio:  # the Omni thinkers' layout of the same conversation parts, plus audio clips
        from runtime.data.multimodal.omni import omni_template

        fast.chat_template = omni_template({
            "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "audio_token": "<|audio_pad|>",
            "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
            "audio_start_token": "<|audio_start|>", "audio_end_token": "<|audio_end|>"})
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fast.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
