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


def write_av(path: Path, frames: int = 8, seconds: float = 2.0, fps: int = 4, seed: int = 0) -> Path:
    """A Matroska video (MPEG-4 noise frames) with a 16 kHz mono PCM tone as its audio track."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.height, vs.width, vs.pix_fmt = 48, 64, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=16000)
        a.layout = "mono"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "rgb24")
            for packet in vs.encode(frame):
                c.mux(packet)
        tone = (np.sin(np.arange(int(seconds * 16000)) / 5.0) * 8000).astype(np.int16)[None]
        sound = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        sound.sample_rate = 16000
        for packet in [*a.encode(sound), *a.encode(), *vs.encode()]:
            c.mux(packet)
    return path


def make_data(root: Path) -> dict:
    """Tokenizer, media and a jsonl of 8 conversations (audio, image + audio, image, text-only)."""
    import textwrap

    from planc.vl_tokenizer import train_vl_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok = train_vl_tokenizer([inspect.getsource(json), inspect.getsource(textwrap)], root / "tokenizer", audio=True)
    media = root / "media"
    media.mkdir(exist_ok=True)
    write_av(media / "av0.mkv", frames=14, seconds=3.5)  # over 2 s: audio and video interleave by chunk
    write_av(media / "av1.mkv", frames=6, seconds=1.5, seed=1)
    vlfix.write_video(media / "silent.mp4", frames=6, seed=12)
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
    av_records = [vlfix.hf([{"type": "video", "video": f"media/av{i}.mkv"}, {"type": "text", "text": "What is it?"}],
                           " ".join(words[5 * i: 5 * i + 6])) for i in range(2)]
    av_records.append(vlfix.hf([{"type": "image", "image": "media/img0.png"}, {"type": "audio", "audio": "media/clip2.wav"}],
                               "a picture and a tone"))
    (root / "chat_av.jsonl").write_text("".join(json.dumps(r) + "\n" for r in av_records))
    no_audio = [r for i, r in enumerate(records) if i % 4 in (2, 3)]
    (root / "chat_no_audio.jsonl").write_text("".join(json.dumps(r) + "\n" for r in no_audio))
    return {"dir": root, "tokenizer": tok, "chat": root / "chat.jsonl", "chat_no_audio": root / "chat_no_audio.jsonl",
            "chat_av": root / "chat_av.jsonl", "silent": media / "silent.mp4"}


def processor(name: str, tokenizer, use_audio_in_video=False, **audio):
    from runtime.data.kinds import load_tokenizer
    from runtime.data.multimodal.omni import build_omni_processor
    from runtime.model import load_config

    return build_omni_processor(load_tokenizer(tokenizer), load_config(CONFIGS[name]), audio={**AUDIO, **audio},
                                use_audio_in_video=use_audio_in_video, **vlfix.SMALL)


def reference(name: str, seed: int = 0, dtype=None):
    """A one-process thinker from the config (use_cache off on the text config), seeded."""
    import torch
    from transformers import AutoModelForImageTextToText

    from runtime.model import load_config

    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(load_config(CONFIGS[name]), dtype=dtype or torch.float32)
