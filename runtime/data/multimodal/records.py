"""Conversation records with images and videos -> messages of typed parts + the media they name.

Two record layouts are read, told apart by the messages themselves:

- Hugging Face messages: ``{"messages": [{"role": "user", "content": [{"type": "image", "image":
  "cat.jpg"}, {"type": "text", "text": "What is this?"}]}, {"role": "assistant", "content": "..."}]}``
  (a content may also be a plain string; a media part may name its file under "path"; ``{"type":
  "audio", "audio": "clip.wav"}`` is a sound clip, for the Omni thinkers).
- LLaVA / ShareGPT: ``{"image": "cat.jpg", "conversations": [{"from": "human", "value":
  "<image>\\nWhat is this?"}, {"from": "gpt", "value": "..."}]}`` with ``image``/``images`` and
  ``video``/``videos``, ``audio``/``audios`` (a string or a list) and ``<image>`` / ``<video>`` / ``<audio>`` placeholders; media without
  any placeholder go in front of the first user turn, as LLaVA does.

Relative media paths are taken from the directory of the file holding the record. The result is
(messages, media): every content a list of ``{"type": "text"|"image"|"video"}`` parts, and media the
``(kind, path)`` pairs in the order their parts appear. A record that is not usable raises
`RecordError` whose reason becomes a bad-record reason.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

KINDS = ("image", "video", "audio")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
          "system": "system"}
_PLACEHOLDER = re.compile(r"<(image|video|audio)>")


class RecordError(ValueError):
    """A record that is not a usable vision-language conversation."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def base_dir(where: str) -> Path:
    """The directory relative media paths start from, for a record at `where` (``file:line``)."""
    file = Path(where.rsplit(":", 1)[0])
    return file if file.is_dir() else file.parent


def conversation(value: dict, field: str, root: Path, system_prompt: str | None = None):
    """(messages, media) of one record (see the module docstring); raises RecordError."""
    turns = value.get(field)
    if turns is None and field == "messages":
        turns = value.get("conversations")
    if isinstance(turns, str):  # CSV and some exports store the list as a JSON string
        try:
            turns = json.loads(turns)
        except ValueError:
            raise RecordError("messages is not a list", "a string that is not JSON") from None
    if not isinstance(turns, list):
        raise RecordError("messages is not a list", type(turns).__name__)
    if not turns:
        raise RecordError("empty conversation")
    if all(isinstance(t, dict) and "from" in t for t in turns):
        messages, media = _llava(value, turns, root)
    else:
        messages, media = _hf(turns, root)
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise RecordError("no assistant turn")
    if not any(p["type"] == "text" and p["text"].strip() for m in assistant for p in m["content"]):
        raise RecordError("empty assistant turns")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return messages, media


def _path(spec, root: Path, kind: str) -> str:
    if not isinstance(spec, str) or not spec:
        raise RecordError(f"missing {kind} path", repr(spec)[:80])
    if "://" in spec:
        raise RecordError(f"remote {kind}", f"{spec[:80]} (only local files are read)")
    p = Path(spec)
    return str(p if p.is_absolute() else root / p)


def _hf(turns, root: Path):
    messages, media = [], []
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RecordError("malformed message", f"message {i} needs a string 'role'")
        content = m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise RecordError("malformed message", f"message {i}: content must be a string or a list of parts")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind in KINDS:
                media.append((kind, _path(part.get(kind, part.get("path")), root, kind)))
                parts.append({"type": kind})
            else:
                raise RecordError("malformed message", f"message {i}: unknown content part {str(part)[:80]}")
        messages.append({"role": m["role"], "content": parts})
    return messages, media


def _listed(value: dict, kind: str) -> list:
    found = []
    for key in (kind, kind + "s"):
        v = value.get(key)
        if v is None:
            continue
        found += v if isinstance(v, list) else [v]
    return found


def _llava(value: dict, turns, root: Path):
    files = {k: [_path(p, root, k) for p in _listed(value, k)] for k in KINDS}
    used = {k: 0 for k in KINDS}
    messages = []
    for i, t in enumerate(turns):
        role = _ROLES.get(t.get("from"))
        if role is None or not isinstance(t.get("value"), str):
            raise RecordError("malformed message", f"turn {i} needs 'from' (human/gpt/system) and a string 'value'")
        parts, at = [], 0
        for m in _PLACEHOLDER.finditer(t["value"]):
            parts.append({"type": "text", "text": t["value"][at:m.start()]})
            parts.append({"type": m.group(1)})
            used[m.group(1)] += 1
            at = m.end()
        parts.append({"type": "text", "text": t["value"][at:]})
        messages.append({"role": role, "content": [p for p in parts if p["type"] != "text" or p["text"]]})
    for kind in KINDS:
        if used[kind] > len(files[kind]):
            raise RecordError(f"more placeholders than {kind}s", f"{used[kind]} <{kind}> for {len(files[kind])}")
        if 0 < used[kind] < len(files[kind]):
            raise RecordError(f"fewer placeholders than {kind}s", f"{used[kind]} <{kind}> for {len(files[kind])}")
    first_user = next((m for m in messages if m["role"] == "user"), None)
    for kind in reversed(KINDS):  # no placeholder at all: in front of the first user turn
        if files[kind] and not used[kind]:
            if first_user is None:
                raise RecordError(f"{kind} without a user turn")
            first_user["content"][:0] = [{"type": kind} for _ in files[kind]]
    media = []
    counters = {k: iter(files[k]) for k in KINDS}
    for m in messages:
        media += [(p["type"], next(counters[p["type"]])) for p in m["content"] if p["type"] in KINDS]
    return messages, media
