"""Every input gets a located diagnostic a person can act on, one per mistake; none crashes planc.
One test (or one parametrized family) per class of defect, each over every place the class can
occur: nesting, file probes, strings that cannot be text or file names, line ends and byte-order
marks, huge literals, numeric command-line options, follow-on diagnostics."""
from __future__ import annotations

import json
import os

import pytest

from planc import schema as S
from planc.diagnostics import PlanError, elide, render
from planc.fmt import format_source
from planc.frontend import check_file
from planc.parse import INT_MAX, MAX_NESTING, parse
from tests import fuzzkit as F
from tests.planfix import base_plan


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return F.workspace(tmp_path_factory.mktemp("robust"))


def _errors(checked):
    return [d for d in checked.diagnostics if d.severity == "error"]


def _check_text(ws, text: str, name="p.veo"):
    path = ws / name
    path.write_text(text, encoding="utf-8")
    return check_file(str(path)), path


def _at(text: str, needle: str) -> tuple[int, int]:
    i = text.index(needle)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def _cli(argv, encoding="utf-8"):
    return F.assert_answers(argv, encoding)


# -- nesting ------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 5000])
@pytest.mark.parametrize("shape", ["list", "value", "stmt", "unclosed"])
def test_deep_nesting_is_refused_with_the_limit(ws, shape, depth):
    base = base_plan(ws)
    if shape == "list":
        text = base.replace("max_len   = 64", "max_len = " + "[" * depth + "]" * depth)
    elif shape == "value":
        text = base.replace("lr = 1e-3", "lr = " + "a { x = " * depth + "1" + " }" * depth)
    elif shape == "stmt":
        text = base + "kernels { " + "a { " * depth + "}" * depth + " }\n"
    else:
        text = base + "kernels { x = " + "[" * depth
    checked, path = _check_text(ws, text)
    (d,) = checked.diagnostics
    assert d.rule == "syntax" and f"deeper than {MAX_NESTING} levels" in d.message
    line = text.splitlines()[d.span.line - 1]
    assert line[d.span.col - 1] in "[{"
    rc, _, err = _cli(["check", str(path)])
    assert rc == 2 and "error[syntax]" in err


def test_nesting_up_to_the_limit_parses():
    inner = "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1)
    doc = parse(f"train {{ betas = {inner} }}\n")
    assert doc.entries[0].body.entries[0].value.kind == "list"


# -- file probes ---------------------------------------------------------------------------------

_PATH_KEYS = {  # setting -> (edit of the base plan with {p} for the path, rule)
    "model.config": (("/llama\"", None), "model-config"),
    "model.weights": (("dtype     = fp32", 'weights = "{p}"'), "model-weights"),
    "data.tokenizer": (("/tok\"", None), "tokenizer"),
    "source path": (("/data.jsonl\"", None), "data-source"),
    "checkpoint.dir": (("/out\"", None), "checkpoint-dir"),
}


def _with_path(ws, setting: str, p: str) -> str:
    (old, new), _ = _PATH_KEYS[setting]
    text = base_plan(ws)
    if new is None:  # replace the whole string that ends with `old`
        end = text.index(old) + len(old)
        start = text.rindex('"', 0, end - 1)
        return text[:start] + json.dumps(p) + text[end:]
    return text.replace(old, new.replace("{p}", p), 1)


