"""Parse a .veo plan into a syntax tree (lark grammar + Transformer), or located diagnostics."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from .diagnostics import Diagnostic, PlanError, Span
from .syntax import Assign, Body, Comment, Document, Stmt, Value

RULES = {
    "syntax": "the plan parses (strings, numbers, braces, lists)",
    "plan-file": "the plan file can be read",
}

UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
         "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE = re.compile(r"([0-9][0-9_]*(?:\.[0-9]+)?)[ \t]*(" + "|".join(UNITS) + r")?")


def size_bytes(text: str) -> int:
    """Bytes of a size as plans write it (`80GiB`, `1.5 TB`, `4096`); ValueError otherwise."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a size such as 80GiB")
    num = float(m.group(1).replace("_", ""))
    return int(num * UNITS[m.group(2)]) if m.group(2) else int(num)

_HUMAN = {
    "NAME": "a name", "STRING": "a string", "NUMBER": "a number", "SIZE": "a size",
    "LBRACE": "`{`", "RBRACE": "`}`", "LSQB": "`[`", "RSQB": "`]`", "EQUAL": "`=`",
    "COMMA": "`,`", "SEMICOLON": "`;`", "_NL": "a new line", "$END": "the end of the file",
}


class _DropNewlinesInBrackets:
    """Lists may span lines: the lexer's newline tokens are dropped inside `[ ]`."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type == "LSQB":
                depth += 1
            elif tok.type == "RSQB":
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


@lru_cache(maxsize=None)
def _parser() -> Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False,
                postlex=_DropNewlinesInBrackets())


class _BadLiteral(Exception):
    def __init__(self, message: str, tok: Token, help: str | None = None):
        super().__init__(message)
        self.tok, self.help = tok, help


@v_args(meta=True)
class _ToTree(Transformer):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _span(self, meta) -> Span:
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tspan(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    # atoms ---------------------------------------------------------------------------------
    def string(self, meta, children):
        tok = children[0]
        try:
            val = json.loads(tok)
        except json.JSONDecodeError as e:
            raise _BadLiteral(f"invalid escape in string: {e.msg}", tok,
                              'strings use JSON escapes: \\" \\\\ \\n \\t \\uXXXX') from None
        return Value("string", val, self._tspan(tok), str(tok))

    def number(self, meta, children):
        tok = children[0]
        text = str(tok).replace("_", "")
        try:
            if re.fullmatch(r"-?[0-9]+", text):
                return Value("int", int(text), self._tspan(tok), str(tok))
            return Value("float", float(text), self._tspan(tok), str(tok))
        except ValueError:
            raise _BadLiteral(f"`{tok}` is not a number", tok) from None

    def size(self, meta, children):
        tok = children[0]
        return Value("size", size_bytes(str(tok)), self._tspan(tok), str(tok))

    def word_value(self, meta, children):
        tok = children[0]
        body = children[1] if len(children) > 1 else None
        if str(tok) in ("true", "false") and body is None:
            return Value("bool", str(tok) == "true", self._tspan(tok), str(tok))
        return Value("word", str(tok), self._span(meta), str(tok), body)

    def word(self, meta, children):
        tok = children[0]
        if str(tok) in ("true", "false"):
            return Value("bool", str(tok) == "true", self._tspan(tok), str(tok))
        return Value("word", str(tok), self._tspan(tok), str(tok))

    def list(self, meta, children):
        return Value("list", list(children), self._span(meta), "")

    # structure -----------------------------------------------------------------------------
    def assign(self, meta, children):
        key, value = children
        return Assign(str(key), self._tspan(key), value, self._span(meta))

    option = assign

    def body(self, meta, children):
        return Body(list(children), self._span(meta))

    def stmt(self, meta, children):
        name, rest = children[0], children[1:]
        body = rest.pop() if rest and isinstance(rest[-1], Body) else None
        args = [c for c in rest if isinstance(c, Value)]
        options = [c for c in rest if isinstance(c, Assign)]
        return Stmt(str(name), self._tspan(name), args, options, body, self._span(meta))

    def start(self, meta, children):
        return list(children)


def parse(source: str, file: str = "<plan>") -> Document:
    """Parse plan text. Raises PlanError with one `syntax` diagnostic on bad input."""
    comments: list[Comment] = []

    def keep_comment(tok: Token):
        comments.append(Comment(tok.line, tok.column, str(tok)))

    if "\x00" in source:
        line = source[: source.index("\x00")].count("\n") + 1
        raise PlanError([Diagnostic("syntax", "the plan contains a NUL byte", Span(file, line, 1),
                                    "a plan is a text file")])
    text = source if source.endswith("\n") else source + "\n"
    try:
        tree = _parse_with_comments(text, keep_comment)
        entries = _ToTree(file).transform(tree)
    except UnexpectedInput as e:
        raise PlanError([_syntax_diagnostic(e, text, file)]) from None
    except VisitError as e:
        if isinstance(e.orig_exc, _BadLiteral):
            tok = e.orig_exc.tok
            raise PlanError([Diagnostic("syntax", str(e.orig_exc),
                                        Span(file, tok.line, tok.column, tok.end_line, tok.end_column),
                                        e.orig_exc.help)]) from None
        raise
    return Document(file, source, entries, comments)


def _parse_with_comments(text: str, on_comment):
    parser = _parser()
    # lark calls lexer callbacks set at construction; collect comments by re-lexing instead,
    # which keeps the cached parser free of per-document state.
    tree = parser.parse(text)
    for tok in parser.lex(text, dont_ignore=True):
        if tok.type == "COMMENT":
            on_comment(tok)
    return tree


def _syntax_diagnostic(e: UnexpectedInput, text: str, file: str) -> Diagnostic:
    line, col = getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        hint = None
        if ch == "'":
            hint = "strings use double quotes: \"...\""
        elif ch == '"':
            hint = "this string is not closed on its line"
        elif ch in "()":
            hint = "options go in braces: `adamw { lr = 3e-4 }`"
        return Diagnostic("syntax", f"unexpected character `{ch}`", Span(file, line, col, line, col + 1), hint)
    if isinstance(e, (UnexpectedToken, UnexpectedEOF)):
        tok = getattr(e, "token", None)
        expected = sorted(getattr(e, "expected", None) or getattr(e, "accepts", None) or [])
        human = sorted({_HUMAN.get(t, f"`{t}`") for t in expected if not t.startswith("__")})
        if tok is None or tok.type == "$END":
            unclosed = _unclosed_brace(text)
            if unclosed:
                l, c = unclosed
                return Diagnostic("syntax", "unexpected end of file: a `{` is not closed",
                                  Span(file, l, c, l, c + 1), "add the missing `}`")
            return Diagnostic("syntax", "unexpected end of file", Span(file, line, col))
        shown = "a new line" if tok.type == "_NL" else f"`{tok}`"
        span = Span(file, tok.line, tok.column, tok.end_line, tok.end_column)
        if tok.type == "_NL":
            span = Span(file, tok.line, tok.column, tok.line, tok.column + 1)
        if {"STRING", "NUMBER"} <= set(expected):
            human = ["a value"]
        hint = f"expected {', '.join(human)}" if human else None
        if tok.type == "RBRACE" and _brace_depth(text, tok.line, tok.column) <= 0:
            hint = "this `}` closes a block that is not open"
        return Diagnostic("syntax", f"unexpected {shown}", span, hint)
    return Diagnostic("syntax", (str(e).splitlines() or ["cannot parse"])[0], Span(file, line, col))


def _brace_depth(text: str, line: int, col: int) -> int:
    """How many `{` are open just before line:col."""
    lines = text.split("\n")
    before = lines[: line - 1] + [lines[line - 1][: col - 1]]
    return len(_open_braces("\n".join(before)))


def _unclosed_brace(text: str):
    """Position of the last `{` that is never closed."""
    stack = _open_braces(text)
    return stack[-1] if stack else None


def _open_braces(text: str) -> list[tuple[int, int]]:
    """Positions of the `{` still open at the end of text (strings and comments skipped)."""
    stack = []
    for lineno, line in enumerate(text.split("\n"), 1):
        i, in_str = 0, False
        while i < len(line):
            ch = line[i]
            if in_str:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "#":
                break
            elif ch == "{":
                stack.append((lineno, i + 1))
            elif ch == "}" and stack:
                stack.pop()
            i += 1
    return stack


def parse_file(path: str | Path) -> Document:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PlanError([Diagnostic("plan-file", f"cannot read the plan: {e.strerror}", None)]) from None
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PlanError([Diagnostic("syntax", "the plan is not UTF-8 text", Span(str(path), line, 1))]) from None
    return parse(source, str(path))


def source_for_diagnostics(path: str | Path) -> str | None:
    """The plan's text, however broken, to quote under the diagnostics of a plan that did not parse."""
    try:
        return open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return None
