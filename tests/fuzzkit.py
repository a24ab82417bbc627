"""Fuzzing planc: strategies over plan bytes, plan structure (from planc/schema.py) and command
lines, and the one property they share: every input gets diagnostics or a result, never an internal
error (exit 3) and never a traceback.

tests/test_check_fuzz.py runs these with a budget of seconds; a long run, which collects every
distinct failure instead of stopping at the first, is

    python -m tests.fuzzkit --minutes 30
"""
from __future__ import annotations

import io
import json
import os
import sys
import traceback
from pathlib import Path

from hypothesis import strategies as st

from planc import schema as S
from planc.cli import build_parser, main

# -- the property ------------------------------------------------------------------------------


class Crash(AssertionError):
    """planc answered an input with exit 3 (an internal error) or an exception."""


def run_cli(argv: list[str], encoding: str = "utf-8") -> tuple[int, str, str]:
    """`planc ARGV` in this process, its output written through strict `encoding` streams as a
    terminal would; (exit status, stdout, stderr)."""
    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding=encoding, errors="strict", write_through=True)
    err = io.TextIOWrapper(err_b, encoding=encoding, errors="strict", write_through=True)
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: usage errors (2) and --help (0)
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        out.flush()
        err.flush()
    finally:
        sys.stdout, sys.stderr = old
    return rc, out_b.getvalue().decode(encoding, "replace"), err_b.getvalue().decode(encoding, "replace")


def _traceback(argv: list[str]) -> str:
    """The exception behind an exit 3, raised again without planc.cli's one-line catch."""
    sink = io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = sink
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except BaseException:  # noqa: BLE001 - the point is to show it
        return traceback.format_exc()
    finally:
        sys.stdout, sys.stderr = old
    return "(not raised again: " + sink.getvalue()[-2000:] + ")"


def assert_answers(argv: list[str], encoding: str = "utf-8", ok=(0, 1, 2)) -> tuple[int, str, str]:
    """planc ARGV exits with a status in `ok`, without an internal error or a traceback."""
    try:
        rc, out, err = run_cli(argv, encoding)
    except Exception as e:  # an exception that escaped main() itself (e.g. while printing)
        raise Crash(f"planc {argv!r} raised {type(e).__name__}: {e}\n{traceback.format_exc()}") from None
    if rc not in ok or "internal error" in err or "Traceback" in err + out:
        raise Crash(f"planc {_short(argv)} exited {rc}:\n{err[-3000:]}\n{_traceback(argv)}")
    return rc, out, err


def _short(argv) -> str:
    return repr([a if len(a) < 200 else a[:60] + f"...({len(a)})" for a in argv])


# -- a workspace: everything a plan may name ---------------------------------------------------

def workspace(root: Path) -> Path:
    from tests.planfix import make_workspace

    ws = make_workspace(root)
    (ws / "cfgs").mkdir(exist_ok=True)
    for name, text in {"deep.json": "[" * 100000 + "]" * 100000, "latin1.json": '{"a": "\xe9"}',
                       "list.json": "[1, 2]", "zero_heads.json": json.dumps(_zero_heads()),
                       "unknown.json": json.dumps({"model_type": "no-such-model"})}.items():
        d = ws / "cfgs" / name.split(".")[0]
        d.mkdir(exist_ok=True)
        (d / "config.json").write_bytes(text.encode("latin-1"))
    (ws / "badtok").mkdir(exist_ok=True)
    (ws / "badtok" / "tokenizer.json").write_bytes(b"\xff\xfe{")
    (ws / "badtok" / "tokenizer_config.json").write_text('{"chat_template": 5}')
    (ws / "nest.jsonl").write_text("[" * 5000 + "]" * 5000 + "\n")
    (ws / "data_dir").mkdir(exist_ok=True)
    (ws / "data_dir" / "a.jsonl").write_text('{"text": "w4 w5"}\n')
    return ws


def _zero_heads() -> dict:
    from tests.planfix import TINY_LLAMA

    return dict(TINY_LLAMA, num_attention_heads=0)