@pytest.mark.parametrize("setting", sorted(_PATH_KEYS))
@pytest.mark.parametrize("kind", ["long-name", "long-path", "symlink-loop", "under-a-file"])
def test_every_path_probe_gives_a_located_diagnostic(ws, setting, kind):
    loop = ws / "loop"
    if not os.path.islink(loop):
        os.symlink(loop, loop)
    p = {"long-name": "a" * 300, "long-path": "a/" * 2100 + "b", "symlink-loop": str(loop / "x"),
         "under-a-file": str(ws / "afile" / "x" / "y")}[kind]
    text = _with_path(ws, setting, p)
    checked, path = _check_text(ws, text)
    errors = _errors(checked)
    _, rule = _PATH_KEYS[setting]
    if kind == "under-a-file" and setting == "checkpoint.dir":
        assert [d.rule for d in errors] == [rule] and "is a file" in errors[0].message
    else:
        assert [d.rule for d in errors] == [rule], [(d.rule, d.message) for d in checked.diagnostics]
    d = errors[0]
    assert (d.span.line, d.span.col) == _at(text, json.dumps(p))
    if kind.startswith("long"):
        assert "longer than the file system allows" in d.message and "characters)" in d.message
    if kind == "symlink-loop" and setting != "checkpoint.dir":
        assert "loop of symbolic links" in d.message
    rc, _, err = _cli(["check", str(path)])
    assert rc == 2 and f"error[{rule}]" in err


def test_paths_module_reasons(tmp_path):
    from planc import paths

    with pytest.raises(paths.PathError, match="NUL"):
        paths.exists("a\x00b")
    with pytest.raises(paths.PathError, match="cannot be part of a file name"):
        paths.is_dir("\ud800")
    with pytest.raises(paths.PathError, match="longer than"):
        paths.is_file("x" * 1000)
    assert not paths.exists(tmp_path / "nope") and paths.is_dir(tmp_path)
    (tmp_path / "t").write_bytes(b"\xff")
    with pytest.raises(paths.PathError, match="not UTF-8"):
        paths.read_text(tmp_path / "t")


def test_model_config_files_that_are_not_json(ws):
    for name, why in (("deep", "nested too deeply"), ("latin1", "not UTF-8")):
        text = base_plan(ws).replace(f'"{ws}/llama"', json.dumps(str(ws / "cfgs" / name)))
        checked, _ = _check_text(ws, text)
        (d,) = _errors(checked)
        assert d.rule == "model-config" and why in d.message


# -- strings that cannot be text, file names or names ---------------------------------------------

@pytest.mark.parametrize("escape,what", [("\\ud800", "lone surrogate"), ("\\udfff", "lone surrogate"),
                                         ("\\ude00\\ud83d", "lone surrogate"), ("\\u0000", "NUL")])
@pytest.mark.parametrize("where", ['text = "text"', 'dir = "', 'plan "base"'])
def test_strings_that_cannot_be_text_are_refused_where_written(ws, escape, what, where):
    text = base_plan(ws)
    if where.endswith('"') and where.count('"') == 1:
        new = where + escape
    else:
        new = where[:-1] + escape + '"'
    text = text.replace(where, new, 1)
    checked, path = _check_text(ws, text)
    (d,) = checked.diagnostics
    assert d.rule == "syntax" and what in d.message
    line = text.splitlines()[d.span.line - 1]
    assert line[d.span.col - 1] == '"' and escape.split("\\")[1] in line[d.span.col - 1:]
    for enc in ("utf-8", "ascii"):
        rc, _, err = _cli(["check", str(path)], enc)
        assert rc == 2 and "error[syntax]" in err


def test_a_surrogate_pair_is_one_character():
    doc = parse('train { system_prompt = "\\ud83d\\ude00" }\n')
    assert doc.entries[0].body.entries[0].value.value == "\U0001f600"


def test_invisible_characters_are_shown_escaped(ws):
    """Controls, bidi overrides and zero-width characters never reach the terminal raw: not from a
    plan's string (quoted in a message), nor from its source line, nor from a file name."""
    text = base_plan(ws).replace("pack      = greedy", 'pack      = "gr\\u001b[2Jeedy\\u202e\\u200b"')
    checked, path = _check_text(ws, text)
    (d,) = _errors(checked)
    out = render(d, checked.source)
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b" in out and "\\u202e" in out
    raw = base_plan(ws).replace("pack      = greedy", "pack      = gr\u202eeedy")
    checked, _ = _check_text(ws, raw)
    out = "\n".join(render(d, checked.source) for d in checked.diagnostics)
    assert "\u202e" not in out and "U+202E (RIGHT-TO-LEFT OVERRIDE)" in out
    odd = ws / "odd\udcff\x1b.veo"
    odd.write_text('plan "x"\n', encoding="utf-8")
    rc, _, err = _cli(["check", str(odd)], "ascii")
    assert rc == 2 and "\x1b" not in err


