"""Small Omni (audio) test data made on the fly: a tokenizer with the vision and audio special tokens,
synthesised sound clips (tones and noise bursts written with the stdlib `wave` module), noise images
and conversation records with audio, image + audio, image and text-only turns. Imported by the Omni
tests and by their multi-process drivers."""
from __future__ import annotations

import inspect
import json
import wave
from pathlib import Path

import numpy as np

import vlfix

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {name: REPO / "plans" / "models" / name
           for name in ("tiny-qwen2.5-omni-thinker", "tiny-qwen3-omni-moe-thinker")}
# Short clips keep a CPU step well under a second: 0.3-1.2 s at 16 kHz is 30-120 feature frames.
AUDIO = dict(rate=16000, max_seconds=4.0)


def write_wav(path: Path, seconds: float, rate: int = 22050, freq: float = 440.0, seed: int = 0) -> Path:
    """A 16-bit mono wav: a tone with noise (at `rate`, resampled by the reader)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def make_data(root: Path) -> dict:
    """Tokenizer, media and a jsonl of 8 conversations (audio, image + audio, image, text-only)."""
    import textwrap

    from planc.vl_tokenizer import train_vl_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok = train_vl_tokenizer([inspect.getsource(json), inspect.getsource(textwrap)], root / "tokenizer", audio=True)
    media = root / "media"
    media.mkdir(exist_ok=True)
    for i in range(4):
        vlfix.write_image(media / f"img{i}.png", 40 + 12 * i, 90 - 8 * i, seed=i)
        write_wav(media / f"clip{i}.wav", 0.3 + 0.3 * i, freq=220.0 * (i + 1), seed=i)
    words = textwrap.dedent(inspect.getsource(textwrap)).split()
    records = []
    for i in range(8):
        answer = " ".join(words[7 * i: 7 * i + 5 + i])
        if i % 4 == 0:
            parts = [{"type": "audio", "audio": f"media/clip{i % 4}.wav"}, {"type": "text", "text": "What is heard?"}]
        elif i % 4 == 1:
            parts = [{"type": "image", "image": f"media/img{i % 4}.png"}, {"type": "text", "text": "and"},
                     {"type": "audio", "audio": f"media/clip{(i + 1) % 4}.wav"}]
        elif i % 4 == 2:
            parts = [{"type": "image", "image": f"media/img{i % 4}.png"}, {"type": "text", "text": "What is it?"}]
        else:
            parts = f"Say something about text wrapping, part {i}."
        records.append(vlfix.hf(parts, answer))
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    no_audio = [r for i, r in enumerate(records) if i % 4 in (2, 3)]
    (root / "chat_no_audio.jsonl").write_text("".join(json.dumps(r) + "\n" for r in no_audio))
    return {"dir": root, "tokenizer": tok, "chat": root / "chat.jsonl", "chat_no_audio": root / "chat_no_audio.jsonl"}


def processor(name: str, tokenizer, **audio):
    from runtime.data.kinds import load_tokenizer
    from runtime.data.multimodal.omni import build_omni_processor
    from runtime.model import load_config

    return build_omni_processor(load_tokenizer(tokenizer), load_config(CONFIGS[name]), audio={**AUDIO, **audio},
                                **vlfix.SMALL)


def reference(name: str, seed: int = 0, dtype=None):
    """A one-process thinker from the config (use_cache off on the text config), seeded."""
    import torch
    from transformers import AutoModelForImageTextToText

    from runtime.model import load_config

    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(load_config(CONFIGS[name]), dtype=dtype or torch.float32)
