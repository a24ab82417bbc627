"""`planc verify`: sub-layout choice, the reference script, refusals (exit 2), the failing rank's
log, and (one launch) that it FAILS, exit 1, when the layout run is numerically wrong."""
from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planc.cli import main
from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from planc.verify import (DIMS, PlanInvalid, baseline_ir, check_layout, failure_log, layout_ir, parse_layout,
                          reference_ir, sub_layout, world_of)

REPO = Path(__file__).resolve().parents[1]
PARALLEL_CALLS = {"apply_tp", "apply_ep", "shard_experts", "ep_meshes", "apply_ulysses", "slice_for_sp",
                  "loss_context", "apply_fsdp", "apply_replicate", "tp_rules_from_config", "block_causal_mask"}


def _ir(plan: str):
    checked = check_file(str(REPO / "plans" / f"{plan}.veo"), skip_files=True)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics if d.severity == "error"]
    return checked, lower(checked, f"generated/{plan}.py")


def _degrees(**kw):
    return dict(dict.fromkeys(DIMS, 1), **kw)


def _names(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)}


# --- sub-layouts -------------------------------------------------------------------------------

@pytest.mark.parametrize("plan,max_procs,expect", [
    ("llama3-70b", 4, dict(dp_shard=2, tp=2)),      # HSDP x TP=8 on 256: dp shrinks first, tp kept
    ("qwen3-moe", 4, dict(dp_shard=4, ep=2)),       # ep kept AND experts still FSDP-sharded (4/2)
    ("long-context", 4, dict(dp_shard=2, sp=2)),
    ("qwen3-3d", 4, dict(sp=2, tp=2)),              # both model dims beat keeping dp_shard
    ("qwen3-tp", 4, dict(dp_shard=2, tp=2)),        # fits: the plan's own layout
    ("qwen3-tp", 2, dict(tp=2)),
    ("qwen3-moe-ep", 2, dict(dp_shard=2, ep=2)),
])
def test_sub_layout_of_the_plans(plan, max_procs, expect):
    checked, _ = _ir(plan)
    assert sub_layout(checked.ctx.degrees, max_procs) == _degrees(**expect)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({k: st.sampled_from([1, 2, 3, 4, 8]) for k in DIMS}), st.integers(1, 16))
def test_sub_layout_properties(plan, max_procs):
    if (plan["dp_shard"] * plan["sp"]) % plan["ep"]:
        plan["ep"] = 1
    d = sub_layout(plan, max_procs)
    if world_of(plan) <= max_procs:
        assert d == plan
    assert d is not None  # all ones always fits
    assert world_of(d) <= max_procs
    assert all(plan[k] % d[k] == 0 for k in DIMS)
    assert (d["dp_shard"] * d["sp"]) % d["ep"] == 0
    # model parallelism goes last: when the smallest tp or sp step fits, some model dim is kept
    smallest = [min(x for x in range(2, plan[k] + 1) if plan[k] % x == 0) for k in ("tp", "sp") if plan[k] > 1]
    if smallest and min(smallest) <= max_procs:
        assert d["tp"] > 1 or d["sp"] > 1 or d["ep"] > 1


def test_parse_layout():
    assert parse_layout("dp_shard=2,tp=2") == _degrees(dp_shard=2, tp=2)
    assert parse_layout("sp=2 tp=2") == _degrees(sp=2, tp=2)
    for bad in ("tp", "pp=2", "tp=two", "tp=0"):
        with pytest.raises(PlanInvalid):
            parse_layout(bad)


def test_check_layout_refusals():
    _, ir = _ir("qwen3-ulysses")
    with pytest.raises(PlanInvalid, match="no `tp` rule"):
        check_layout(_degrees(dp_shard=2, tp=2), ir, 4)
    with pytest.raises(PlanInvalid, match="more than --max-procs 4"):
        check_layout(_degrees(dp_shard=4, sp=2), ir, 4)
    _, ir = _ir("qwen3-moe-ep")
    with pytest.raises(PlanInvalid, match="must divide dp_shard"):
        check_layout(_degrees(dp_shard=1, ep=2), ir, 4)
    check_layout(_degrees(dp_shard=2, ep=2), ir, 4)


# --- the scripts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("plan", ["qwen3-tp", "qwen3-ulysses", "qwen3-3d", "qwen3-moe-ep", "demo"])
def test_reference_has_no_parallel_code_and_layout_is_the_compiled_script(plan):
    _, ir = _ir(plan)
    ref = render_script(reference_ir(ir))
    assert not _names(ref) & PARALLEL_CALLS, sorted(_names(ref) & PARALLEL_CALLS)
    assert "mesh.dp_shard" not in ref and "dist.build_mesh(info)" in ref
    # The layout script is `planc compile`'s own code: only the docstring's and prog's file name differ.
    compiled = render_script(ir).split("\ncfg = config.load(")[1].split("\n", 1)[1]
    layout = render_script(layout_ir(ir)).split("\ncfg = config.load(")[1].split("\n", 1)[1]
    assert layout == compiled


