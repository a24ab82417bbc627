"""Parse a .veo plan into a syntax tree (lark grammar + Transformer), or located diagnostics."""
from __future__ import annotations

import json
import re
import unicodedata
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from .diagnostics import Diagnostic, PlanError, Span, char_name, elide
from .syntax import Assign, Body, Comment, Document, Stmt, Value

RULES = {
    "syntax": "the plan parses (strings, numbers, braces, lists; nesting, number and string limits in docs/language.md)",
    "plan-file": "the plan file can be read",
}

UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
         "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


_HUMAN = {
    "NAME": "a name", "STRING": "a string", "NUMBER": "a number", "SIZE": "a size",
    "LBRACE": "`{`", "RBRACE": "`}`", "LSQB": "`[`", "RSQB": "`]`", "EQUAL": "`=`",
    "COMMA": "`,`", "SEMICOLON": "`;`", "_NL": "a new line", "$END": "the end of the file",
}


MAX_PLAN_BYTES = 16 * 2**20  # a plan is a page or two; more is not a plan (or is /dev/zero)
MAX_NESTING = 32  # `{ }` and `[ ]` inside one another; real plans use 3 or 4
INT_MAX = 2**63 - 1  # the largest whole number (and size in bytes) a plan may write


class _TooDeep(Exception):
    def __init__(self, tok: Token):
        super().__init__("too deep")
        self.tok = tok


