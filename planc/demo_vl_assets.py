"""Vision-language demo data made at run time from real photographs (nothing downloaded or committed).

scikit-image ships a few dozen sample photographs, each with a docstring describing it
(`skimage.data.astronaut()`: "Color image of the astronaut Eileen Collins." and a paragraph on
who she is). `make_vl_demo_assets(out_dir)` writes:

- ``images/<name>.png``: the photographs (scikit-image's synthetic test patterns left out);
- ``videos/pan_<name>.mp4``: short clips panning across a few of them (PyAV, MPEG-4);
- ``chat_hf.jsonl``: conversations in the Hugging Face messages format: a user shows a picture
  and asks what it shows, the assistant answers with the docstring's title, a second turn asks for
  more and gets the description paragraph; a few two-picture, video and text-only conversations;
- ``chat_llava.json``: the same conversations in the LLaVA / ShareGPT layout (``conversations``,
  ``image``/``images``/``video``, ``<image>`` placeholders);
- ``tokenizer/``: a vocab-1024 BPE tokenizer with the Qwen-VL special tokens (planc.vl_tokenizer),
  trained on the conversations and on this Python's standard library.

Needs the `vl-demo` extra (scikit-image). Run as `python -m planc.demo_vl_assets [DIR]`.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Real photographs among skimage.data that ship with the package (no download needed).
PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
          "rocket", "text")
VIDEOS = ("astronaut", "rocket", "coffee")


def describe(doc: str) -> tuple[str, str]:
    """(title, description) from a skimage.data docstring: its first line, and its first body
    paragraphs up to the Notes/Returns sections, without links or licence notes."""
    lines = (doc or "").strip().splitlines()
    title = lines[0].strip() if lines else ""
    paragraphs, current = [], []
    for line in lines[1:] + [""]:
        text = line.strip()
        if re.fullmatch(r"-{3,}", text) or text in ("Notes", "Returns", "References"):
            break
        if text:
            current.append(text)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    keep = [p for p in paragraphs if not re.search(r"http|`|copyright|downloaded", p, re.IGNORECASE)]
    return title, " ".join(keep)


def photographs():
    """(name, RGB uint8 array, title, description) of each available photograph."""
    import numpy as np
    import skimage.data

    for name in PHOTOS:
        fn = getattr(skimage.data, name, None)
        if fn is None:
            continue
        try:
            image = np.asarray(fn())
        except Exception:  # a sample that needs a download here
            continue
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        title, details = describe(fn.__doc__)
        yield name, np.ascontiguousarray(image[..., :3]).astype(np.uint8), title, details


def write_pan_video(image, path: Path, frames: int = 12, fps: int = 6, size: int = 96) -> None:
    """A clip of `frames` square crops sliding from the left to the right of `image`, resized to
    `size` pixels (MPEG-4 through PyAV)."""
    import av
    import numpy as np
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            x = (w - side) * k // max(frames - 1, 1)
            crop = Image.fromarray(image[:side, x:x + side]).resize((size, size), Image.Resampling.BICUBIC)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(crop), "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _turns(name, title, details, media="image"):
    ask = "What does this picture show?" if media == "image" else "What do you see in this video?"
    answer = title if media == "image" else f"The camera pans slowly across a photograph. {title}"
    turns = [("user", ask, True), ("assistant", answer, False)]
    if details:
        turns += [("user", "Tell me more about it.", False), ("assistant", details, False)]
    return turns


def conversations(photos, video_dir="videos"):
    """[(media [(kind, relative path)], turns [(role, text, media_here)])] of the demo."""
    out = []
    for name, _, title, details in photos:
        out.append(([("image", f"images/{name}.png")], _turns(name, title, details)))
    for a, b in zip(photos[::2], photos[1::2]):  # two pictures at once
        out.append(([("image", f"images/{a[0]}.png"), ("image", f"images/{b[0]}.png")],
                    [("user", "Here are two pictures. What are they?", True),
                     ("assistant", f"The first one: {a[2]} The second one: {b[2]}", False)]))
    for name, _, title, details in photos:
        if name in VIDEOS:
            out.append(([("video", f"{video_dir}/pan_{name}.mp4")], _turns(name, title, "", "video")))
        if details:  # text only: no vision input in these micro-batches but the dummy one
            out.append(([], [("user", f"What is known about the scikit-image sample '{name}'?", False),
                             ("assistant", details, False)]))
    return out


def hf_record(media, turns) -> dict:
    messages = []
    for role, text, here in turns:
        parts = [{"type": kind, kind: path} for kind, path in media] if here else []
        messages.append({"role": role, "content": parts + [{"type": "text", "text": text}]})
    return {"messages": messages}


def llava_record(media, turns) -> dict:
    rec = {}
    for kind in ("image", "video"):
        paths = [p for k, p in media if k == kind]
        if paths:
            rec[kind if len(paths) == 1 else kind + "s"] = paths[0] if len(paths) == 1 else paths
    placeholders = "".join(f"<{k}>\n" for k, _ in media)
    rec["conversations"] = [{"from": "human" if role == "user" else "gpt",
                             "value": (placeholders if here else "") + text} for role, text, here in turns]
    return rec


def make_vl_demo_assets(out_dir: str | Path = "data/vl_demo") -> dict[str, str]:
    """Write the demo's images, videos, records (both layouts) and tokenizer; returns their paths."""
    from PIL import Image

    from planc.demo_assets import stdlib_files
    from planc.vl_tokenizer import train_vl_tokenizer

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(exist_ok=True)
    photos = list(photographs())
    if not photos:
        raise RuntimeError("scikit-image has no sample photographs here; install the `vl-demo` extra")
    for name, image, _, _ in photos:
        Image.fromarray(image).save(out / "images" / f"{name}.png")
        if name in VIDEOS:
            write_pan_video(image, out / "videos" / f"pan_{name}.mp4")
    convs = conversations(photos)
    with open(out / "chat_hf.jsonl", "w", encoding="utf-8") as f:
        for media, turns in convs:
            f.write(json.dumps(hf_record(media, turns)) + "\n")
    (out / "chat_llava.json").write_text(json.dumps([llava_record(m, t) for m, t in convs], indent=1))
    texts = [text for _, turns in convs for _, text, _ in turns]
    texts += [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files()[:200]]
    train_vl_tokenizer(texts, out / "tokenizer")
    return {"dir": str(out), "hf": str(out / "chat_hf.jsonl"), "llava": str(out / "chat_llava.json"),
            "tokenizer": str(out / "tokenizer"), "images": str(out / "images"), "videos": str(out / "videos")}


if __name__ == "__main__":
    print(json.dumps(make_vl_demo_assets(sys.argv[1] if len(sys.argv) > 1 else "data/vl_demo"), indent=2))
