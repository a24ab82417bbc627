"""The plan's syntax tree. Every node keeps its `file:line:col` span; nothing here is evaluated."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from .diagnostics import Span


@dataclass
class Value:
    kind: str  # string | int | float | bool | word | list | size
    value: Any  # the Python value; for a list, a list of Value
    span: Span
    text: str  # as written, for the formatter
    body: "Body | None" = None  # options of a word value: `adamw { lr = 3e-4 }`

    def plain(self):
        """The value as plain Python data (lists unwrapped)."""
        if self.kind == "list":
            return [v.plain() for v in self.value]
        return self.value


@dataclass
class Assign:
    key: str
    key_span: Span
    value: Value
    span: Span


@dataclass
class Stmt:
    name: str
    name_span: Span
    args: list[Value]
    options: list[Assign]
    body: "Body | None"
    span: Span


Entry = Union[Assign, Stmt]


@dataclass
class Body:
    entries: list[Entry]
    span: Span


@dataclass
class Comment:
    line: int
    col: int
    text: str


@dataclass
class Document:
    file: str
    source: str
    entries: list[Entry]
    comments: list[Comment] = field(default_factory=list)