def test_baseline_is_fsdp_alone():
    _, ir = _ir("qwen3-3d")
    text = render_script(baseline_ir(ir))
    names = _names(text)
    assert "apply_fsdp" in names and not names & (PARALLEL_CALLS - {"apply_fsdp"})


def test_failure_log_shows_the_failing_rank(tmp_path):
    run = tmp_path / "logs"
    for rank, text in ((0, "step 1 ...\n"), (1, "Traceback (most recent call last):\nValueError: boom\n")):
        d = run / "abc_123" / "attempt_0" / str(rank)
        d.mkdir(parents=True)
        (d / "stderr.log").write_text(text)
    (run / "torchrun.log").write_text("Root Cause (first observed failure):\n[0]:\n  rank      : 1 (local_rank: 1)\n")
    shown = failure_log(run)
    assert "ValueError: boom" in shown and "step 1" not in shown


# --- the command -------------------------------------------------------------------------------

def _verify(args, env=None, timeout=600):
    import os

    full = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "planc", "verify", *map(str, args)], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=timeout)


def test_invalid_plan_exits_2(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.veo"
    bad.write_text((REPO / "plans/qwen3-tp.veo").read_text().replace("dp_shard = 2  tp = 2", "dp_shard = 1  tp = 3"))
    monkeypatch.chdir(REPO)
    assert main(["verify", str(bad)]) == 2
    assert "error[tp-divides]" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--layout", "dp_shard=4,tp=2"], "more than --max-procs 4"),
    (["--layout", "dp_shard=2,sp=2"], "no `sp` rule"),
    (["--max-procs", "0"], "argument --max-procs: must be between 1"),  # a usage error (planc/args.py)
])
def test_refused_layouts_exit_2(args, message, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(["verify", "plans/qwen3-tp.veo", "--keep", str(tmp_path / "k"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "k").exists()  # refused before anything was written


SITECUSTOMIZE = '''
    # Loaded by every Python process started with this directory on PYTHONPATH. In torchrun's
    # workers (WORLD_SIZE > 1) only, each rank normalises its loss by its OWN target count instead
    # of the step's global one: a real class of bug, which the one-process reference cannot have.
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import runtime.loss as _loss

        def _local_count(micro_batches, group=None):
            return sum(int((mb["labels"] != _loss.IGNORE).sum()) for mb in micro_batches)

        _loss.count_targets = _local_count
'''


@pytest.mark.multiproc
@pytest.mark.slow
def test_verify_fails_on_a_perturbed_layout(tmp_path, demo_assets):
    """The same command and tolerance as tests/test_layouts.py, on a layout made numerically wrong by
    a monkeypatch in the layout's processes only: exit 1, FAILED, and the differences shown."""
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    report = tmp_path / "result.json"
    r = _verify(["plans/qwen3-ulysses.veo", "--layout", "dp_shard=1,sp=2", "--steps", "2", "--data", "demo",
                 "--demo-data", demo_assets["dir"], "--json", report, "--keep", tmp_path / "keep"],
                env={"PYTHONPATH": str(patch)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stdout
    result = json.loads(report.read_text())
    (run,) = result["layouts"]
    assert not result["ok"] and not run["ok"]
    # each sp rank saw about half the targets, so the reported loss is about twice the reference's
    assert run["worst_loss_rel"] > 0.5 and math.isfinite(run["worst_loss_rel"]), run


# --- the export check ----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")
def test_check_export_catches_an_export_that_is_not_the_trained_model(tmp_path, tiny_llama):
    """`check_export` loads the export with from_pretrained and compares it with the run's last DCP
    checkpoint bit for bit: an export equal to it passes, one changed tensor or a lost one fails."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from planc.verify import check_export

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama))
    run = tmp_path / "run"
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(run / "checkpoints" / "step_3"))
    model.save_pretrained(run / "checkpoints" / "hf")
    good = check_export(run)
    assert good["problems"] == [] and good["checkpoint"] == "step_3" and good["tensors"] == len(model.state_dict())

    weights = run / "checkpoints" / "hf" / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1e-6  # one tensor off by a hair
    save_file(tensors, weights, metadata={"format": "pt"})
    assert check_export(run)["problems"] == ["model.norm.weight: differs from the checkpoint"]

    del tensors["model.norm.weight"]  # and one lost
    save_file(tensors, weights, metadata={"format": "pt"})
    problems = check_export(run)["problems"]
    assert any(p.startswith("missing") and "model.norm.weight" in p for p in problems), problems
