"""Writing plan text: values as .veo literals, blocks of entries, comments; formatted by planc.fmt."""
from __future__ import annotations

import json
import re

from planc.fmt import format_source

__all__ = ["Word", "literal", "Block", "render"]


class Word(str):
    """A bare word in the plan (an enum value such as `bf16`, `cosine`, `jsonl`)."""


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def literal(value) -> str:
    if isinstance(value, Word):
        if not _IDENT.match(value):
            raise ValueError(f"not a plan word: {value!r}")
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # the plan's strings take JSON escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise TypeError(f"no plan literal for {value!r}")


class Block:
    """A plan block: `key = value` entries, statements and comments, in order."""

    def __init__(self, name: str):
        self.name, self.lines = name, []

    def set(self, key: str, value, options: dict | None = None, comment: str | None = None) -> None:
        text = f"{key} = {literal(value)}"
        if options:
            text += " { " + "  ".join(f"{k} = {literal(v)}" for k, v in options.items()) + " }"
        self.lines.append(text + (f"  # {comment}" if comment else ""))

    def stmt(self, word: str, *parts: str, body: dict | None = None, comment: str | None = None) -> None:
        """A statement: `word`, then `parts` as plan text (quote strings with `literal`)."""
        text = " ".join([word, *parts])
        if body:
            text += " { " + "  ".join(f"{k} = {literal(v)}" for k, v in body.items()) + " }"
        self.lines.append(text + (f"  # {comment}" if comment else ""))

    def comment(self, text: str) -> None:
        self.lines.append(f"# {text}")


def render(name: str, header: list[str], blocks: list[Block]) -> str:
    """The whole plan, formatted canonically (planc fmt)."""
    out = [f"# {line}" if line else "#" for line in header]
    out.append(f"plan {literal(name)}")
    for b in blocks:
        if b.lines:
            out += ["", b.name + " {", *("  " + line for line in b.lines), "}"]
    return format_source("\n".join(out) + "\n")
