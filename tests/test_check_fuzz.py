"""planc answers every input with diagnostics or a result: never a traceback, never an internal
error (exit 3). Hypothesis draws plan bytes (random, and valid plans broken: truncated, bytes
flipped, unicode and escapes put in, huge numbers, deep nesting, other line ends), plan structure
(the grammar's shapes with the schema's keys, statements and values, and now and then others), and
command lines of every command (tests/fuzzkit.py). The budget here is seconds; PLANC_FUZZ_SCALE=N
multiplies it, and `python -m tests.fuzzkit --minutes 30` runs all of it for as long as asked."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planc.diagnostics import render
from planc.fmt import format_source
from planc.frontend import check_file
from planc.parse import parse
from tests import fuzzkit as F
from tests.planfix import base_plan

SCALE = float(os.environ.get("PLANC_FUZZ_SCALE", "1"))
WS = None


def budget(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


def _ws(tmp_path_factory):
    global WS
    if WS is None:
        WS = F.workspace(tmp_path_factory.mktemp("fuzz"))
    return WS


_TOKENS = ["{", "}", "[", "]", "=", '"', "#", "\n", "auto", "true", "0", "-1", "1e400", "99999999999999999999",
           "tp", "sp", "ep", "fsdp", '"**"', '"{a,b}"', "dynamic { tokens = 1 }", "plan", "mesh", "\\", "\x00",
           "é", "80GiB", "[1, [2]]", "source \"s\" { path = \"/\" }", ";"]


@st.composite
def mutated(draw, base: str):
    text = base
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            text = text[:i] + draw(st.sampled_from(_TOKENS)) + text[i:]
        elif op == "delete":
            j = draw(st.integers(i, min(len(text), i + 20)))
            text = text[:i] + text[j:]
        else:
            j = draw(st.integers(i, min(len(text), i + 6)))
            text = text[:i] + draw(st.text(max_size=6)) + text[j:]
    return text


def _assert_clean(path, text):
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    checked = check_file(str(path), None)  # must not raise
    for d in checked.diagnostics:
        assert d.rule and d.message
        render(d, checked.source).encode("utf-8")  # must not raise either, and holds no lone surrogate
    assert checked.ok or any(d.severity == "error" for d in checked.diagnostics)


@budget(120)
@given(data=st.data())
def test_mutated_plans_never_raise(tmp_path_factory, data):
    ws = _ws(tmp_path_factory)
    text = data.draw(mutated(base_plan(ws)))
    _assert_clean(ws / "mut.veo", text)


@budget(80)
@given(parts=st.lists(st.sampled_from(_TOKENS + list("abc xyz_.0123456789")), max_size=40))
def test_random_plans_never_raise(tmp_path_factory, parts):
    _assert_clean(_ws(tmp_path_factory) / "rand.veo", " ".join(parts))


@budget(60)
@given(data=st.data(), ascii_terminal=st.booleans())
def test_plan_bytes_get_an_answer(tmp_path_factory, data, ascii_terminal):
    """Any bytes as a plan: `planc check` exits 0 or 2 (on an ASCII terminal too), and a plan that
    parses formats to a plan that parses, which formatting leaves alone."""
    ws = _ws(tmp_path_factory)
    raw = data.draw(F.plan_bytes(base_plan(ws)))
    path = ws / "bytes.veo"
    path.write_bytes(raw)
    F.assert_answers(["check", str(path)], encoding="ascii" if ascii_terminal else "utf-8")
    F._fmt_property(raw, parse, format_source)


@budget(30)
@given(data=st.data(), world=st.one_of(st.none(), st.integers(1, 16)))
def test_plan_structure_gets_an_answer(tmp_path_factory, data, world):
    """Plans in the grammar with the schema's keys and values: check answers; what it accepts also
    explains and compiles."""
    ws = _ws(tmp_path_factory)
    text = data.draw(F.plan_structure(ws))
    path = ws / "structure.veo"
    path.write_text(text, encoding="utf-8")
    scratch = ws / "scratch"
    scratch.mkdir(exist_ok=True)
    F.check_structure(path, world, scratch)


@budget(40)
@given(data=st.data())
def test_command_lines_get_an_answer(tmp_path_factory, data):
    """Every command with its options drawn wide: a usage error (exit 2), diagnostics or a result."""
    ws = _ws(tmp_path_factory)
    scratch = ws / "cli"
    scratch.mkdir(exist_ok=True)
    (scratch / "afile").write_text("x")
    argv = data.draw(F.command_line(F._plan_files(ws, scratch), scratch))
    F.fuzz_cli(argv, scratch)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe garbage", b'plan "x"\nmesh { dp_shard = auto }\n', b"{{{{", b"plan"])
def test_cli_has_no_traceback(tmp_path, content):
    p = tmp_path / "bad.veo"
    p.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "planc", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "error[" in r.stderr
