"""`planc verify` proves block-diffusion plans beyond FSDP2: HSDP (dp_replicate 2 x dp_shard 2) and
FSDP2 x EP 2 on a Qwen3-MoE backbone (plans/diffusion-moe-ep.veo), through the generated script
against one process, under the fp64 verdict (one launch of `planc verify` serves both layouts);
and it fails a diffusion layout whose noise is numbered by the local row instead of the global one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from runtime.metrics import read_metrics
from tests.launch import REPO

PLAN = "plans/diffusion-moe-ep.veo"
LAYOUTS = {"dp_replicate=2 dp_shard=2": "HSDP", "dp_shard=2 ep=2": "FSDP2 x EP=2"}
STEPS = 2


def _verify(args, env=None):
    full = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "planc", "verify", *map(str, args)], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=900)


def _demo(demo_assets):
    from planc.demo_diffusion import make_diffusion_demo

    make_diffusion_demo(demo_assets["dir"])  # the demo tokenizer plus <|mask|>, which verify's demo data uses
    return ["--data", "demo", "--demo-data", demo_assets["dir"]]


@pytest.fixture(scope="module")
def moe_run(demo_assets, tmp_path_factory):
    """One `planc verify` of the MoE diffusion plan on both layouts (fp64, 2 steps): (process, report, kept dir)."""
    tmp = tmp_path_factory.mktemp("diffusion_verify")
    report, keep = tmp / "report.json", tmp / "keep"
    layouts = [a for text in LAYOUTS for a in ("--layout", text.replace(" ", ","))]
    r = _verify([PLAN, *layouts, "--dtype", "fp64", "--steps", STEPS, *_demo(demo_assets), "--json", report,
                 "--keep", keep])
    return r, (json.loads(report.read_text()) if report.exists() else None), keep


@pytest.mark.multiproc
def test_hsdp_and_fsdp_ep_diffusion_train_like_one_process(moe_run):
    r, report, _ = moe_run
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    assert "OK: diffusion-moe-ep" in r.stdout and "(fp64 verdict, tolerance 1e-09" in r.stdout
    assert report["ok"] and report["verdict_dtype"] == "fp64" and len(report["layouts"]) == len(LAYOUTS)
    for entry in report["layouts"]:
        text = " ".join(f"{k}={v}" for k, v in entry["layout"].items() if v != 1)
        assert entry["label"].startswith(LAYOUTS[text]), entry["label"]
        fp64 = entry["runs"]["fp64"]
        assert entry["ok"] and fp64["within"] and len(fp64["losses"]) == STEPS
        assert max(fp64["worst_loss_rel"], fp64["worst_grad_norm_rel"]) <= 1e-9, fp64
        assert not fp64["export"]["problems"], fp64["export"]  # the export holds the trained weights


@pytest.mark.multiproc
def test_the_runs_were_block_diffusion_with_experts_split(moe_run):
    """What was proven is the diffusion step under EP: the layout script noises the rows, applies EP,
    and every layout masked exactly the reference's tokens (same global rows, same seeds)."""
    r, report, keep = moe_run
    assert r.returncode == 0, r.stdout[-4000:]
    layout = (keep / "layout.py").read_text()
    assert "diffusion.noise_step(" in layout and "apply_ep(model" in layout
    assert "apply_ep" not in (keep / "reference.py").read_text()
    ref = read_metrics(keep / "runs" / "fp64" / "reference" / "metrics.jsonl")
    for entry in report["layouts"]:
        run = read_metrics(f"{entry['runs']['fp64']['run_dir']}/metrics.jsonl")
        assert [x["tokens"] for x in run] == [x["tokens"] for x in ref], entry["label"]
    assert all(x["tokens"] > 0 for x in ref)


LOCAL_ROWS = '''
    # In torchrun's workers only: every data-parallel rank numbers its rows from 0, as if it were
    # rank 0, so two ranks draw the same noise for different documents: a layout-only fault.
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import runtime.diffusion as _diffusion

        _step = _diffusion.noise_step

        def _noise_step(micro_batches, **kw):
            return _step(micro_batches, **{**kw, "dp_rank": 0})

        _diffusion.noise_step = _noise_step
'''


@pytest.mark.multiproc
@pytest.mark.slow
def test_verify_fails_a_diffusion_layout_with_local_noise(tmp_path, demo_assets):
    d = tmp_path / "patch"
    d.mkdir()
    (d / "sitecustomize.py").write_text(textwrap.dedent(LOCAL_ROWS))
    report = tmp_path / "report.json"
    r = _verify(["plans/diffusion-demo.veo", "--layout", "dp_shard=2", "--dtype", "fp64", "--steps", "1",
                 *_demo(demo_assets), "--json", report], env={"PYTHONPATH": str(d)})
    assert r.returncode == 1 and "FAILED" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    (entry,) = json.loads(report.read_text())["layouts"]
    fp64 = entry["runs"]["fp64"]
    assert not entry["ok"] and max(fp64["worst_loss_rel"], fp64["worst_grad_norm_rel"]) > 1e-6, fp64