# -- plan bytes ---------------------------------------------------------------------------------

_ESCAPES = ["\\ud800", "\\udfff", "\\u0000", "\\u001b[31m", "\\u202e", "\\u200b", "\\ufeff", "\\ud83d\\ude00",
            "\\n", "\\\\", '\\"', "\\x", "\\u12"]
_SNIPPETS = ["{", "}", "[", "]", "=", '"', "#", "\n", "\r", "\r\n", ";", ",", "\\", "\x00", "\ufeff", "\u00a0",
             "\u201c", "\u2028", "\x1b", "\t", "auto", "true", "false", "0", "-1", "-0", "0.0", "1e400", "-1e400",
             "1e-400", "9" * 30, "9" * 5000, "1" + "0" * 4400, "2" + "_0" * 30, "9223372036854775808", "9223372036854775807",
             "99999999999999999999999TiB", "0GiB", "1.5 MiB", "80GiB", ".5", "1__0", "tp", "sp", "ep", "fsdp",
             '"**"', '"{a,b}"', '"model.layers.*"', '""', '" "', "dynamic { tokens = 1 }", "plan", "mesh", "model",
             "data", "train", "checkpoint", "kernels", "parallelize", "é", "日本", "🙂", '"' + "x" * 100000 + '"',
             "a" * 300, '"' + "a" * 300 + '"', '"/' + "a/" * 3000 + '"', "[1, [2]]", 'source "s" { path = "/" }',
             "{ " * 40 + "}" * 40, "[" * 40 + "]" * 40, "a { " * 2000, "[" * 3000, "{" * 3000]


@st.composite
def mutated_bytes(draw, base: str) -> bytes:
    """A valid plan, broken a few times: truncated, bytes flipped, snippets, escapes or any
    unicode (or invalid UTF-8) put in, line ends changed, a byte-order mark in front."""
    data = base.encode()
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["truncate", "flip", "delete", "snippet", "escape", "unicode", "bytes", "lines",
                                   "bom"]))
        if op == "truncate":
            data = data[:i]
        elif op == "flip" and data:
            i = min(i, len(data) - 1)
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
        elif op == "delete":
            data = data[:i] + data[draw(st.integers(i, min(len(data), i + 30))):]
        elif op == "snippet":
            data = data[:i] + draw(st.sampled_from(_SNIPPETS)).encode() + data[i:]
        elif op == "escape":
            data = data[:i] + draw(st.sampled_from(_ESCAPES)).encode() + data[i:]
        elif op == "unicode":
            text = draw(st.text(max_size=8))  # any code point, lone surrogates too (as invalid UTF-8)
            data = data[:i] + text.encode("utf-8", "surrogatepass") + data[i:]
        elif op == "bytes":
            data = data[:i] + draw(st.binary(max_size=8)) + data[i:]
        elif op == "lines":
            data = data.replace(b"\n", draw(st.sampled_from([b"\r", b"\r\n", b"\n\r", b"\x0b", b"\x85"])))
        else:
            data = b"\xef\xbb\xbf" + data
    return data


def plan_bytes(base: str):
    return st.one_of(mutated_bytes(base), st.binary(max_size=300),
                     st.lists(st.sampled_from(_SNIPPETS + list("abc xyz_.0123456789")), max_size=40).map(
                         lambda parts: " ".join(parts).encode("utf-8", "surrogatepass")))


# -- plan structure: valid grammar, keys and values drawn from planc/schema.py --------------------

_WORDS = ["auto", "true", "false", "none", "hf", "bf16", "fp32", "sdpa", "cosine", "adamw", "dynamic", "greedy",
          "jsonl", "sft", "model", "megatron", "colwise", "ulysses", "reshard_after_forward", "offload", "cpu",
          "cuda", "x", "nan", "inf"]
