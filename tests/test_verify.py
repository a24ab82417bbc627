"""`planc verify`: sub-layout choice, the reference script, refusals (exit 2), the failing rank's
log, and that it FAILS, exit 1, under its fp64 verdict when a layout run is numerically wrong: a
loss normalised per rank (Ulysses), the MoE load-balancing loss averaged over the wrong group (EP),
and gradients reduced in fp32 when the plan says otherwise (FSDP2: ~7e-9, below what an fp32
comparison can tell from rounding)."""
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
from planc.launch import failure_log
from planc.layout import DIMS, Layout
from planc.lower import lower
from planc.verify import PlanInvalid
from planc.verify.scripts import baseline_ir, check_layout, layout_ir, reference_ir

REPO = Path(__file__).resolve().parents[1]
PARALLEL_CALLS = {"apply_tp", "apply_ep", "shard_experts", "ep_meshes", "apply_ulysses", "slice_for_sp",
                  "loss_context", "apply_fsdp", "apply_replicate", "tp_rules_from_config", "block_causal_mask"}


def _ir(plan: str):
    checked = check_file(str(REPO / "plans" / f"{plan}.veo"), skip_files=True)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics if d.severity == "error"]
    return checked, lower(checked, f"generated/{plan}.py")


def _degrees(**kw):
    return Layout(**kw)


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
    assert Layout.from_degrees(checked.ctx.degrees).sub_layout(max_procs) == _degrees(**expect)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({k: st.sampled_from([1, 2, 3, 4, 8]) for k in DIMS}), st.integers(1, 16))
def test_sub_layout_properties(degrees, max_procs):
    if (degrees["dp_shard"] * degrees["sp"]) % degrees["ep"]:
        degrees["ep"] = 1
    plan = Layout.from_degrees(degrees)
    d = plan.sub_layout(max_procs)
    if plan.world <= max_procs:
        assert d == plan
    assert d is not None  # all ones always fits
    assert d.world <= max_procs
    assert all(degrees[k] % v == 0 for k, v in d.degrees().items())
    assert d.fsdp % d.ep == 0 and d.problem() is None
    # model parallelism goes last: when the smallest tp or sp step fits, some model dim is kept
    smallest = [min(x for x in range(2, degrees[k] + 1) if degrees[k] % x == 0) for k in ("tp", "sp") if degrees[k] > 1]
    if smallest and min(smallest) <= max_procs:
        assert d.tp > 1 or d.sp > 1 or d.ep > 1


def test_parse_layout():
    assert Layout.parse("dp_shard=2,tp=2") == _degrees(dp_shard=2, tp=2)
    assert Layout.parse("sp=2 tp=2") == _degrees(sp=2, tp=2)
    assert Layout.parse(Layout(dp_replicate=2, dp_shard=4, ep=2).text()) == Layout(dp_replicate=2, dp_shard=4, ep=2)
    for bad in ("tp", "pp=2", "tp=two", "tp=0"):
        with pytest.raises(ValueError):
            Layout.parse(bad)


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