def test_a_summary_prints_on_any_terminal(ws):
    text = base_plan(ws).replace(f'"{ws}/out"', json.dumps(str(ws / "out-é-\u202e")))
    _, path = _check_text(ws, text)
    rc, out, _ = _cli(["check", str(path)], "ascii")
    assert rc == 0 and "\\xe9" in out and "\\u202e" in out


def test_fmt_writes_invisible_characters_as_escapes():
    src = 'train { system_prompt = "a\\u202eb\\u0007c\\u00e9" }\n'
    once = format_source(src)
    assert once == 'train { system_prompt = "a\\u202eb\\u0007cé" }\n'
    assert format_source(once) == once


# -- byte-order marks and line ends ----------------------------------------------------------------

@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", [False, True])
def test_line_ends_and_bom_are_read_and_located(ws, ending, bom):
    text = base_plan(ws)
    good = ("\ufeff" if bom else "") + text.replace("\n", ending)
    checked, path = _check_text(ws, good)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    bad = text.replace("global_batch = 8", "global_batch = 7")
    checked, _ = _check_text(ws, ("\ufeff" if bom else "") + bad.replace("\n", ending))
    (d,) = _errors(checked)
    assert (d.span.line, d.span.col) == _at(bad, "global_batch = 7")
    assert "global_batch = 7" in render(d, checked.source).splitlines()[2]


def test_fmt_rewrites_bom_and_cr_as_plain_lines(tmp_path):
    p = tmp_path / "x.veo"
    p.write_bytes(b'\xef\xbb\xbfplan "x"\r\ntrain { steps = 1 }\r\n')
    rc, _, err = _cli(["fmt", str(p), "--check"])
    assert rc == 1 and "not formatted" in err
    rc, _, _ = _cli(["fmt", str(p)])
    assert rc == 0 and p.read_bytes() == b'plan "x"\ntrain { steps = 1 }\n'


def test_caret_stays_under_the_mistake_after_tabs_and_escapes(ws):
    text = base_plan(ws).replace("  max_len   = 64", '\tmax_len =\t"\\u0001"')
    checked, _ = _check_text(ws, text.replace('"\\u0001"', '"\x01"'))
    (d,) = checked.diagnostics
    shown = render(d, checked.source).splitlines()
    caret_col = shown[3].index("^")
    assert shown[2][caret_col] == '"'


@pytest.mark.parametrize("ch,needle", [("\u00a0", "U+00A0 (NO-BREAK SPACE)"), ("\u200b", "U+200B (ZERO WIDTH SPACE)"),
                                       ("\u201c", "typographic"), ("\ufeff", "U+FEFF")])
def test_odd_characters_are_named(ch, needle):
    with pytest.raises(PlanError) as e:
        parse(f'plan "x"\ntrain {{ steps ={ch}1 }}\n' if ch != "\u201c" else 'plan \u201cx\u201d\n')
    d = e.value.diagnostics[0]
    assert needle in d.message + (d.help or "")