class _DropNewlinesInBrackets:
    """Lists may span lines: the lexer's newline tokens are dropped inside `[ ]`. Nesting deeper
    than MAX_NESTING is refused here, before the parser or any tree walk can recurse that deep."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = nesting = 0
        for tok in stream:
            if tok.type in ("LSQB", "LBRACE"):
                nesting += 1
                if nesting > MAX_NESTING:
                    raise _TooDeep(tok)
                depth += tok.type == "LSQB"
            elif tok.type in ("RSQB", "RBRACE"):
                nesting = max(0, nesting - 1)
                if tok.type == "RSQB":
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
        bad = next((ch for ch in val if ch == "\x00" or unicodedata.category(ch) == "Cs"), None)
        if bad is not None:
            # a plan string names a file, a field, a module or a prompt: NUL and lone surrogates
            # (`\ud800` without its pair) can be none of these, and cannot be written as UTF-8
            what = "a NUL character" if bad == "\x00" else f"a lone surrogate \\u{ord(bad):04x} (half of a pair)"
            raise _BadLiteral(f"a string cannot hold {what}", tok,
                              "characters beyond U+FFFF are written as a pair, e.g. \"\\ud83d\\ude00\", or as themselves"
                              if bad != "\x00" else "remove the \\u0000")
        return Value("string", val, self._tspan(tok), str(tok))

    def number(self, meta, children):
        tok = children[0]
        text = str(tok).replace("_", "")
        if re.fullmatch(r"-?[0-9]+", text):
            digits = text.lstrip("-").lstrip("0")
            if len(digits) > len(str(INT_MAX)) or int(digits or "0") > INT_MAX:
                raise _BadLiteral(f"the number {elide(str(tok))} is too large", tok,
                                  f"whole numbers in a plan are at most {INT_MAX} (2**63 - 1)")
            return Value("int", int(text), self._tspan(tok), str(tok))
        try:
            return Value("float", float(text), self._tspan(tok), str(tok))
        except ValueError:
            raise _BadLiteral(f"`{elide(str(tok))}` is not a number", tok) from None

    def size(self, meta, children):
        tok = children[0]
        m = re.fullmatch(r"([0-9_.]+)\s*([A-Za-z]+)", str(tok))
        n = size_bytes(m.group(1), m.group(2))
        if n is None:
            raise _BadLiteral(f"the size {elide(str(tok))} is too large", tok, f"sizes are at most {INT_MAX} bytes")
        return Value("size", n, self._tspan(tok), str(tok))

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


def size_bytes(number: str, unit: str = "") -> int | None:
    """`1.5` `GiB` -> bytes, exactly (no float rounding, no overflow); None above INT_MAX.
    ValueError when it is not a size."""
    mult = UNITS[unit] if unit else 1
    n = int(Fraction(number.replace("_", "")) * mult)
    return n if n <= INT_MAX else None


def normalize(source: str) -> str:
    """The text lines and columns refer to: a leading byte-order mark dropped, and CR LF and lone
    CR (old Mac files) read as line ends."""
    if source.startswith("\ufeff"):
        source = source[1:]
    if "\r" in source:
        source = source.replace("\r\n", "\n").replace("\r", "\n")
    return source


def parse(source: str, file: str = "<plan>") -> Document:
    """Parse plan text. Raises PlanError with one `syntax` diagnostic on bad input (and the
    normalized text its position refers to)."""
    comments: list[Comment] = []

    def keep_comment(tok: Token):
        comments.append(Comment(tok.line, tok.column, str(tok)))

    source = normalize(source)

    def fail(diag: Diagnostic):
        return PlanError([diag], source)

    if "\x00" in source:
        at = source.index("\x00")
        line, col = source.count("\n", 0, at) + 1, at - (source.rfind("\n", 0, at) + 1) + 1
        raise fail(Diagnostic("syntax", "the plan contains a NUL byte", Span(file, line, col, line, col + 1),
                              "a plan is a text file"))
    text = source if source.endswith("\n") else source + "\n"
    try:
        tree = _parse_with_comments(text, keep_comment)
        entries = _ToTree(file).transform(tree)
    except _TooDeep as e:
        tok = e.tok
        raise fail(Diagnostic("syntax", f"`{tok}` nests deeper than {MAX_NESTING} levels of `{{ }}` and `[ ]`",
                              Span(file, tok.line, tok.column, tok.line, tok.column + 1),
                              f"planc reads at most {MAX_NESTING} levels; is a `}}` or `]` missing?")) from None
    except UnexpectedInput as e:
        raise fail(_syntax_diagnostic(e, text, file)) from None
    except VisitError as e:
        if isinstance(e.orig_exc, _BadLiteral):
            tok = e.orig_exc.tok
            raise fail(Diagnostic("syntax", str(e.orig_exc),
                                  Span(file, tok.line, tok.column, tok.end_line, tok.end_column),
                                  e.orig_exc.help)) from None
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
        if ch in "'\u2018\u2019":
            hint = "strings use double quotes: \"...\""
        elif ch in "\u201c\u201d\u201e\u00ab\u00bb":
            hint = "strings use plain double quotes \"...\", not typographic ones"
        elif ch == '"':
            hint = "this string is not closed on its line"
        elif ch in "()":
            hint = "options go in braces: `adamw { lr = 3e-4 }`"
        elif ch == ":":
            hint = "keys take `=`: `steps = 10`"
        elif ch and (not ch.isprintable() or ch.isspace()):
            hint = "an invisible or unusual character (pasted from a web page?): delete it or type a plain space"
        elif ch and not ch.isascii():
            hint = "names are ASCII letters, digits, `_` and `-`; other text goes in double quotes"
        if not ch:
            shown = "the end"
        elif ch.isprintable() and not ch.isspace():
            shown = f"`{ch}`" + (f" {char_name(ch)}" if not ch.isascii() else "")
        else:
            shown = char_name(ch)
        return Diagnostic("syntax", f"unexpected character {shown}", Span(file, line, col, line, col + 1), hint)
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
        shown = "a new line" if tok.type == "_NL" else f"`{elide(str(tok))}`"
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


def read_plan(path: str | Path) -> str:
    """The plan file's text as written (PlanError when it cannot be read or is not UTF-8)."""
    from .paths import PathError, read_bytes

    try:
        data = read_bytes(path, MAX_PLAN_BYTES)
    except PathError as e:
        raise PlanError([Diagnostic("plan-file", f"cannot read the plan {path}: {e}", None)]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        shown = normalize(data.decode("utf-8", errors="replace"))
        before = normalize(data[: e.start].decode("utf-8", errors="replace"))
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        raise PlanError([Diagnostic("syntax", f"the plan is not UTF-8 text (byte 0x{data[e.start]:02x})",
                                    Span(str(path), line, col, line, col + 1),
                                    "save the file as UTF-8")], shown) from None


def parse_file(path: str | Path) -> Document:
    return parse(read_plan(path), str(path))