_GLOBS = ["model.layers.*", "model.layers.*.self_attn", "model.layers.*.self_attn.{q,k,v}_proj",
          "model.layers.*.mlp.{gate,up}_proj", "model.layers.*.mlp.down_proj", "model.layers.*.mlp.experts",
          "model.layers.*.mlp", "model.embed_tokens", "lm_head", "model", "**", "*", "model.layers.{0,1}",
          "model.{a,b", "model..x", "", " ", ".", "{}", "model.layers.*.self_attn.o_proj", "model.norm"]


# the realistic globs, and the same with glob syntax (and not) put after them
_glob = st.one_of(st.sampled_from(_GLOBS), st.tuples(st.sampled_from(_GLOBS), st.text(
    alphabet=".*?[]{},!^\\-_ab0", max_size=6)).map("".join))


def _string(draw, ws: Path) -> str:
    kind = draw(st.sampled_from(["path", "path", "glob", "text", "long", "escape"]))
    if kind == "path":
        s = str(ws / draw(st.sampled_from(["llama", "moe", "tied", "oddvocab", "tok", "bigtok", "badtok", "data.jsonl",
                                           "chat.jsonl", "bad.jsonl", "nest.jsonl", "afile", "afile/x", "out",
                                           "data_dir", "data_dir/*.jsonl", "cfgs/deep", "cfgs/latin1", "cfgs/list",
                                           "cfgs/zero_heads", "cfgs/unknown", "nope", "*", "llama/config.json"])))
    elif kind == "glob":
        s = draw(st.sampled_from(_GLOBS))
    elif kind == "text":
        s = draw(st.text(max_size=12))
    elif kind == "long":
        s = draw(st.sampled_from(["a" * 300, "a/" * 2100, "x" * 5000, "é" * 200, "/" + "b" * 256 + "/c"]))
    else:
        return '"' + "".join(draw(st.lists(st.sampled_from(_ESCAPES + ["a", "/"]), max_size=4))) + '"'
    return json.dumps(s, ensure_ascii=draw(st.booleans()))


def _scalar(draw, ws: Path, key: S.Key | None = None) -> str:
    if key is not None and draw(st.integers(0, 2)):  # mostly a value of the key's own type
        t = key.type
        if t in ("int", "degree"):
            lo = int(key.min) if key.min is not None else -3
            return str(draw(st.one_of(st.integers(lo - 1, lo + 9), st.sampled_from([2**31, 2**62, 2**63 - 1]))))
        if t == "size":
            return draw(st.sampled_from(["80GiB", "1KB", "0KiB", "1", "2TiB", "1.5 MiB"]))
        if t == "float":
            return draw(st.sampled_from(["0", "1", "0.5", "3e-4", "-1", "1e400", "1e308", "1e-320", "2"]))
        if t == "bool":
            return draw(st.sampled_from(["true", "false"]))
        if t == "enum" and key.choices:
            word = draw(st.sampled_from(list(key.choices)))
            opts = key.options.get(word) if key.options else None
            if opts and draw(st.booleans()):
                inner = "  ".join(f"{k.name} = {_scalar(draw, ws, k)}"
                                  for k in draw(st.lists(st.sampled_from(list(opts.values())), max_size=3)))
                return f"{word} {{ {inner} }}"
            return word
        if t == "list":
            n = key.length if key.length is not None and draw(st.booleans()) else draw(st.integers(0, 3))
            item = S.Key("item", key.item or "str")
            return "[" + ", ".join(_scalar(draw, ws, item) for _ in range(n)) + "]"
        if t in ("str", "path"):
            return _string(draw, ws)
    kind = draw(st.sampled_from(["int", "float", "size", "word", "string", "list", "word_body"]))
    if kind == "int":
        return str(draw(st.one_of(st.integers(-5, 70), st.integers(-(2**63) + 1, 2**63 - 1))))
    if kind == "float":
        return repr(draw(st.floats(allow_nan=False, allow_infinity=False)))
    if kind == "size":
        return draw(st.sampled_from(["1KiB", "80GiB", "0MB", "3.5 GiB"]))
    if kind == "word":
        return draw(st.sampled_from(_WORDS))
    if kind == "string":
        return _string(draw, ws)
    if kind == "list":
        return "[" + ", ".join(_scalar(draw, ws) for _ in range(draw(st.integers(0, 3)))) + "]"
    return f"{draw(st.sampled_from(_WORDS))} {{ {draw(st.sampled_from(['lr', 'tokens', 'x']))} = {_scalar(draw, ws)} }}"


