"""`planc check` never shows a traceback: mutated and random plans give diagnostics or a summary."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planc.diagnostics import render
from planc.frontend import check_file
from tests.planfix import base_plan, make_workspace

WS = None


def _ws(tmp_path_factory):
    global WS
    if WS is None:
        WS = make_workspace(tmp_path_factory.mktemp("fuzz"))
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
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if "\ud800" not in text else path.write_bytes(
        text.encode("utf-8", "replace"))
    checked = check_file(str(path), None)  # must not raise
    for d in checked.diagnostics:
        assert d.rule and d.message
        render(d, checked.source)  # must not raise either
    assert checked.ok or any(d.severity == "error" for d in checked.diagnostics)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_plans_never_raise(tmp_path_factory, data):
    ws = _ws(tmp_path_factory)
    text = data.draw(mutated(base_plan(ws)))
    _assert_clean(ws / "mut.veo", text)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(_TOKENS + list("abc xyz_.0123456789")), max_size=40))
def test_random_plans_never_raise(tmp_path_factory, parts):
    _assert_clean(_ws(tmp_path_factory) / "rand.veo", " ".join(parts))


@pytest.mark.parametrize("content", [b"", b"\xff\xfe garbage", b'plan "x"\nmesh { dp_shard = auto }\n', b"{{{{", b"plan"])
def test_cli_has_no_traceback(tmp_path, content):
    p = tmp_path / "bad.veo"
    p.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "planc", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "error[" in r.stderr
