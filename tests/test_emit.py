"""`planc compile`: the committed scripts match, output is deterministic, plan strings stay literals."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planc.emit import py, render_script
from planc.frontend import check_file
from planc.lower import lower
from tests.planfix import base_plan, make_workspace

REPO = Path(__file__).resolve().parents[1]
PLANS = sorted((REPO / "plans").glob("*.veo"))


def _script(plan: Path, out: str) -> str:
    checked = check_file(str(plan.relative_to(REPO)), skip_files=True)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics if d.severity == "error"]
    return render_script(lower(checked, out))


@pytest.mark.parametrize("plan", PLANS, ids=[p.stem for p in PLANS])
def test_generated_matches_plans(plan, monkeypatch):
    """generated/<name>.py is exactly what `planc compile` writes now (drift fails here)."""
    monkeypatch.chdir(REPO)
    checked = check_file(str(plan.relative_to(REPO)), skip_files=True)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics if d.severity == "error"]
    out = f"generated/{checked.plan.name}.py"
    text = render_script(lower(checked, out))
    committed = (REPO / out).read_text()
    assert committed == text, f"{out} drifted from {plan.name}: run `planc compile {plan.relative_to(REPO)}`"


def test_compile_is_deterministic_and_short(monkeypatch):
    monkeypatch.chdir(REPO)
    a = _script(REPO / "plans/demo.veo", "generated/demo.py")
    b = _script(REPO / "plans/demo.veo", "generated/demo.py")
    assert a == b
    assert len(a.splitlines()) <= 250
    assert "tp" not in {n.id for n in ast.walk(ast.parse(a)) if isinstance(n, ast.Name)}  # no dead TP code


def test_sections_point_at_plan_lines(monkeypatch):
    monkeypatch.chdir(REPO)
    text = _script(REPO / "plans/demo.veo", "generated/demo.py")
    plan_lines = (REPO / "plans/demo.veo").read_text().split("\n")
    import re

    refs = re.findall(r"demo\.veo:(\d+)", text)
    assert len(refs) > 20
    for ref in refs:
        assert plan_lines[int(ref) - 1].strip(), f"comment points at an empty plan line {ref}"
    order = [text.index(s) for s in ("dist.init(", "build_meta(", "apply_activation_checkpointing(", "apply_fsdp(",
                                     "materialize(", "build_optimizer(", "build_loader(", "resolve_resume(",
                                     "for step in range", "export_hf(", "dist.finish()")]
    assert order == sorted(order)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.text(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                       st.none(), st.lists(st.text(max_size=5), max_size=3)))
def test_py_literals_round_trip(value):
    assert ast.literal_eval(py(value)) == value


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("emit"))


# NUL and lone surrogates are refused where the plan is parsed (tests/test_robust.py)
_hostile = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1,
                   max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(s=_hostile)
def test_plan_strings_stay_strings(ws, s):
    """Any string a plan may hold (a source's text field here) comes out as that exact string literal."""
    import json

    text = base_plan(ws).replace('text = "text"', f"text = {json.dumps(s)}")
    (ws / "data.jsonl").write_text(json.dumps({s: "w4 w5", "text": "w4"}) + "\n")
    path = ws / "hostile.veo"
    path.write_text(text, encoding="utf-8")
    checked = check_file(str(path))
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    script = render_script(lower(checked, "generated/base.py"))
    tree = ast.parse(script)
    settings_dict = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "SETTINGS")
    values = dict(zip([ast.literal_eval(k) for k in settings_dict.keys], [ast.literal_eval(v) for v in settings_dict.values]))
    assert values["data.web.text"] == s


def test_injection_in_a_path_is_inert(ws, tmp_path):
    evil = 'x"); import os; os.system("touch PWNED") #'
    d = ws / evil
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text((ws / "llama" / "config.json").read_text())
    text = base_plan(ws).replace(f'"{ws}/llama"', __import__("json").dumps(str(d)))
    path = ws / "evil.veo"
    path.write_text(text)
    checked = check_file(str(path))
    assert checked.ok, [(dg.rule, dg.message) for dg in checked.diagnostics]
    script = render_script(lower(checked, "generated/base.py"))
    tree = ast.parse(script)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "system"]
    assert not calls and str(d) in script.replace("\\\\", "\\") or repr(str(d)) in script


def test_compile_cli_writes_and_refuses(ws, tmp_path):
    good = ws / "good.veo"
    good.write_text(base_plan(ws))
    out = tmp_path / "x.py"
    r = subprocess.run([sys.executable, "-m", "planc", "compile", str(good), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ast.parse(out.read_text())
    bad = ws / "bad.veo"
    bad.write_text(base_plan(ws).replace("global_batch = 8", "global_batch = 7"))
    out2 = tmp_path / "y.py"
    r = subprocess.run([sys.executable, "-m", "planc", "compile", str(bad), "-o", str(out2)], capture_output=True, text=True)
    assert r.returncode == 2 and "error[batch-divisible]" in r.stderr and not out2.exists()