def _name(draw, choices) -> str:
    names = list(choices)
    if names and draw(st.integers(0, 5)):
        return draw(st.sampled_from(names))
    return draw(st.sampled_from(["x", "stpes", "dp_shrad", "lr", "text", "path", "source", "tp", "world"]))


def _rule(draw, ws: Path) -> str:
    name = _name(draw, S.PARALLELIZE.stmts)
    spec = S.PARALLELIZE.stmts.get(name)
    parts = [name]
    if spec is not None and spec.styles and draw(st.integers(0, 4)):
        parts.append(draw(st.sampled_from(list(spec.styles) + ["rowwse"])))
    if spec is not None and "plan" in spec.options and draw(st.integers(0, 3)) == 0:
        parts.append("plan = " + draw(st.sampled_from(list(spec.options["plan"].choices) + ["x"])))
    else:
        parts += [json.dumps(draw(_glob), ensure_ascii=False) for _ in range(draw(st.integers(0, 3)))]
    if spec is not None and spec.options and draw(st.booleans()):
        opt = draw(st.sampled_from(list(spec.options)))
        parts.append(opt if draw(st.booleans()) else f"{opt} = {_scalar(draw, ws, spec.options[opt])}")
    if draw(st.integers(0, 9)) == 0:
        parts.append("{ x = 1 }")
    return "  ".join(parts)


def _block(draw, ws: Path, spec: S.BlockSpec) -> str:
    lines = []
    for _ in range(draw(st.integers(0, len(spec.keys) + 1))):
        name = _name(draw, spec.keys)
        lines.append(f"{name} = {_scalar(draw, ws, spec.keys.get(name))}")
    for sname, sspec in spec.stmts.items():
        for _ in range(draw(st.integers(0, 4 if sname != "source" else 3))):
            if spec is S.PARALLELIZE:
                lines.append(_rule(draw, ws))
            elif sspec.args == "label":
                label = draw(st.sampled_from(["web", "chat", "web2", "max_len", "a b", ""]))
                body = "  ".join(f"{k} = {_scalar(draw, ws, sspec.body.get(k))}"
                                 for k in draw(st.lists(st.sampled_from(list(sspec.body) + ["x"]), max_size=6)))
                lines.append(f"{sname} {json.dumps(label)} {{ {body} }}")
            elif sspec.body is not None:
                body = "  ".join(f"{k} = {_scalar(draw, ws, sspec.body.get(k))}"
                                 for k in draw(st.lists(st.sampled_from(list(sspec.body)), max_size=3)))
                lines.append(f"{sname} {{ {body} }}")
    order = draw(st.permutations(lines)) if lines else []
    return f"{spec.name} {{\n" + "".join(f"  {line}\n" for line in order) + "}\n"


@st.composite
def wild_structure(draw, ws: Path) -> str:
    """A plan in the language's grammar whose blocks, keys, statements and values come from the
    schema (and now and then a name or a value from elsewhere), in any number and order."""
    name = draw(st.sampled_from(["fuzz", "fuzz-1", "json", "a b", "", "x" * 300]))
    out = [f"plan {json.dumps(name)}\n"] if draw(st.integers(0, 9)) else []
    blocks = [S.MODEL, S.DATA, S.TRAIN] + draw(st.lists(st.sampled_from(list(S.BLOCKS.values())), max_size=4))
    blocks = draw(st.permutations(blocks))
    for spec in blocks[: len(blocks) - draw(st.integers(0, 1))]:
        out.append(_block(draw, ws, spec))
    return "".join(out)


