"""Emit the training script from the IR with jinja2: deterministic, byte for byte.

Every value from a plan reaches the script through `py` (repr of plain data), so a string such as
`x"); import os #` stays a string; the script is then parsed with `ast` before it is written.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import jinja2

from .ir import Call, Code, Items, ScriptIR, Stmt
from .lower import docstring_path, lower

_PLAIN = (str, int, float, bool, type(None))


def py(value) -> str:
    """A Python literal for plain data (str, numbers, bools, None, lists, tuples, dicts)."""
    if isinstance(value, str):
        r = repr(value)
        # prefer double quotes when no quote character needs escaping either way
        return f'"{r[1:-1]}"' if r[0] == "'" and '"' not in value and "'" not in value else r
    if isinstance(value, _PLAIN):
        return repr(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(py(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py(k)}: {py(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not plain data: {type(value).__name__}")


_LITERAL = py  # what renders plain values; the structure probe swaps it (render_script)


def _lit(value) -> str:
    return _LITERAL(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["py"] = py
    return env


def settings_lines(ir: ScriptIR) -> list[str]:
    """`"key": value,` lines with their plan-line comments aligned in one column."""
    heads = [f"{_lit(s.key)}: {_lit(s.value)}," for s in ir.settings]
    width = min(max(len(h) for h in heads), 60) + 2
    return [f"{h.ljust(width)}# {s.where}" for h, s in zip(heads, ir.settings)]


def source_lines(ir: ScriptIR, width: int = 100, sources=None, block: str = "data") -> list[str]:
    """`Source(...)` calls, wrapped one field per line when a call would be too wide (`sources`:
    another block's, e.g. validation's)."""
    out = []
    for s in ir.sources if sources is None else sources:
        args = [f"name={_lit(s.name)}"] + [f"{f}=cfg.{block}.{s.name}.{f}" for f in s.fields]
        one = f"Source({', '.join(args)}),"
        out += [one] if len(one) + 4 <= width else [f"Source({args[0]},"] + [
            f"       {a}," for a in args[1:-1]] + [f"       {args[-1]}),"]
    return out


def render_expr(expr) -> str:
    """Python source of an IR expression (planc/ir.py); plain values through `py`."""
    if isinstance(expr, Code):
        return expr.src
    if isinstance(expr, Call):
        args = [render_expr(a) for a in expr.args] + [f"{k}={render_expr(v)}" for k, v in expr.kwargs]
        return f"{_spelled(expr)}({', '.join(args)})"
    if isinstance(expr, Items):
        lines = "".join(f"    {render_expr(item)},  # {comment}\n" for item, comment in expr.items)
        return (f"{expr.prefix.src} + " if expr.prefix else "") + f"[\n{lines}]"
    if isinstance(expr, (list, tuple)) and any(isinstance(x, (Code, Call, Items, list, tuple)) for x in expr):
        inner = ", ".join(render_expr(x) for x in expr)
        return f"[{inner}]" if isinstance(expr, list) else f"({inner}{',' if len(expr) == 1 else ''})"
    return _lit(expr)


def _spelled(call: Call) -> str:
    return f"{call.via}.{call.name}" if call.via else call.name


def stmt_lines(st: Stmt) -> list[str]:
    """A set-up statement as lines: its note above, then `[a, b =] f(args)  # where`, wrapped
    greedily at `st.wrap` columns (continuations aligned after the parenthesis, a little wider)."""
    head = (", ".join(st.assign) + " = " if st.assign else "") + _spelled(st.call) + "("
    args = [render_expr(a) for a in st.call.args] + [f"{k}={render_expr(v)}" for k, v in st.call.kwargs]
    comment = f"  # {st.where}" if st.where else ""
    out = [f"# {st.note}"] if st.note else []
    one = head + ", ".join(args) + ")"
    if st.wrap is None or len(one) <= st.wrap:
        first, *rest = one.split("\n")
        return out + [first + comment] + rest
    lines, line, limit = [], head, st.wrap
    for i, arg in enumerate(args):
        piece = arg + (")" if i == len(args) - 1 else ",")
        if line.strip() and line != head and len(line) + 1 + len(piece) > limit:
            lines.append(line)
            line, limit = " " * len(head), st.wrap + 20
        line += ("" if line.endswith("(") or not line.strip() else " ") + piece
    lines.append(line)
    lines[0] += comment
    # a multi-line argument (Items) continues at the parenthesis, like the other continuations
    return out + [part if i == 0 else " " * len(head) + part for line in lines
                  for i, part in enumerate(line.split("\n"))]


def loader_lines(ir: ScriptIR) -> list[str]:
    """build_loader keywords for the data features this plan uses, wrapped at ~76 columns."""
    pairs = [f"{kw}={expr}," for kw, expr in ir.loader_kwargs]
    lines, line = [], ""
    for p in pairs:
        if line and len(line) + len(p) + 1 > 76:
            lines.append(line)
            line = ""
        line = f"{line} {p}".strip()
    return lines + ([line] if line else [])


def _render(ir: ScriptIR, literal) -> str:
    env = _environment()
    env.filters["py"] = literal
    env.filters["code"] = lambda st: "\n".join(
        line for x in (st if isinstance(st, list) else [st]) for line in stmt_lines(x))
    global _LITERAL  # noqa: PLW0603 (one render at a time)
    _LITERAL, saved = literal, _LITERAL
    try:
        return env.get_template("train.py.j2").render(
            ir=ir, settings=settings_lines(ir), source_lines=source_lines(ir),
            shown_path=docstring_path(ir.out_path), keys={s.key for s in ir.settings},
            loader_extra=loader_lines(ir),
            val_source_lines=source_lines(ir, sources=ir.loop.val_sources, block="validation"))
    finally:
        _LITERAL = saved


def _neutral(value):
    """`value` with every string replaced by the same placeholder (the structure probe)."""
    if isinstance(value, str):
        return "x"
    if isinstance(value, (list, tuple)):
        return type(value)(_neutral(v) for v in value)
    if isinstance(value, dict):
        return {f"k{i}": _neutral(v) for i, v in enumerate(value.values())}
    return value


def _skeleton(text: str) -> str:
    """The script's code with every constant blanked: what the template wrote, whatever the values."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.value = None
    return ast.dump(tree)


def render_script(ir: ScriptIR) -> str:
    """The script's text. It is parsed before it is returned, and its code (every constant blanked)
    must equal the code rendered with every plan string replaced by a placeholder: strings from a
    plan or the command line can only ever be constants, never code."""
    text = _render(ir, py)
    probe = _render(ir, lambda v: py(_neutral(v)))
    if _skeleton(text) != _skeleton(probe):
        raise AssertionError("planc bug: a value of the plan changed the code of the generated script")
    return text


def default_output(name: str) -> str:
    return os.path.join("generated", f"{name}.py")


def write_script(checked, output: str | None = None) -> tuple[str, bool]:
    """Lower and render a checked plan and write its script (default generated/<name>.py), only
    when the text changed: (the path, whether it was written)."""
    out = output or default_output(checked.plan.name)
    ir = lower(checked, out.replace(os.sep, "/"))
    text = render_script(ir)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    old = Path(out).read_text() if Path(out).exists() else None
    if old != text:
        Path(out).write_text(text)
    return out, old != text