# -- huge literals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("edit", [
    ("dtype     = fp32", 'dtype = "' + "x" * 1_000_000 + '"'),  # enum value
    ("dtype     = fp32", "d" * 100_000 + " = 1"),  # unknown key
    ("max_len   = 64", "max_len = 1" + "0" * 5000),  # an integer of 5001 digits
    ("max_len   = 64", "max_len = " + str(INT_MAX + 1)),
    ("max_len   = 64", "max_len = 0." + "0" * 5000 + "1"),  # a float where an int goes
    ("lr = 1e-3", "lr = -0." + "0" * 5000 + "1"),  # out of range
    ("max_len   = 64", "max_len = " + "9" * 400 + "GiB"),  # a size
    ('plan "base"', 'plan "' + "a b" * 50_000 + '"'),  # a name with spaces
    ('checkpoint "model.layers.*"', 'checkpoint "' + "model.x" * 20_000 + '"'),  # a glob
    ('source "web"', 'source "' + "w" * 50_000 + '"'),
    ('"{ws}/tok"', '"' + "/tmp" * 900 + '"'),  # a path that does not exist
])
def test_huge_literals_are_elided_in_every_message(ws, edit):
    """Neither a diagnostic (its message, its source line) nor the summary echoes a huge literal."""
    old, new = edit
    text = base_plan(ws).replace(old.replace("{ws}", str(ws)), new, 1)
    _, path = _check_text(ws, text)
    rc, out, err = _cli(["check", str(path)])
    for line in (out + err).splitlines():
        assert len(line) <= 300, line[:200]
    assert len(out + err) < 10_000
    rc, out, _ = _cli(["check", str(path), "--json"])
    assert len(out) < 20_000


def test_elide():
    assert elide("short") == "short"
    assert elide("x" * 1000) == "x" * 40 + "... (1000 characters)"


# -- command-line numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [cmd, "PLAN", opt, v] for cmd in ("check", "explain", "compile") for opt in ("--world",)
    for v in ("0", "-1", "x", "2.5", "99999999999999999999")
] + [
    [cmd, "PLAN", "--gpus-per-node", v] for cmd in ("check", "explain") for v in ("0", "-8", "eight")
] + [
    [cmd, "PLAN", f"--device-memory={v}"] for cmd in ("check", "explain")
    for v in ("garbage", "0", "-5GiB", "1e999", "nan", "80gib", "", "99999999999999999999999TiB")
] + [
    ["verify", "PLAN", opt, v] for opt, vals in (("--max-procs", ("0", "-2", "x")), ("--steps", ("0", "1.5")),
                                                 ("--tolerance", ("0", "nan", "-1", "inf")),
                                                 ("--timeout", ("-1", "0", "x"))) for v in vals
])
def test_every_numeric_option_is_a_usage_error(ws, argv):
    argv = [str(ws / "p.veo") if a == "PLAN" else a for a in argv]
    (ws / "p.veo").write_text(base_plan(ws))
    rc, out, err = _cli(argv)
    assert rc == 2 and "usage:" in err and "error: argument" in err, err


@pytest.mark.parametrize("value,expect", [("80GiB", 80 * 2**30), ("80 GiB", 80 * 2**30), ("1.5TiB", 3 * 2**39),
                                          ("1000", 1000), ("4.35MB", 4_350_000)])
def test_device_memory_sizes(value, expect):
    from planc.args import size

    assert size(value) == expect


def test_compile_and_explain_report_unwritable_outputs(ws, tmp_path):
    (ws / "p.veo").write_text(base_plan(ws))
    rc, _, err = _cli(["compile", str(ws / "p.veo"), "-o", str(tmp_path)])
    assert rc == 2 and "cannot write" in err
    rc, _, err = _cli(["explain", str(ws / "p.veo"), "--svg", str(ws / "afile" / "x.svg")])
    assert rc == 2 and "cannot write" in err


# -- one mistake, one diagnostic --------------------------------------------------------------------

def _key_cases():
    """(block, where, key) for every key the schema knows: block keys, options of enum values,
    statement bodies, source keys."""
    for spec in S.BLOCKS.values():
        for key in spec.keys.values():
            yield spec.name, None, key
            for choice, opts in (key.options or {}).items():
                for opt in opts.values():
                    yield spec.name, (key.name, choice), opt
        for st in spec.stmts.values():
            for key in (st.body or {}).values():
                yield spec.name, (st.name, None), key