_RULES = ['fsdp "model.layers.*"', 'fsdp "model.layers.*" reshard_after_forward = false', 'fsdp "model.layers.*" offload',
          'checkpoint "model.layers.*"', 'compile "model.layers.*"', "replicate", "tp plan = model",
          "tp plan = megatron", "tp plan = megatron_sp", 'tp colwise "model.layers.*.self_attn.{q,k,v}_proj"',
          'tp rowwise "model.layers.*.self_attn.o_proj"', 'tp vocab "model.embed_tokens"', 'tp loss "lm_head"',
          'tp sequence "model.norm"', 'sp ulysses "model.layers.*.self_attn"', "ep plan = model",
          'ep "model.layers.*.mlp.experts"']


def _valid(ws: Path) -> dict:
    """The base plan of tests/planfix.py as blocks of `key -> value text` (a plan that composes)."""
    return {
        "model": {"config": json.dumps(str(ws / "llama")), "dtype": "fp32", "attention": "sdpa"},
        "mesh": {"dp_shard": "2", "device": "cpu"},
        "parallelize": ['fsdp "model.layers.*" reshard_after_forward', 'checkpoint "model.layers.*"'],
        "data": {"tokenizer": json.dumps(str(ws / "tok")), "max_len": "64", "pack": "greedy",
                 "sources": {"web": {"path": json.dumps(str(ws / "data.jsonl")), "format": "jsonl",
                                     "text": '"text"'}}},
        "train": {"steps": "10", "global_batch": "8", "micro_batch": "2", "optimizer": "adamw { lr = 1e-3 }",
                  "schedule": "cosine { warmup = 2 }"},
        "checkpoint": {"dir": json.dumps(str(ws / "out")), "every": "5"},
    }


def _set_key(draw, ws: Path, plan: dict) -> None:
    spec = draw(st.sampled_from([b for b in S.BLOCKS.values() if b.keys]))
    block = plan.setdefault(spec.name, {})
    if draw(st.integers(0, 9)) == 0:
        block[draw(st.sampled_from(["x", "stpes", "lr", "tp", "source"]))] = _scalar(draw, ws)
        return
    key = draw(st.sampled_from(list(spec.keys.values())))
    if key.type == "degree" and draw(st.booleans()):
        block[key.name] = draw(st.sampled_from(["1", "2", "4", "auto", "8"]))
    else:
        block[key.name] = _scalar(draw, ws, key)


def _mutate(draw, ws: Path, plan: dict) -> None:
    op = draw(st.sampled_from(["key", "key", "key", "drop", "rules", "rule", "source", "source_key", "block",
                               "mixed_precision"]))
    if op == "key":
        _set_key(draw, ws, plan)
    elif op == "drop":
        name = draw(st.sampled_from(sorted(plan)))
        if isinstance(plan[name], dict) and plan[name] and draw(st.booleans()):
            del plan[name][draw(st.sampled_from(sorted(plan[name])))]
        else:
            del plan[name]
    elif op == "rules":
        plan["parallelize"] = draw(st.lists(st.sampled_from(_RULES), max_size=5))
    elif op == "rule":
        plan.setdefault("parallelize", []).append(_rule(draw, ws) if draw(st.booleans()) else draw(st.sampled_from(_RULES)))
    elif op in ("source", "source_key"):
        sources = plan.setdefault("data", {}).setdefault("sources", {})
        name = draw(st.sampled_from(["web", "chat", "more"]))
        body = sources.setdefault(name, {"path": json.dumps(str(ws / "chat.jsonl")), "kind": "sft"})
        key = draw(st.sampled_from(list(S.DATA.stmts["source"].body.values())))
        body[key.name] = _scalar(draw, ws, key)
    elif op == "block":
        plan["kernels"] = {k: draw(st.sampled_from(list(S.KERNEL_CHOICES))) for k in
                           draw(st.lists(st.sampled_from(list(S.KERNELS.keys)), max_size=3, unique=True))}
    else:
        body = S.TRAIN.stmts["mixed_precision"].body
        plan.setdefault("train", {})["mixed_precision"] = "{ " + "  ".join(
            f"{k} = {_scalar(draw, ws, body[k])}" for k in draw(st.lists(st.sampled_from(list(body)), max_size=2,
                                                                            unique=True))) + " }"


