"""Everything that reaches the generated text is inert: an output path from the command line that
would end the docstring, a line break or a quote in it, and any plan string, come out as data."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from tests.planfix import base_plan, make_workspace

REPO = Path(__file__).resolve().parents[1]
HOSTILE = ['x"""\nimport os; os.system("touch PWNED")\n"""', "a\vb.py", "it's.py", 'say "hi".py', "back\\slash.py",
           "new\nline.py", "\u2028sep.py", "tab\t.py", "#comment.py", "{brace}.py"]


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("paths"))
    path = ws / "p.veo"
    path.write_text(base_plan(ws))
    out = check_file(str(path))
    assert out.ok
    return out


def _code(text: str) -> str:
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.value = None
    return ast.dump(tree)


@pytest.mark.parametrize("out", HOSTILE)
def test_output_path_is_inert(checked, out):
    plain = render_script(lower(checked, "generated/base.py"))
    text = render_script(lower(checked, out))
    assert _code(text) == _code(plain)  # the same code, whatever the path
    tree = ast.parse(text)
    prog = next(k.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                for k in n.keywords if k.arg == "prog")
    assert prog == out  # the script names itself exactly, as a string


def test_compile_cli_with_a_hostile_path(checked, tmp_path):
    out = tmp_path / 'evil"""; import os #.py'
    r = subprocess.run([sys.executable, "-m", "planc", "compile", checked.plan.file, "-o", str(out)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert _code(text) == _code(render_script(lower(checked, "generated/base.py")))
    assert "import os" not in ast.get_docstring(ast.parse(text))
