"""Emit the training script from the IR with jinja2: deterministic, byte for byte.

Every value from a plan reaches the script through `py` (repr of plain data), so a string such as
`x"); import os #` stays a string; the script is then parsed with `ast` before it is written.
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import jinja2

from .diagnostics import render
from .ir import ScriptIR
from .lower import lower

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


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["py"] = py
    return env


def settings_lines(ir: ScriptIR) -> list[str]:
    """`"key": value,` lines with their plan-line comments aligned in one column."""
    heads = [f"{py(s.key)}: {py(s.value)}," for s in ir.settings]
    width = min(max(len(h) for h in heads), 60) + 2
    return [f"{h.ljust(width)}# {s.where}" for h, s in zip(heads, ir.settings)]


def source_lines(ir: ScriptIR, width: int = 100) -> list[str]:
    """`Source(...)` calls, wrapped one field per line when a call would be too wide."""
    out = []
    for s in ir.sources:
        args = [f"name={py(s.name)}"] + [f"{f}=cfg.data.{s.name}.{f}" for f in s.fields]
        one = f"Source({', '.join(args)}),"
        out += [one] if len(one) + 4 <= width else [f"Source({args[0]},"] + [
            f"       {a}," for a in args[1:-1]] + [f"       {args[-1]}),"]
    return out


def loader_extra(ir: ScriptIR) -> list[str]:
    """build_loader keywords for the data features this plan uses (dynamic batching, sft, streaming)."""
    keys = {s.key for s in ir.settings}
    pairs = [f"{k.split('.')[1]}=cfg.{k}," for k in ("data.tokens", "data.warmup_steps", "data.chat_template",
                                                     "data.system_prompt", "data.truncation", "data.shuffle_buffer")
             if k in keys]
    lines, line = [], ""
    for p in pairs:
        if line and len(line) + len(p) + 1 > 76:
            lines.append(line)
            line = ""
        line = f"{line} {p}".strip()
    return lines + ([line] if line else [])


def pad_multiple(ir: ScriptIR) -> str:
    """Rows must split evenly over the ranks that shard the sequence (Ulysses, sequence-parallel TP)."""
    parts = (["cfg.mesh.sp"] if "sp" in ir.features else []) + (["cfg.mesh.tp"] if ir.tp_sequence else [])
    return " * ".join(parts)


def one_process(ir: ScriptIR) -> str:
    """The overrides that run a data-parallel plan as one process (empty for other layouts)."""
    if ir.world == 1 or set(ir.mesh) - {"dp_replicate", "dp_shard"}:
        return ""
    return " ".join(f"--{key} 1" for dim, key in ir.mesh.items()
                    if next(s.value for s in ir.settings if s.key == key) != 1)


def render_script(ir: ScriptIR) -> str:
    launch = f"torchrun --standalone --nproc-per-node {ir.world} {ir.out_path}"
    text = _environment().get_template("train.py.j2").render(
        ir=ir, settings=settings_lines(ir), source_lines=source_lines(ir), launch=launch,
        keys={s.key for s in ir.settings}, one_process=one_process(ir), loader_extra=loader_extra(ir),
        pad_multiple=pad_multiple(ir), uses_expand=bool(ir.features & {"tp", "ep", "sp"}))
    ast.parse(text)  # a plan can never produce a script that does not parse
    return text


def default_output(name: str) -> str:
    return os.path.join("generated", f"{name}.py")


def compile_plan(plan_path: str, output: str | None = None, world: int | None = None,
                 skip_files: bool = False) -> int:
    from .frontend import check_file

    checked = check_file(plan_path, world, skip_files=skip_files)
    for d in checked.diagnostics:
        print(render(d, checked.source), file=sys.stderr)
        print(file=sys.stderr)
    if not checked.ok:
        print(f"{plan_path}: the plan does not compose; nothing written", file=sys.stderr)
        return 2
    out = output or default_output(checked.plan.name)
    try:
        out.encode("utf-8")  # the script names its own path; a name that is not text cannot be written into it
    except UnicodeError:
        print(f"planc compile: -o {out.encode('utf-8', 'backslashreplace').decode()}: the name is not UTF-8 text",
              file=sys.stderr)
        return 2
    ir = lower(checked, out.replace(os.sep, "/"))
    text = render_script(ir)
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        old = Path(out).read_text() if Path(out).exists() else None
        if old != text:
            Path(out).write_text(text)
    except (OSError, ValueError) as e:  # -o names a directory, an unwritable place, a bad name
        from .paths import reason

        print(f"planc compile: cannot write {out}: {reason(e, out)}", file=sys.stderr)
        return 2
    print(f"wrote {out}" if old != text else f"{out} is up to date")
    return 0