def _render(name: str, plan: dict) -> str:
    out = [f"plan {json.dumps(name)}"]
    for block, content in plan.items():
        out.append(f"{block} {{")
        if isinstance(content, list):
            out += [f"  {rule}" for rule in content]
        else:
            for key, value in content.items():
                if key == "sources":
                    for src, body in value.items():
                        out.append(f"  source {json.dumps(src)} {{ " + "  ".join(f"{k} = {v}" for k, v in body.items()) + " }")
                elif block in S.BLOCKS and key in S.BLOCKS[block].stmts:  # a statement with a body
                    out.append(f"  {key} {value}")
                else:
                    out.append(f"  {key} = {value}")
        out.append("}")
    return "\n".join(out) + "\n"


@st.composite
def near_valid_structure(draw, ws: Path) -> str:
    """A plan that composes, changed a few times where the schema allows changes: a key set to a
    value of its own type (or another), a key or block dropped, rules, sources, kernels."""
    plan = _valid(ws)
    for _ in range(draw(st.integers(0, 4))):
        _mutate(draw, ws, plan)
    return _render(draw(st.sampled_from(["fuzz", "fuzz", "fuzz-2"])), plan)


def plan_structure(ws: Path):
    return st.one_of(near_valid_structure(ws), near_valid_structure(ws), near_valid_structure(ws), wild_structure(ws))


# -- command lines -----------------------------------------------------------------------------

def _count_text(draw) -> str:
    return draw(st.one_of(st.integers(-3, 70).map(str), st.sampled_from(
        ["0", "-0", "1_000", " 4", "4.0", "1e3", "", "x", "2147483648", "99999999999999999999", "９", "+2", "0x10"])))


def _size_text(draw) -> str:
    return draw(st.sampled_from(["80GiB", "80 GiB", "1", "0", "-5GiB", "1e999", "nan", "garbage", "80gib", "1.5TiB",
                                 "99999999999999999999999TiB", "GiB", "", " ", "0.0001KB", "1KiB ", "inf"]))


def _plan_path(draw, plans: list[str]) -> str:
    return draw(st.sampled_from(plans))


@st.composite
def command_line(draw, plans: list[str], scratch: Path) -> list[str]:
    """`planc COMMAND ...` with the command's own options, their values drawn wide."""
    cmd = draw(st.sampled_from(["check", "explain", "compile", "fmt", "verify", "nope", "--help"]))
    argv = [cmd]
    if cmd in ("check", "explain", "compile", "fmt", "verify") and draw(st.integers(0, 9)):
        argv.append(_plan_path(draw, plans))
    opts = {"check": ["--world", "--json", "--skip-files", "--device-memory", "--gpus-per-node"] * 3 + ["--dry-run"],
            "explain": ["--world", "--gpus-per-node", "--device-memory", "--json", "--svg"] * 3 + ["--dry-run"],
            "compile": ["--world", "--skip-files", "-o"], "fmt": ["--check"],
            "verify": ["--max-procs", "--layout", "--steps", "--tolerance", "--data", "--demo-data", "--keep",
                       "--timeout", "--baseline"]}.get(cmd, ["--world"])
    for opt in draw(st.lists(st.sampled_from(opts), max_size=4)):
        if opt in ("--world", "--gpus-per-node", "--max-procs", "--steps"):
            argv += [opt, _count_text(draw)]
        elif opt == "--device-memory":
            argv.append(f"{opt}={_size_text(draw)}")
        elif opt in ("--tolerance", "--timeout"):
            argv += [opt, draw(st.sampled_from(["1e-5", "0", "-1", "nan", "inf", "x", "1e999", "5"]))]
        elif opt in ("--svg", "-o", "--keep", "--demo-data"):
            argv += [opt, str(scratch / draw(st.sampled_from(["out.svg", "x/y.py", "x.py", "", "afile/x", "d",
                                                              "a" * 300, "\udcff.py"])))]
        elif opt == "--layout":
            argv += [opt, draw(st.sampled_from(["dp_shard=2", "tp=2", "dp_shard=0", "x=1", "tp=a", "", "dp_shard=2,tp=2",
                                                "tp=99999999999999999999"]))]
        elif opt == "--data":
            argv += [opt, draw(st.sampled_from(["auto", "plan", "demo", "x"]))]
        else:
            argv.append(opt)
    if draw(st.integers(0, 19)) == 0:
        argv.append(draw(st.sampled_from(["--", "-x", "extra"])))
    return argv


