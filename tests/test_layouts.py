"""TP / Ulysses / EP layouts of the example plans, THROUGH their generated scripts: `planc verify`
runs each plan's script on gloo processes and a one-process reference script (rendered from the
same IR with every parallel step removed) on the same global batches, 5 steps, in fp64 and fp32.

One `planc verify` per plan; the layouts of a plan share its reference runs:
    qwen3-tp       TP=2 (2 procs), FSDP2 x TP=2 (4)      explicit colwise/rowwise/sequence/vocab/loss
    qwen3-ulysses  SP=2 (2), FSDP2 x SP=2 (4)            Ulysses attention over the sp ranks
    qwen3-moe-ep   EP=2 (2), FSDP4 x EP=2 (4)            experts by all-to-all, FSDP over the rest
    qwen3-3d       FSDP x SP=2 x TP=2 (4)                the plan wants 8 processes: verify's sub-layout
The verdict is fp64: every step's loss AND gradient norm must be within 1e-9 relative of one process
(a loss alone can miss a wrong gradient for a few steps). There the layouts' other summation orders
agree to ~1e-15 on any machine; in fp32 a last-bit difference can grow past 1e-5 (Adam on a gradient
entry that is mostly rounding: the EP layouts do on some CPUs), so the fp32 figures are only
checked to be reported, with a verdict word that says what they mean. Each layout's HF export must
load with from_pretrained on one process and equal, bit for bit, the weights of the layout's last
DCP checkpoint, in both dtypes. tests/test_verify.py shows that the same check fails on perturbed
layouts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launch import REPO
from planc.layout import DIMS, WORLD_DIMS

TOL = 1e-9  # fp64, the verdict
PLAN_TOL = 1e-5  # fp32, reported
STEPS = 5
pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

# plan -> [(layout id, --layout value or None for verify's own choice, expected degrees, processes)]
LAYOUTS = {
    "qwen3-tp": [("tp2", "dp_shard=1,tp=2", {"tp": 2}, 2),
                 ("fsdp2xtp2", "dp_shard=2,tp=2", {"dp_shard": 2, "tp": 2}, 4)],
    "qwen3-ulysses": [("sp2", "dp_shard=1,sp=2", {"sp": 2}, 2),
                      ("fsdp2xsp2", "dp_shard=2,sp=2", {"dp_shard": 2, "sp": 2}, 4)],
    "qwen3-moe-ep": [("ep2", "dp_shard=2,ep=2", {"dp_shard": 2, "ep": 2}, 2),
                     ("fsdp4xep2", "dp_shard=4,ep=2", {"dp_shard": 4, "ep": 2}, 4)],
    "qwen3-3d": [("fsdp_sp2xtp2", None, {"sp": 2, "tp": 2}, 4)],
}
CASES = [(plan, *case) for plan, cases in LAYOUTS.items() for case in cases]


def run_verify(plan: str, args, out_dir, env=None) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`planc verify plans/PLAN.veo ARGS --keep out_dir/keep --json out_dir/result.json`, from the
    checkout, as a user would run it; returns the process and the JSON (None if not written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "result.json"
    cmd = [sys.executable, "-m", "planc", "verify", f"plans/{plan}.veo", "--steps", str(STEPS), "--dtype", "both",
           "--tolerance", str(TOL), "--plan-tolerance", str(PLAN_TOL), "--keep", str(out_dir / "keep"),
           "--json", str(report), *map(str, args)]
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900)
    (out_dir / "verify.log").write_text(proc.stdout + proc.stderr)
    return proc, json.loads(report.read_text()) if report.exists() else None


@pytest.fixture(scope="module")
def verified(tmp_path_factory, demo_assets):
    """plan -> (process, JSON report) of its one `planc verify`, run on first use."""
    cache = {}

    def get(plan):
        if plan not in cache:
            layouts = [a for _, layout, _, _ in LAYOUTS[plan] if layout for a in ("--layout", layout)]
            cache[plan] = run_verify(plan, [*layouts, "--data", "demo", "--demo-data", demo_assets["dir"]],
                                     tmp_path_factory.mktemp(plan))
        return cache[plan]

    return get


@pytest.mark.parametrize("plan,name,layout,expect,nproc", CASES, ids=[c[1] for c in CASES])
def test_layout_matches_one_process(verified, plan, name, layout, expect, nproc):
    proc, report = verified(plan)
    assert report is not None, f"planc verify wrote no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert report["verdict_dtype"] == "fp64" and report["dtypes"] == ["fp64", "fp32"]
    assert report["tolerances"] == {"fp64": TOL, "fp32": PLAN_TOL}
    assert report["pinned"]["OMP_NUM_THREADS"] == "1" and report["pinned"]["PLANC_DETERMINISTIC"] == "1"
    runs = {json.dumps(r["layout"], sort_keys=True): r for r in report["layouts"]}
    degrees = dict(dict.fromkeys(DIMS, 1), **expect)
    r = runs.get(json.dumps(degrees, sort_keys=True))
    assert r is not None, f"{degrees} was not run; ran {list(runs)}\n{proc.stdout}"
    assert r["world"] == nproc and r.get("ok") is not None, r
    fp64, fp32 = r["runs"]["fp64"], r["runs"]["fp32"]
    for dtype, run in r["runs"].items():
        ref = report["reference"][dtype]
        assert len(run["losses"]) == len(ref["losses"]) == STEPS
        assert ref["losses"][-1] < ref["losses"][0]  # the weights moved: later steps compare trained models
        # the layout's HF export loads with from_pretrained on one process and holds its trained weights
        assert run["export"]["problems"] == [] and run["export"]["tensors"] > 0, (dtype, run["export"])
    # the verdict: fp64 agrees with one process to far below the tolerance
    assert fp64["worst_loss_rel"] <= TOL and fp64["worst_grad_norm_rel"] <= TOL, proc.stdout
    assert r["ok"] and proc.returncode == 0, proc.stdout + proc.stderr
    # fp32 is reported beside it: its figures, and whether they are within the fp32 tolerance, said
    # plainly as a last-bit effect when they are not (fp64 agrees)
    within = max(fp32["worst_loss_rel"], fp32["worst_grad_norm_rel"]) <= PLAN_TOL
    assert fp32["within"] == within and fp32["last_bit"] == (not within)
    shown = f"worst relative difference in fp32: loss {fp32['worst_loss_rel']:.1e}, grad norm " \
            f"{fp32['worst_grad_norm_rel']:.1e} (tolerance {PLAN_TOL:g}): "
    assert shown + ("within it" if within else "above it, but fp64 agrees to") in proc.stdout, proc.stdout
    assert fp32["worst_loss_rel"] < 1e-3 and fp32["worst_grad_norm_rel"] < 1e-3  # fp32 still trains alike
    # The layout ran on the mesh asked for (rank 0 logs it at start-up).
    rank0 = next((r_dir for r_dir in (REPO / fp64["run_dir"]).rglob("attempt_0/0/stdout.log")), None)
    assert rank0 is not None
    mesh = {k: degrees[k] for k in WORLD_DIMS}
    assert f"world {nproc} (gloo), mesh {mesh}" in rank0.read_text()


def test_3d_plan_says_it_runs_a_sub_layout(verified):
    proc, _ = verified("qwen3-3d")
    assert ("the plan's layout dp_shard=2 sp=2 tp=2 needs 8 processes, more than --max-procs 4: "
            "running the sub-layout sp=2 tp=2") in proc.stdout, proc.stdout