def _bad_values(key: S.Key):
    wrong = {"str": "5", "path": "5", "bool": "5", "enum": "5", "list": "5"}.get(key.type, '"x"')
    yield "type", wrong
    if key.type == "list":  # a range on a list is on its items
        low = key.min - 1 if key.min is not None else None
        high = getattr(key, "below", None) if getattr(key, "below", None) is not None else (
            key.max + 1 if key.max is not None else None)
        for bad in (low, high):
            if bad is not None:  # one bad item, the others fine (one mistake, one diagnostic)
                yield "range", "[" + ", ".join([str(bad)] + [str(key.min or 0)] * ((key.length or 1) - 1)) + "]"
        return
    if key.min is not None:
        yield "range", str(int(key.min) - 1) if key.type in ("int", "degree", "size") else str(key.min - 1)
    if key.max is not None and key.max < 2**63 - 1:  # past a plan's largest number the parser answers
        yield "range", str(int(key.max) + 1) if key.type in ("int", "degree", "size") else str(key.max + 1)


_CASES = [(b, w, k, kind, v) for b, w, k in _key_cases() for kind, v in _bad_values(k)]


@pytest.mark.parametrize("block,where,key,kind,value", _CASES,
                         ids=[f"{b}.{w[0] + '.' if w else ''}{k.name}-{kind}" for b, w, k, kind, _ in _CASES])
def test_one_bad_value_one_diagnostic(ws, block, where, key, kind, value):
    plan = F._valid(ws)
    target = plan.setdefault(block, {})
    if where is None:
        target[key.name] = value
    elif where[0] == "source":  # a data source, or a validation source copied from it
        target.setdefault("sources", {"web": dict(plan["data"]["sources"]["web"])})["web"][key.name] = value
    elif where[1] is None:  # a statement body: mixed_precision { param = ... }
        target[where[0]] = f"{{ {key.name} = {value} }}"
    else:  # an option of an enum value: optimizer = adamw { lr = ... } (with the others it needs)
        opts = S.BLOCKS[block].keys[where[0]].options[where[1]]
        others = "".join(f"  {o.name} = 4096" for o in opts.values() if o.required and o is not key)
        target[where[0]] = f"{where[1]} {{ {key.name} = {value}{others} }}"
    text = F._render("base", plan)
    checked, _ = _check_text(ws, text)
    errors = _errors(checked)
    assert [d.rule for d in errors] == [kind], [(d.rule, d.message) for d in errors]


@pytest.mark.parametrize("edit,rule", [
    (("steps = 10", "stpes = 10"), "unknown-key"),  # a required key misspelled
    (("steps = 10", "steps 10"), "unknown-statement"),  # `=` forgotten
    (("steps = 10", "steps = 0"), "range"),  # a required key refused
    (("train {", "trian {"), "unknown-block"),  # a required block misspelled
    (('plan "base"', 'plna "base"'), "unknown-block"),
    (('path = "', 'pth = "'), "unknown-key"),  # a required source key misspelled
    (("pack      = greedy", "pack = dynamic { tokns = 4096 }"), "unknown-key"),  # a required option misspelled
    (("pack      = greedy", "pack = dynamic { tokens 4096 }"), "unknown-key"),
    (('text = "text"', 'text = "text"  weight = 0'), "range"),  # refused by the data check: nothing read
    (('text = "text"', 'text = "text"  weight = -1'), "range"),
])
def test_one_mistake_one_diagnostic(ws, edit, rule):
    old, new = edit
    text = base_plan(ws)
    assert old in text
    checked, _ = _check_text(ws, text.replace(old, new, 1))
    errors = _errors(checked)
    assert [d.rule for d in errors] == [rule], [(d.rule, d.message) for d in checked.diagnostics]
    warnings = [d for d in checked.diagnostics if d.severity == "warning"]
    assert not warnings, [(d.rule, d.message) for d in warnings]


# -- found by the fuzzer (tests/fuzzkit.py) -----------------------------------------------------------