# -- the long run -------------------------------------------------------------------------------

def _long_run(minutes: float, root: Path) -> int:
    """Every strategy in turn until the time is up; distinct failures are collected, not fatal."""
    import time

    from hypothesis import HealthCheck, given, settings

    from planc.fmt import format_source
    from planc.parse import parse
    from tests.planfix import base_plan

    ws = workspace(root / "ws")
    base = base_plan(ws)
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)
    (scratch / "afile").write_text("x")
    plans = _plan_files(ws, scratch)
    found: dict[str, str] = {}
    counts = {"bytes": 0, "structure": 0, "cli": 0}

    def record(kind: str, e: BaseException, what) -> None:
        sig = _signature(e)
        if sig not in found:
            found[sig] = f"{kind}: {str(e)[-3000:]}\ninput: {what!r}"[:8000]
            print(f"\nNEW FAILURE [{sig}]\n{found[sig]}\n", flush=True)

    plan_file = scratch / "fuzz.veo"
    common = settings(max_examples=150, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))

    @common
    @given(data=plan_bytes(base))
    def bytes_case(data):
        counts["bytes"] += 1
        plan_file.write_bytes(data)
        try:
            assert_answers(["check", str(plan_file)], encoding="ascii" if counts["bytes"] % 3 == 0 else "utf-8")
            _fmt_property(data, parse, format_source)
        except Exception as e:  # noqa: BLE001
            record("bytes", e, data[:400])

    @common
    @given(text=plan_structure(ws), world=st.one_of(st.none(), st.integers(1, 16)))
    def structure_case(text, world):
        counts["structure"] += 1
        plan_file.write_text(text, encoding="utf-8")
        try:
            check_structure(plan_file, world, scratch)
        except Exception as e:  # noqa: BLE001
            record("structure", e, text[:2000])

    @common
    @given(argv=command_line(plans, scratch))
    def cli_case(argv):
        counts["cli"] += 1
        try:
            fuzz_cli(argv, scratch)
        except Exception as e:  # noqa: BLE001
            record("cli", e, argv)

    end = time.time() + minutes * 60
    t0 = time.time()
    rounds = 0
    while time.time() < end:
        for case in (bytes_case, structure_case, cli_case):
            if time.time() < end:
                case()
        rounds += 1
        print(f"[{(time.time() - t0) / 60:.1f} min] inputs: {counts} ({sum(counts.values())} total), "
              f"distinct failures: {len(found)}", flush=True)
    print(f"\nran {(time.time() - t0) / 60:.1f} min, {sum(counts.values())} inputs {counts}; "
          f"{len(found)} distinct failures")
    for sig, text in found.items():
        print(f"\n=== {sig}\n{text}")
    return 1 if found else 0


def _signature(e: BaseException) -> str:
    """Where a failure comes from: the innermost planc/runtime frame of its traceback text."""
    text = str(e)
    frames = [ln.strip() for ln in text.splitlines() if ln.strip().startswith('File "') and
              ("/planc/" in ln or "/runtime/" in ln)]
    last = [ln for ln in text.splitlines() if ln and not ln.startswith(" ")]
    kind = next((ln.split(":")[0] for ln in reversed(last) if "Error" in ln.split(":")[0]), type(e).__name__)
    return f"{kind} @ {frames[-1] if frames else text.splitlines()[0][:120] if text else ''}"


