"""Omni (audio) demo data made at run time from real recordings (nothing downloaded or committed).

CPython's own test package carries real recordings of a plucked string (``test/audiodata/pluck-*``:
the same sound stored as 8/16/24/32-bit PCM, A-law and u-law, in WAV, AIFF and AU files), found
from the running interpreter. `make_omni_demo_assets(out_dir)` writes:

- ``audio/<file>``: those recordings, copied, and a few real variants of the 16-bit one (reversed,
  played twice, at half speed, quieter), made by decoding it and writing a new WAV;
- ``chat_hf.jsonl``: conversations in the Hugging Face messages format: a user plays a clip and asks
  what it is, the assistant names the sound, its encoding and container (or the variant);
- ``tokenizer/``: a vocab-1024 BPE tokenizer with the vision and audio special tokens
  (planc.vl_tokenizer, audio=True), trained on the conversations and on this Python's standard library.

Where this Python has no test/audiodata, speech from espeak-ng (if installed) reading a few sentences
is used instead; `source` in the result says which. Run as `planc demo-data --omni [DIR]`.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
import wave
from pathlib import Path

ENCODINGS = {"pcm8": "8-bit PCM", "pcm16": "16-bit PCM", "pcm24": "24-bit PCM", "pcm32": "32-bit PCM",
             "alaw": "A-law", "ulaw": "u-law"}
CONTAINERS = {"wav": "a WAV file", "aiff": "an AIFF file", "aifc": "an AIFF-C file", "au": "a Sun AU file"}
QUESTIONS = ("What do you hear?", "Describe this recording.", "What sound is this, and how is it stored?")
SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Python is a programming language.",
             "A plucked string rings and fades.", "Speech made from text.")


def audiodata() -> Path | None:
    """This interpreter's test/audiodata directory, if it has one."""
    d = Path(sysconfig.get_paths()["stdlib"]) / "test" / "audiodata"
    return d if any(d.glob("pluck-*")) else None


def _write_wav(path: Path, wave_f32, rate: int) -> None:
    import numpy as np

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(wave_f32, -1, 1) * 32767).astype("<i2").tobytes())


def _pluck_clips(src: Path, audio: Path) -> list[tuple[str, str]]:
    """(file name, description) of the recordings and their variants."""
    import numpy as np

    from runtime.data.multimodal.audio import decode

    clips = []
    for f in sorted(src.glob("pluck-*")):
        enc, ext = f.stem.split("-", 1)[1], f.suffix[1:]
        shutil.copy(f, audio / f.name)
        clips.append((f.name, f"A plucked string, stored as {ENCODINGS.get(enc, enc)} in {CONTAINERS.get(ext, ext)}."))
    x = decode(str(src / "pluck-pcm16.wav"), 16000)
    for name, y, what in (("reversed", x[::-1], "played backwards"), ("twice", np.concatenate([x, x]), "played twice"),
                          ("slow", np.interp(np.arange(0, len(x), 0.5), np.arange(len(x)), x), "at half speed"),
                          ("quiet", x * 0.2, "played quietly")):
        _write_wav(audio / f"pluck-{name}.wav", y, 16000)
        clips.append((f"pluck-{name}.wav", f"A plucked string, {what}."))
    return clips


def _speech_clips(audio: Path) -> list[tuple[str, str]]:
    clips = []
    for i, text in enumerate(SENTENCES):
        path = audio / f"speech{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        clips.append((path.name, f"A voice says: {text}"))
    return clips


def make_omni_demo_assets(out_dir: str | Path = "data/omni_demo") -> dict[str, str]:
    """Write the demo's clips, records and tokenizer; returns their paths and which source was used."""
    from planc.vl_tokenizer import train_vl_tokenizer

    out = Path(out_dir)
    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    src = audiodata()
    if src is not None:
        clips, source = _pluck_clips(src, audio), f"CPython's test recordings ({src})"
    elif shutil.which("espeak-ng"):
        clips, source = _speech_clips(audio), "speech from espeak-ng"
    else:
        raise SystemExit("error: no real audio here: this Python has no test/audiodata and espeak-ng is not installed")
    records = []
    for i, (name, answer) in enumerate(clips):
        for q in QUESTIONS:
            records.append({"messages": [
                {"role": "user", "content": [{"type": "audio", "audio": f"audio/{name}"}, {"type": "text", "text": q}]},
                {"role": "assistant", "content": answer}]})
    (out / "chat_hf.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [json.dumps(r) for r in records] + [(stdlib / m).read_text() for m in ("json/__init__.py", "wave.py")]
    train_vl_tokenizer(texts, out / "tokenizer", audio=True)
    return {"records": str(out / "chat_hf.jsonl"), "tokenizer": str(out / "tokenizer"), "audio": str(audio),
            "source": source}


if __name__ == "__main__":
    import sys

    print(json.dumps(make_omni_demo_assets(*sys.argv[1:2]), indent=1))
