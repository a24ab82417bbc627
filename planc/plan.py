"""A resolved plan: flat settings keyed `block.key` (the names the generated script and its overrides
use), the `parallelize` rules and the data sources, each keeping the span it came from.
planc/resolve.py makes it from a parsed document; the checks, the lowering and the emitter read it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .diagnostics import Span
from .syntax import Document


@dataclass
class Setting:
    value: Any
    span: Span | None = None  # the value as written; None when it is the default
    line_span: Span | None = None  # the whole assignment (or the block, for a default)

    @property
    def written(self) -> bool:
        return self.span is not None


@dataclass
class Glob:
    pattern: str
    span: Span


@dataclass
class Rule:
    """One statement of the `parallelize` block."""

    kind: str  # fsdp | replicate | checkpoint | compile | tp | ep | sp
    style: str | None
    globs: list[Glob]
    options: dict[str, Setting]
    span: Span


@dataclass
class Source:
    name: str
    span: Span
    settings: dict[str, Setting]

    def __getitem__(self, key):
        return self.settings[key].value


@dataclass
class Plan:
    doc: Document
    name: str = ""
    name_span: Span | None = None
    settings: dict[str, Setting] = field(default_factory=dict)
    blocks: dict[str, Span] = field(default_factory=dict)  # block name -> span of its name
    block_spans: dict[str, Span] = field(default_factory=dict)  # block name -> its whole extent
    rules: list[Rule] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    val_sources: list[Source] = field(default_factory=list)  # the `validation` block's sources

    def __getitem__(self, key: str):
        return self.settings[key].value

    def span(self, key: str) -> Span | None:
        """Where a setting is written, else its block, else the plan's name."""
        s = self.settings.get(key)
        if s is not None and s.line_span is not None:
            return s.line_span
        return self.blocks.get(key.split(".")[0], self.name_span)

    def value_span(self, key: str) -> Span | None:
        s = self.settings.get(key)
        return s.span if s is not None and s.span is not None else self.span(key)

    @property
    def file(self) -> str:
        return self.doc.file
