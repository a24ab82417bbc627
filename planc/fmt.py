"""`planc fmt`: rewrite a plan in canonical layout, keeping every comment; idempotent.

Canonical: two-space indents, one entry per line, `=` aligned across a run of assignments, the first
argument aligned across a run of statements, at most one blank line, strings re-quoted, lists on
one line. A body written on one line stays on one line (when it fits and holds no comment).
"""
from __future__ import annotations

import json

from .diagnostics import PlanError, invisible, printable, render
from .parse import parse, read_plan
from .syntax import Assign, Body, Comment, Document, Stmt, Value

WIDTH = 100
INDENT = "  "


def string_text(s: str) -> str:
    """A string literal: readable characters as themselves, invisible ones (controls, bidi marks,
    zero-width spaces) as JSON escapes, so that the file shows what the string holds."""
    text = json.dumps(s, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(json.dumps(ch)[1:-1] if invisible(ch) else ch for ch in text)


def value_text(v: Value) -> str:
    if v.kind == "string":
        return string_text(v.value)
    if v.kind == "list":
        return "[" + ", ".join(value_text(x) for x in v.value) + "]"
    if v.kind == "bool":
        return "true" if v.value else "false"
    text = v.text if v.kind != "word" else v.value
    if v.body is not None:
        return f"{text} {inline_body(v.body)}"
    return text


def on_one_line(entries, texts) -> str:
    """Entries that share a line: two spaces apart, but `; ` after a statement, whose arguments
    would otherwise swallow the next entry (`fsdp "a"; checkpoint "b"`)."""
    out = texts[0]
    for e, text in zip(entries, texts[1:]):
        out += ("; " if isinstance(e, Stmt) else "  ") + text
    return out


def inline_body(body: Body) -> str:
    return "{ " + on_one_line(body.entries, [entry_head(e) for e in body.entries]) + " }" if body.entries else "{ }"


def stmt_head(e: Stmt) -> tuple[str, list]:
    """A statement's head (its name and leading words, e.g. `tp colwise`) and its other arguments."""
    lead, rest = [e.name], list(e.args)
    while rest and rest[0].kind == "word":
        lead.append(value_text(rest.pop(0)))
    return " ".join(lead), rest


def entry_head(e, key_width: int = 0, name_width: int = 0) -> str:
    """An entry on one line (bodies inline). Statement arguments are two spaces apart."""
    if isinstance(e, Assign):
        return f"{e.key.ljust(key_width)} = {value_text(e.value)}"
    head, rest = stmt_head(e)
    parts = [value_text(a) for a in rest] + [f"{o.key} = {value_text(o.value)}" for o in e.options]
    text = f"{head.ljust(name_width)} {'  '.join(parts)}" if parts else head
    if e.body is not None:
        text += " " + inline_body(e.body)
    return text


class _Formatter:
    """Lays a body out as lines first (groups of entries, comments, blanks), then aligns runs of
    one-entry lines, then writes. Layout depends only on what fmt itself preserves (which entries
    share a line, blank lines, one-line vs multi-line bodies), so a second run changes nothing."""

    def __init__(self, doc: Document):
        self.doc = doc
        self.comments = sorted(doc.comments, key=lambda c: (c.line, c.col))
        self.used: set[int] = set()
        self.lines = doc.source.split("\n")
        self.out: list[str] = []
        self.openers: set[int] = set()  # indices in `out` of the lines that open a block (`head {`)

    def trailing(self, line: int, after_col: int) -> str:
        """The comment that ends `line` right after column `after_col` (only blanks between)."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        for i, c in enumerate(self.comments):
            if i not in self.used and c.line == line and c.col >= after_col \
                    and not text[max(after_col - 1, 0): c.col - 1].strip():
                self.used.add(i)
                return "  " + c.text.rstrip()
        return ""

    def leading(self, after_line: int, before_line: int) -> list:
        """Layout items for the unused comments on lines after_line <= line < before_line (a comment on
        the previous entry's last line that it did not take sits inside the next entry)."""
        items = []
        for i, c in enumerate(self.comments):
            if i in self.used or not after_line <= c.line < before_line:
                continue
            self.used.add(i)
            if self._blank_before(c.line):
                items.append(("blank",))
            items.append(("comment", c.text.rstrip()))
        return items

    def _blank_before(self, line: int) -> bool:
        return line >= 2 and not self.lines[line - 2].strip()

    def layout(self, entries, after_line: int) -> list:
        items: list = []
        prev = None
        for e in entries:
            multiline = _multiline(e)
            # comments before the entry, and (for an entry written on one line) inside it
            upto = e.span.line if multiline else e.span.end_line
            lead = [c.line for i, c in enumerate(self.comments)
                    if i not in self.used and after_line <= c.line < upto
                    and not (c.line == e.span.end_line and not multiline)]
            if (prev is not None and not lead and not multiline and e.span.line == prev.span.end_line
                    and items and items[-1][0] == "group" and not items[-1][2]):
                items[-1][1].append(e)  # written on the previous entry's line: stays there
                items[-1][2] = self.trailing(e.span.end_line, e.span.end_col or 0)
                prev, after_line = e, e.span.end_line
                continue
            first = min(lead + [e.span.line])
            if prev is not None and self._blank_before(first):
                items.append(("blank",))
            items += self.leading(after_line, upto if lead else e.span.line)
            if multiline:
                items.append(("block", e))
            else:
                items.append(["group", [e], self.trailing(e.span.end_line, e.span.end_col or 0)])
            prev, after_line = e, e.span.end_line
        return items

    def write(self, entries, depth: int, after_line: int = 0) -> None:
        items = self.layout(entries, after_line)
        widths = _align(items)
        pad = INDENT * depth
        code = {}
        for k, it in enumerate(items):
            if it[0] == "group":
                key_w, name_w = widths.get(k, (0, 0))
                heads = [entry_head(e, key_w, name_w) if len(it[1]) == 1 else entry_head(e) for e in it[1]]
                code[k] = pad + on_one_line(it[1], heads)
        col = _comment_columns(items, code)
        for k, it in enumerate(items):
            if it[0] == "blank":
                if self.out and self.out[-1] != "" and len(self.out) - 1 not in self.openers:
                    self.out.append("")
            elif it[0] == "comment":
                self.out.append(pad + it[1])
            elif it[0] == "group":
                comment = it[2].strip()
                self.out.append(code[k].ljust(col[k]) + comment if comment else code[k])
            else:
                self.block(it[1], depth, widths.get(k, (0, 0)))

    def block(self, e, depth: int, widths) -> None:
        pad = INDENT * depth
        body = _body_of(e)
        head = entry_head(_without_body(e), *widths)
        self.openers.add(len(self.out))
        self.out.append(pad + head + " {" + self.trailing(body.span.line, body.span.col + 1))
        self.write(body.entries, depth + 1, body.span.line)
        last = body.entries[-1].span.end_line if body.entries else body.span.line
        for it in self.leading(last, body.span.end_line):
            self.out.append(INDENT * (depth + 1) + it[1] if it[0] == "comment" else "")
        self.out.append(pad + "}" + self.trailing(body.span.end_line, body.span.end_col or 0))

    def run(self) -> str:
        self.write(self.doc.entries, 0)
        for it in self.leading(0, 10**9):
            if it[0] == "blank":
                if self.out and self.out[-1] != "":
                    self.out.append("")
            else:
                self.out.append(it[1])
        while self.out and self.out[-1] == "":
            self.out.pop()
        return "\n".join(self.out) + "\n"


def _body_of(e):
    if isinstance(e, Stmt):
        return e.body
    return e.value.body if e.value.kind == "word" else None


def _multiline(e) -> bool:
    """Multi-line when written so, or when one line would be too wide."""
    body = _body_of(e)
    if body is None:
        return False
    return body.span.line != body.span.end_line or len(INDENT + entry_head(e)) > WIDTH


def _without_body(e):
    if isinstance(e, Stmt):
        return Stmt(e.name, e.name_span, e.args, e.options, None, e.span)
    v = e.value
    return Assign(e.key, e.key_span, Value(v.kind, v.value, v.span, v.text, None), e.span)


def _comment_columns(items, code: dict) -> dict[int, int]:
    """Trailing comments of adjacent one-line entries start in one column (two spaces after the
    longest line of the run); a line without a comment, a blank or a block ends the run."""
    cols: dict[int, int] = {}
    run: list[int] = []

    def flush():
        width = max((len(code[k]) for k in run), default=0) + 2
        cols.update({k: width for k in run})
        run.clear()

    for k, it in enumerate(items):
        if it[0] == "group" and it[2].strip():
            run.append(k)
        else:
            flush()
    flush()
    return cols


def _align(items) -> dict[int, tuple[int, int]]:
    """Alignment widths for runs of adjacent one-entry lines of the same kind: `=` across
    assignments, the first argument across statements. Blanks, comments and blocks end a run."""
    widths: dict[int, tuple[int, int]] = {}
    run: list[int] = []

    def kind(it):
        return type(it[1][0]) if it[0] == "group" and len(it[1]) == 1 else None

    def flush():
        if len(run) > 1:
            ents = [items[k][1][0] for k in run]
            if isinstance(ents[0], Assign):
                w = max(len(e.key) for e in ents)
                widths.update({k: (w, 0) for k in run})
            else:
                with_args = [e for e in ents if stmt_head(e)[1] or e.options]
                w = max((len(stmt_head(e)[0]) for e in with_args), default=0) if len(with_args) > 1 else 0
                widths.update({k: (0, w) for k in run})
        run.clear()

    for k, it in enumerate(items):
        kd = kind(it)
        if kd is None or (run and kind(items[run[-1]]) is not kd):
            flush()
        if kd is not None:
            run.append(k)
    flush()
    return widths


def format_source(source: str, file: str = "<plan>") -> str:
    return _Formatter(parse(source, file)).run()


def format_file(path: str) -> tuple[str, str]:
    """(the plan's text as written, the same plan in canonical layout); PlanError when it does not
    parse. A byte-order mark or CR line ends count as a difference: they are rewritten too."""
    written = read_plan(path)
    return written, _Formatter(parse(written, path)).run()
