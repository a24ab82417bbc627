"""The IR's set-up statements are the one description of parallelize: the generated script renders
them and `planc check --dry-run` executes them. For every plan in plans/ and a plan per step kind,
the calls the dry run makes are exactly the calls of the script's set-up; and a `replicate` plan
with dp_replicate = 2 (which the dry run once passed while its script refused to start) runs."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from planc.dryrun import execute, fake_world, namespace
from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from planc.steps import STEPS
from tests.planfix import base_plan, make_workspace

REPO = Path(__file__).resolve().parents[1]
PLANS = sorted((REPO / "plans").glob("*.veo"))

# a plan per step kind the example plans do not use (edits of tests/planfix.py's base plan)
KINDS = {
    "replicate": [("dp_shard = 2", "dp_replicate = 2"), ('fsdp       "model.layers.*"  reshard_after_forward', "replicate")],
    "compile": [('checkpoint "model.layers.*"', 'checkpoint "model.layers.*"\n  compile "model.layers.*.mlp"')],
    "replicate_tp": [("dp_shard = 2", "dp_replicate = 2  tp = 2"),
                     ('fsdp       "model.layers.*"  reshard_after_forward', "replicate\n  tp plan = model")],
    "two_fsdp_rules": [('fsdp       "model.layers.*"  reshard_after_forward',
                        'fsdp "model.layers.*"  reshard_after_forward\n  fsdp "model.embed_tokens"  reshard_after_forward')],
    "freeze_and_lr": [("  steps = 10  global_batch = 8  micro_batch = 2\n",
                       '  steps = 10  global_batch = 8  micro_batch = 2\n  freeze "model.layers.0"\n'
                       '  lr "model.layers.1" scale = 0.5\n')],
    "lora": [("  steps = 10  global_batch = 8  micro_batch = 2\n",
              '  steps = 10  global_batch = 8  micro_batch = 2\n  lora "model.layers.*.self_attn.{q,v}_proj"  rank = 4\n')],
    "lora_ep": [("/llama", "/moe"), ("dp_shard = 2", "dp_shard = 2  ep = 2"),
                ('checkpoint "model.layers.*"', 'ep "model.layers.*.mlp.experts"'),
                ("  steps = 10", '  lora "model.layers.*.self_attn.q_proj"\n  steps = 10')],
    "offload": [('checkpoint "model.layers.*"', 'checkpoint "model.layers.*"\n  offload "model.layers.*"')],
    "ep_two_rules": [("/llama", "/moe"), ("dp_shard = 2", "dp_shard = 2  ep = 2"),
                     ('checkpoint "model.layers.*"', 'ep "model.layers.0.mlp.experts"\n  ep "model.layers.1.mlp.experts"')],
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("steps"))


def _plan(ws, name: str) -> Path:
    text = base_plan(ws)
    for old, new in KINDS[name]:
        assert old in text, (name, old)
        text = text.replace(old, new, 1)
    path = ws / f"{name}.veo"
    path.write_text(text)
    return path


def _script_calls(text: str) -> list[str]:
    """The calls of the script's set-up, innermost first (the order they run): from the mesh to
    the optimizer, without the logging and materialising around them."""
    tree = ast.parse(text)
    body = tree.body
    first = next(i for i, n in enumerate(body) if "build_mesh" in ast.unparse(n))
    last = next(i for i, n in enumerate(body) if ast.unparse(n).startswith("optimizer = "))
    skip = ("metrics.Metrics(", "log.info(f'plan ", "models.materialize(", "lora.materialize(", "torch.manual_seed(")
    calls: list[str] = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.JoinedStr):  # a log message's f-string is not a step
                visit(child)
        if isinstance(node, ast.Call):
            calls.append(ast.unparse(node))

    for node in body[first:last + 1]:
        if not any(s in ast.unparse(node) for s in skip):
            visit(node)
    return calls


def _dry_run_calls(checked) -> list[str]:
    import torch

    from runtime import dist as rdist

    ir = lower(checked, f"generated/{checked.plan.name}.py")
    calls: list[str] = []
    with fake_world(0, checked.ctx.world):
        info = rdist.DistInfo(0, checked.ctx.world, 0, torch.device("cpu"), "fake")
        execute(ir, namespace(ir, info, []), calls)
    return [ast.unparse(ast.parse(c)) for c in calls]


def _cases(ws):
    return [(p.stem, p) for p in PLANS] + [(k, _plan(ws, k)) for k in KINDS]


def test_dry_run_calls_are_the_scripts(ws, monkeypatch):
    monkeypatch.chdir(REPO)
    kinds = set()
    for name, path in _cases(ws):
        checked = check_file(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path), skip_files=True)
        assert checked.ok, (name, [(d.rule, d.message) for d in checked.diagnostics if d.severity == "error"])
        ir = lower(checked, f"generated/{checked.plan.name}.py")
        kinds |= {s.kind for s in ir.steps}
        script = _script_calls(render_script(ir))
        ran = _dry_run_calls(checked)
        assert ran == script, f"{name}: the dry run and the script disagree\n{ran}\n{script}"
    assert kinds == set(STEPS), f"step kinds without a plan here: {set(STEPS) - kinds}"


def test_unknown_step_kind_is_an_error(ws):
    from planc.steps import build_steps

    checked = check_file(str(_plan(ws, "compile")))
    checked.plan.rules[0].kind = "pipeline"
    with pytest.raises(ValueError, match="no parallelize step"):
        build_steps(checked.plan, "x.veo", checked.ctx.matches)


def test_rules_of_one_kind_become_one_call(ws):
    """Two fsdp rules wrap the root once; two ep rules dispatch every experts module in one call
    (the runtime refuses partial coverage)."""
    for name, fn in (("two_fsdp_rules", "apply_fsdp"), ("ep_two_rules", "apply_ep")):
        checked = check_file(str(_plan(ws, name)))
        assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
        text = render_script(lower(checked, "generated/x.py"))
        assert text.count(f"{fn}(") == 1, (name, text)


@pytest.mark.multiproc
def test_replicate_plan_runs_like_one_process(ws, tmp_path, demo_assets):
    """DDP over dp_replicate = 2 (the replication mesh is the flat data-parallel one) trains like
    one process, through `planc verify` and the plan's generated script."""
    path = _plan(ws, "replicate")
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "planc", "verify", str(path), "--steps", "3", "--data", "demo",
                           "--demo-data", demo_assets["dir"], "--json", str(report)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = json.loads(report.read_text())["layouts"]
    assert [r["layout"]["dp_replicate"] for r in runs] == [2] and all(r["ok"] for r in runs)
