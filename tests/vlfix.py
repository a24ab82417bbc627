"""Small vision-language test data made on the fly: a tokenizer with the Qwen-VL special tokens
(trained on a few stdlib modules' source), noise images, short videos, conversation records in
both layouts, and the processor/model helpers the VL tests share. Imported by tests and by the
multi-process drivers in tests/mp/."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {name: REPO / "plans" / "models" / name
           for name in ("tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-qwen3-vl-moe")}
# Small media so a CPU step stays well under a second: images of 2-12 merged tokens.
SMALL = dict(min_pixels=28 * 28, max_pixels=96 * 96, video_min_pixels=28 * 28, video_max_pixels=64 * 64,
             video_fps=4.0, video_min_frames=2, video_max_frames=8)


def write_image(path: Path, height: int, width: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_video(path: Path, frames: int, size=(48, 64), fps: int = 4, seed: int = 0) -> Path:
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def hf(user_parts, answer, *, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": user_parts},
                                    {"role": "assistant", "content": answer}]}


def make_data(root: Path) -> dict:
    """Tokenizer, media and a jsonl of 12 conversations (images, two-image, video, text-only)."""
    import json as json_module
    import textwrap

    from planc.vl_tokenizer import train_vl_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok = train_vl_tokenizer([inspect.getsource(json_module), inspect.getsource(textwrap)], root / "tokenizer")
    media = root / "media"
    media.mkdir(exist_ok=True)
    for i in range(6):
        write_image(media / f"img{i}.png", 40 + 12 * i, 90 - 8 * i, seed=i)
    write_video(media / "clip0.mp4", frames=6, seed=10)
    write_video(media / "clip1.mp4", frames=9, size=(56, 40), seed=11)
    words = textwrap.dedent(inspect.getsource(textwrap)).split()
    records = []
    for i in range(12):
        answer = " ".join(words[7 * i: 7 * i + 5 + i])
        if i % 4 == 3:
            records.append(hf(f"Say something about text wrapping, part {i}.", answer))
        elif i % 4 == 2:
            records.append(hf([{"type": "video", "video": f"media/clip{i % 2}.mp4"},
                               {"type": "text", "text": "What happens here?"}], answer))
        elif i % 4 == 1:
            records.append(hf([{"type": "image", "image": f"media/img{i % 6}.png"},
                               {"type": "text", "text": "Compare with"},
                               {"type": "image", "image": f"media/img{(i + 1) % 6}.png"}], answer))
        else:
            records.append(hf([{"type": "image", "image": f"media/img{i % 6}.png"},
                               {"type": "text", "text": f"What is in picture {i}?"}], answer))
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    images_only = [r for i, r in enumerate(records) if i % 4 in (0, 1, 3)]
    (root / "chat_images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in images_only))
    return {"dir": root, "tokenizer": tok, "chat": root / "chat.jsonl", "chat_images": root / "chat_images.jsonl"}


def processor(name: str, tokenizer, **settings):
    from runtime.data.kinds import load_tokenizer
    from runtime.data.multimodal import VLProcessor, settings_for
    from runtime.model import load_config

    config = load_config(CONFIGS[name])
    return VLProcessor(load_tokenizer(tokenizer), config, settings_for(config, **{**SMALL, **settings}))


def reference(name: str, seed: int = 0, dtype=None):
    """A one-process model from the config (use_cache off on the text config), seeded."""
    import torch
    from transformers import AutoModelForImageTextToText

    from runtime.model import load_config

    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(load_config(CONFIGS[name]), dtype=dtype or torch.float32)
