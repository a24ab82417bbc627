"""Diagnostics: one format everywhere.

    plans/x.veo:12:5: error[mesh-product]: dp_shard(2) * tp(3) = 6, but the world size is 4
       |
    12 |   mesh { dp_shard = 2  tp = 3 }
       |          ^^^^^^^^^^^^
    help: use dp_shard = 2, tp = 2 (or run with --world 6)
"""
from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass, field

LONG = 100  # a quoted run of plan text longer than this is elided in messages
KEEP = 40  # ... to its first KEEP characters and its length
MESSAGE_MAX = 1000  # a message longer than this (even in words) is cut, with its length
SNIPPET = 120  # source lines wider than this are shown as a window around the caret
_LONG_RUN = re.compile(r"[^\s`'\"]{%d,}" % (LONG + 1))


def elide(text: str, over: int = LONG) -> str:
    """Plan text for a message: as is when short, else its first KEEP characters and its length
    (a 1 MB string or a 5000-digit number is never echoed whole)."""
    text = str(text)
    return text if len(text) <= over else f"{text[:KEEP]}... ({len(text)} characters)"


def shorten(message: str) -> str:
    """Every long unbroken run of a message elided, then the message itself capped."""
    out = _LONG_RUN.sub(lambda m: elide(m.group()), message)
    return out if len(out) <= MESSAGE_MAX else f"{out[:MESSAGE_MAX // 2]}... ({len(out)} characters)"


def _escape(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def invisible(ch: str) -> bool:
    """Characters a terminal would not show as themselves: controls (but tab), format and bidi
    characters, line/paragraph separators, lone surrogates, private use, unassigned."""
    return ch != "\t" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def printable(text: str) -> str:
    """Text safe to print on any terminal and in any encoding: invisible characters (see above)
    are written as escapes (`\\x1b`, `\\u202e`, `\\ud800`)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(_escape(ch) if invisible(ch) else ch for ch in text)


def char_name(ch: str) -> str:
    """`U+00A0 (NO-BREAK SPACE)`: a character named so that an invisible one can be found."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


@dataclass(frozen=True)
class Span:
    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    @property
    def where(self) -> str:
        """`demo.veo:12` — the short form used in generated comments."""
        import os

        return f"{os.path.basename(self.file)}:{self.line}"


@dataclass
class Diagnostic:
    rule: str
    message: str
    span: Span | None
    help: str | None = None
    severity: str = "error"  # error | warning | note
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        # one place where every message is kept readable, whatever plan text it quotes
        self.message = shorten(self.message)
        self.help = shorten(self.help) if self.help else self.help
        self.notes = [shorten(n) for n in self.notes]

    def to_json(self) -> dict:
        d = {"severity": self.severity, "rule": self.rule, "message": self.message}
        if self.span:
            d.update(file=self.span.file, line=self.span.line, col=self.span.col)
        if self.help:
            d["help"] = self.help
        return d


class PlanError(Exception):
    """Raised by passes that cannot go on; carries the diagnostics gathered so far."""

    def __init__(self, diagnostics: list[Diagnostic], source: str | None = None):
        super().__init__("\n".join(d.message for d in diagnostics))
        self.diagnostics = diagnostics
        self.source = source  # the text the diagnostics' lines and columns refer to, when known


def _shown(text: str) -> str:
    return printable(text).expandtabs(4)


def snippet(line: str, col: int, end_col: int | None) -> tuple[str, str]:
    """A source line as shown (invisible characters escaped, tabs expanded, a window around the
    caret when it is wide) and the caret line under it. Columns are 1-based, end_col exclusive."""
    c0 = min(max(col - 1, 0), len(line))
    c1 = len(line.rstrip()) if end_col is None else min(max(end_col - 1, c0), len(line))
    shown = _shown(line)
    start, end = len(_shown(line[:c0])), len(_shown(line[:c1]))
    end = max(end, start + 1)
    if len(shown) > SNIPPET:  # a window: from a little before the caret, SNIPPET wide
        lo = max(0, min(start - KEEP, len(shown) - SNIPPET))
        hi = lo + SNIPPET
        left, right = ("..." if lo else ""), ("..." if hi < len(shown) else "")
        shown = left + shown[lo:hi] + right
        start, end = start - lo + len(left), min(end, hi) - lo + len(left)
        end = max(end, start + 1)
    return shown, " " * start + "^" * (end - start)


def render(diag: Diagnostic, source: str | None) -> str:
    head = f"{diag.span}: " if diag.span else ""
    out = [printable(f"{head}{diag.severity}[{diag.rule}]: {shorten(diag.message)}")]
    if diag.span and source is not None:
        lines = source.split("\n")
        if 1 <= diag.span.line <= len(lines):
            one_line = diag.span.end_line == diag.span.line and diag.span.end_col
            text, caret = snippet(lines[diag.span.line - 1], diag.span.col, diag.span.end_col if one_line else None)
            num = str(diag.span.line)
            pad = " " * len(num)
            out += [f"{pad} |", f"{num} | {text}", f"{pad} | {caret}"]
    for note in diag.notes:
        out.append(printable(f"note: {shorten(note)}"))
    if diag.help:
        out.append(printable(f"help: {shorten(diag.help)}"))
    return "\n".join(out)


def did_you_mean(word: str, choices) -> str | None:
    """The nearest valid name for a typo, or None."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def suggest(word: str, choices, what: str = "") -> str:
    near = did_you_mean(word, choices)
    valid = ", ".join(sorted(choices))
    if near:
        return f"did you mean `{near}`?" + (f" ({what}: {valid})" if what and len(valid) < 160 else "")
    return f"{what or 'valid'}: {valid}" if valid else "nothing is valid here"