@pytest.mark.parametrize("mesh,world,rule", [("dp_shard = 2  tp = auto", 15, "mesh-product"),
                                             ("dp_shard = auto  tp = 4", 6, "mesh-product"),
                                             (f"dp_shard = {2**40}  ep = 3", None, "ep-divides"),
                                             ("dp_shard = 2", 2**31 - 1, "mesh-product")])
def test_mesh_messages_for_odd_degrees(ws, mesh, world, rule):
    """An `auto` degree that cannot be derived, and degrees or worlds too large to list divisors of
    one by one, get their mesh diagnostic (not a KeyError, not a loop to 2**40)."""
    text = base_plan(ws).replace("dp_shard = 2", mesh)
    _, path = _check_text(ws, text)
    rc, _, err = _cli(["check", str(path)] + (["--world", str(world)] if world else []))
    assert rc == 2 and f"error[{rule}]" in err, err


@pytest.mark.parametrize("src", ['p; lan "base"\n', 'parallelize { fsdp "a"; checkpoint "b" }\n',
                                 'parallelize {\n  fsdp "a"; x = 1\n  tp colwise "q"; tp rowwise "o"  # c\n}\n'])
def test_fmt_keeps_statements_that_share_a_line_apart(src):
    once = format_source(src)
    assert F.shape(parse(once)) == F.shape(parse(src)) and format_source(once) == once


def test_compile_refuses_an_output_name_that_is_not_text(ws, tmp_path):
    (ws / "p.veo").write_text(base_plan(ws))
    rc, _, err = _cli(["compile", str(ws / "p.veo"), "-o", str(tmp_path / "\udcff.py"), "--skip-files"])
    assert rc == 2 and "not UTF-8" in err


def test_verify_keep_that_cannot_be_a_directory(ws, monkeypatch):
    import planc.verify as V

    monkeypatch.setattr(V, "_run", lambda *a, **k: pytest.fail("verify ran"))
    (ws / "p.veo").write_text(base_plan(ws))
    for keep in (ws / "afile" / "x", ws / ("k" * 300)):
        rc, _, err = _cli(["verify", str(ws / "p.veo"), "--keep", str(keep), "--data", "demo"])
        assert rc == 2 and "--keep" in err


def test_a_world_too_large_to_estimate_still_composes(ws):
    from planc.estimate import WORLD_MAX

    text = base_plan(ws).replace("dp_shard = 2", f"dp_shard = {WORLD_MAX * 2}").replace(
        "global_batch = 8", f"global_batch = {WORLD_MAX * 8}")
    _, path = _check_text(ws, text)
    rc, out, _ = _cli(["check", str(path), "--skip-files"])
    assert rc == 0 and "estimate unavailable" in out
    rc, _, err = _cli(["check", str(path), "--skip-files", "--device-memory", "80GiB"])
    assert rc == 2 and "error[memory-budget]: not checked" in err
    rc, _, err = _cli(["explain", str(path)])
    assert rc == 2 and "lays out one by one" in err


def test_files_that_never_end_are_not_read(ws, tmp_path):
    """A plan, a data file or a tokenizer file that is a device (/dev/zero) is refused, not read."""
    rc, _, err = _cli(["check", "/dev/zero"])
    assert rc == 2 and "error[plan-file]" in err and "larger than" in err
    text = base_plan(ws).replace(f'"{ws}/data.jsonl"', '"/dev/zero"')
    checked, _ = _check_text(ws, text)
    assert [(d.rule, "not a regular file" in d.message) for d in _errors(checked)] == [("data-source", True)]
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    os.symlink("/dev/zero", tok / "tokenizer.json")
    checked, _ = _check_text(ws, base_plan(ws).replace(f'"{ws}/tok"', json.dumps(str(tok))))
    assert [(d.rule, "not a regular file" in d.message) for d in _errors(checked)] == [("tokenizer", True)]