def _plan_files(ws: Path, scratch: Path) -> list[str]:
    """Plan paths for command lines: valid, invalid, unreadable, odd names."""
    from tests.planfix import base_plan

    good = scratch / "good.veo"
    good.write_text(base_plan(ws))
    bad = scratch / "bad.veo"
    bad.write_text('plan "x"\nmesh { dp_shard = 0 }\n')
    latin = scratch / "latin.veo"
    latin.write_bytes(b'plan "\xe9"\n')
    odd = scratch / "odd\udcff\u202e.veo"
    try:
        odd.write_text(base_plan(ws))
    except (OSError, UnicodeError):
        odd = good
    return [str(good), str(bad), str(latin), str(odd), str(scratch), str(scratch / "nope.veo"),
            str(scratch / ("a" * 300)), "", "-", str(scratch / "afile" / "x.veo")]


def shape(doc) -> list:
    """What a parsed plan says (entries, names, values, bodies), without positions or layout."""
    def body(b):
        return [entry(x) for x in b.entries] if b is not None else None

    def value(v):
        return (v.kind, v.plain(), body(v.body))

    def entry(e):
        if hasattr(e, "key"):
            return ("=", e.key, value(e.value))
        return (e.name, [value(a) for a in e.args], [entry(o) for o in e.options], body(e.body))

    return [entry(e) for e in doc.entries]


def _fmt_property(data: bytes, parse, format_source) -> None:
    """A plan that parses formats to text that parses to the same plan, and formatting it again
    changes nothing."""
    from planc.diagnostics import PlanError

    try:
        text = data.decode("utf-8")
        doc = parse(text)
    except (UnicodeDecodeError, PlanError):
        return
    once = format_source(text)
    assert shape(parse(once)) == shape(doc), "fmt changed what the plan says"
    assert format_source(once) == once, "fmt is not idempotent"


def check_structure(plan_file: Path, world, scratch: Path) -> None:
    """`planc check` answers; a plan it accepts also explains and compiles without an internal error."""
    argv = ["check", str(plan_file)] + (["--world", str(world)] if world else [])
    rc, _, _ = assert_answers(argv)
    if rc == 0:
        assert_answers(["explain", str(plan_file)] + argv[2:])
        assert_answers(["compile", str(plan_file), "-o", str(scratch / "compiled.py")] + argv[2:])


def fuzz_cli(argv: list[str], scratch: Path) -> None:
    """Any command line: a usage error, diagnostics or a result. `verify` is stopped where its
    runs would start (its argument checks are what is fuzzed here)."""
    import planc.verify as V

    real, cwd = V._run, os.getcwd()
    V._run = lambda *a, **k: 0
    os.chdir(scratch)  # `compile` without -o writes generated/NAME.py here, not into the checkout
    try:
        if argv[:1] == ["fmt"] and len(argv) > 1 and not argv[1].startswith("-"):
            argv = _fmt_copy(argv)
        assert_answers(argv)
    finally:
        V._run = real
        os.chdir(cwd)


def _fmt_copy(argv: list[str]) -> list[str]:
    """fmt rewrites its file: give it a copy."""
    import shutil
    import tempfile

    src = Path(argv[1])
    try:
        if not src.is_file():
            return argv
    except (OSError, ValueError):
        return argv
    d = Path(tempfile.mkdtemp(prefix="planc-fmt-fuzz-"))
    shutil.copy(src, d / "p.veo")
    return [argv[0], str(d / "p.veo")] + argv[2:]


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="Fuzz planc for a while; report every distinct failure.")
    ap.add_argument("--minutes", type=float, default=30)
    ns = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(_long_run(ns.minutes, Path(tempfile.mkdtemp(prefix="planc-fuzz-"))))
