"""Diagnostics: one format everywhere.

    plans/x.veo:12:5: error[mesh-product]: dp_shard(2) * tp(3) = 6, but the world size is 4
       |
    12 |   mesh { dp_shard = 2  tp = 3 }
       |          ^^^^^^^^^^^^
    help: use dp_shard = 2, tp = 2 (or run with --world 6)
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


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

    def to_json(self) -> dict:
        d = {"severity": self.severity, "rule": self.rule, "message": self.message}
        if self.span:
            d.update(file=self.span.file, line=self.span.line, col=self.span.col)
        if self.help:
            d["help"] = self.help
        return d


class PlanError(Exception):
    """Raised by passes that cannot go on; carries the diagnostics gathered so far."""

    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__("\n".join(d.message for d in diagnostics))
        self.diagnostics = diagnostics


def render(diag: Diagnostic, source: str | None) -> str:
    head = f"{diag.span}: " if diag.span else ""
    out = [f"{head}{diag.severity}[{diag.rule}]: {diag.message}"]
    if diag.span and source is not None:
        lines = source.split("\n")
        if 1 <= diag.span.line <= len(lines):
            text = lines[diag.span.line - 1].expandtabs(4)
            num = str(diag.span.line)
            pad = " " * len(num)
            start = diag.span.col - 1
            if diag.span.end_line == diag.span.line and diag.span.end_col:
                width = max(1, diag.span.end_col - diag.span.col)
            else:
                width = max(1, len(text.rstrip()) - start)
            out += [f"{pad} |", f"{num} | {text}", f"{pad} | {' ' * start}{'^' * width}"]
    for note in diag.notes:
        out.append(f"note: {note}")
    if diag.help:
        out.append(f"help: {diag.help}")
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