def _perturbed(tmp_path, patch: str, plan: str, layout: str, steps: int, demo_assets, *extra):
    """`planc verify` with `patch` as sitecustomize.py of every process it starts (it acts only in
    torchrun's workers, i.e. in the layout runs): (process, JSON report)."""
    d = tmp_path / "patch"
    d.mkdir()
    (d / "sitecustomize.py").write_text(textwrap.dedent(patch))
    report = tmp_path / "result.json"
    r = _verify([f"plans/{plan}.veo", "--layout", layout, "--steps", str(steps), "--data", "demo",
                 "--demo-data", demo_assets["dir"], "--json", report, "--keep", tmp_path / "keep", *extra],
                env={"PYTHONPATH": str(d)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stdout and "(fp64 verdict, tolerance 1e-09" in r.stdout, r.stdout
    result = json.loads(report.read_text())
    (run,) = result["layouts"]
    assert not result["ok"] and not run["ok"] and not run["runs"]["fp64"]["within"]
    return r, run


LOCAL_COUNT = '''
    # In torchrun's workers (WORLD_SIZE > 1) only, each rank normalises its loss by its OWN target
    # count instead of the step's global one: a real class of bug, which one process cannot have.
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
    _, run = _perturbed(tmp_path, LOCAL_COUNT, "qwen3-ulysses", "dp_shard=1,sp=2", 2, demo_assets, "--dtype", "fp64")
    # each sp rank saw about half the targets, so the reported loss is about twice the reference's
    fp64 = run["runs"]["fp64"]
    assert fp64["worst_loss_rel"] > 0.5 and math.isfinite(fp64["worst_loss_rel"]), run


AUX_LOSS_GROUP = '''
    # In torchrun's workers only: the loss mesh says its size is 1, so the MoE load-balancing loss,
    # which the script averages over the step's micro-batches on all dp x sp ranks, is not divided
    # by the rank count: the router's gradient is too large by that factor.
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import runtime.dist as _dist

        class _SizeOne:
            def __init__(self, mesh):
                self._mesh = mesh

            def size(self, *args):
                return 1

            def __getattr__(self, name):
                return getattr(self._mesh, name)

        _build = _dist.build_mesh

        def _build_mesh(*args, **kwargs):
            mesh = _build(*args, **kwargs)
            mesh.loss = _SizeOne(mesh.loss)
            return mesh

        _dist.build_mesh = _build_mesh
'''


@pytest.mark.multiproc
@pytest.mark.slow
def test_verify_fails_on_an_moe_layout_with_the_aux_loss_over_the_wrong_group(tmp_path, demo_assets):
    """An EP layout whose only fault is in the router's load-balancing loss (weight 0.001): the
    cross-entropy is right, so the loss barely moves, but the gradient norm shows it in fp64."""
    _, run = _perturbed(tmp_path, AUX_LOSS_GROUP, "qwen3-moe-ep", "dp_shard=2,ep=2", 2, demo_assets,
                        "--dtype", "fp64")
    fp64 = run["runs"]["fp64"]
    assert fp64["grad_norm_rel"][0] > 1e-7 and fp64["loss_rel"][0] < 1e-12, fp64  # step 1: same weights


REDUCE_FP32 = '''
    # In torchrun's workers only: FSDP reduces gradients in fp32 whatever the script asks for (a
    # mixed-precision setting lost on the way), so an fp64 layout run sums its gradients in fp32.
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        import runtime.parallel.fsdp as _fsdp

        _apply = _fsdp.apply_fsdp

        def _apply_fsdp(*args, **kwargs):
            kwargs["reduce_dtype"] = torch.float32
            return _apply(*args, **kwargs)

        _fsdp.apply_fsdp = _apply_fsdp
'''


@pytest.mark.multiproc
@pytest.mark.slow
def test_verify_fails_on_an_error_below_fp32_rounding(tmp_path, demo_assets):
    """Gradients reduced in fp32 in the fp64 runs: an error of ~7e-9, which no fp32 comparison can
    tell from its own rounding (its tolerance is 1e-5), fails the fp64 verdict."""
    r, run = _perturbed(tmp_path, REDUCE_FP32, "demo", "dp_shard=2", 3, demo_assets, "--dtype", "fp64")
    fp64 = run["runs"]["fp64"]
    worst = max(fp64["worst_loss_rel"], fp64["worst_grad_norm_rel"])
    assert 1e-9 < worst < 1e-5, r.stdout  # 6.8e-9 here (step 2)


# --- the export check ----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")
def test_check_export_catches_an_export_that_is_not_the_trained_model(tmp_path, tiny_llama):
    """`check_export` loads the export with from_pretrained and compares it with the run's last DCP
    checkpoint bit for bit: an export equal to it passes, one changed tensor or a lost one fails."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from planc.verify.export import check_export

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
