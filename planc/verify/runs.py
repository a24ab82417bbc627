"""Running `planc verify`'s scripts and comparing them: for each dtype, the one-process reference
and every layout (and, with --baseline, FSDP2 alone), through planc.launch; then per-step
relative differences of loss and gradient norm, judged against the dtype's tolerance."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import launch
from ..ir import ScriptIR
from ..layout import Layout
from .export import check_export
from .scripts import dtype_args, mesh_args, outputs


@dataclass
class Batch:
    """What one `planc verify` runs: the scripts, the layouts, the dtypes, where it writes."""
    irs: dict[str, ScriptIR]  # layout / reference / baseline -> its IR (for the override lists)
    paths: dict[str, Path]  # the same -> the rendered script
    layouts: list[Layout]
    kinds: set[str]  # the plan's parallelize step kinds (for descriptions)
    own: Layout  # the plan's own layout
    dtypes: list[str]  # fp64 and/or fp32, in the order they run
    speed_dtype: str  # the dtype whose tokens/s are reported (and in which --baseline runs)
    work: Path
    steps: int
    timeout: float
    baseline: bool = False
    trust_remote_code: bool = False  # the plan's: its model directory's own code loads the exports
    results: list[dict] = field(default_factory=list)  # one entry per layout (see `run_all`)
    refs: dict[str, dict] = field(default_factory=dict)  # dtype -> the reference run
    problems: list[str] = field(default_factory=list)


def label(d: Layout, kinds) -> str:
    return f"{d.describe(kinds)} ({d.text()}) on {d.world} process{'es' * (d.world > 1)}"


def run_all(b: Batch) -> None:
    """Every run of the batch, dtype by dtype. The reference runs beside the first layout (one
    process; a launch mostly waits), except with --baseline: then every run has the machine to
    itself, since speeds are compared."""
    b.results = [{"layout": d.degrees(), "label": label(d, b.kinds), "world": d.world, "runs": {}}
                 for d in b.layouts]
    for dtype in b.dtypes:
        ref_dir = b.work / "runs" / dtype / "reference"
        ref = b.irs["reference"]
        proc = launch.start_single(b.paths["reference"], outputs(ref, ref_dir) + dtype_args(ref, dtype), ref_dir)
        try:
            if b.baseline:
                launch.wait(proc, b.timeout)
            for d, entry in zip(b.layouts, b.results):
                entry["runs"][dtype] = _run_layout(b, d, dtype)
            rc = launch.wait(proc, b.timeout)
        finally:
            launch.stop(proc)
        b.refs[dtype] = {"run_dir": str(ref_dir), "exit": rc}
        if rc != 0:
            log = (ref_dir / "python.log").read_text(errors="replace")[-4000:]
            print(f"\nFAILED: the one-process reference ({dtype}) exited with {rc}:\n{log}")
            b.problems.append(f"the one-process reference ({dtype}) failed (exit {rc})")
            return
        b.refs[dtype].update(read_run(ref_dir, b.steps))


def _run_layout(b: Batch, d: Layout, dtype: str) -> dict:
    tag = d.text().replace(" ", "_").replace("=", "")
    run_dir = b.work / "runs" / dtype / f"layout_{tag}"
    ir = b.irs["layout"]
    args = mesh_args(ir, d) + outputs(ir, run_dir) + dtype_args(ir, dtype)
    own = " — the plan's own layout" if d == b.own else ""
    print(f"\n[{dtype}] layout {label(d, b.kinds)}{own}", flush=True)
    print(f"  torchrun --standalone --nproc-per-node {d.world} {b.paths['layout']} {' '.join(args)}")
    t0 = time.perf_counter()
    rc, logs = launch.run_torchrun(b.paths["layout"], d.world, args, run_dir / "logs", timeout=b.timeout)
    if logs != run_dir / "logs":
        print("  the launcher lost its port to another process; launched again", flush=True)
    print(f"  finished in {time.perf_counter() - t0:.0f} s (exit {rc})", flush=True)
    run = {"run_dir": str(run_dir), "exit": rc}
    if rc != 0:
        print(f"  FAILED: the layout run exited with {rc}; the failing rank's log:\n" + launch.failure_log(logs))
        b.problems.append(f"the {label(d, b.kinds)} run ({dtype}) failed (exit {rc})")
        return run
    run.update(read_run(run_dir, b.steps))
    if (run_dir / "checkpoints" / "hf").is_dir():
        run["export"] = check_export(run_dir, b.trust_remote_code)
    if b.baseline and dtype == b.speed_dtype:
        run["baseline_tokens_per_s"] = _baseline(b, d.world, dtype)
    return run


def _baseline(b: Batch, world: int, dtype: str) -> float | None:
    """tokens/s of FSDP2 alone on `world` processes (run once per process count)."""
    bdir = b.work / "runs" / dtype / f"baseline_{world}"
    if not (bdir / "metrics.jsonl").exists():
        ir = b.irs["baseline"]
        args = ["--mesh.dp_replicate", "1", "--mesh.dp_shard", str(world), *outputs(ir, bdir), *dtype_args(ir, dtype)]
        rc, logs = launch.run_torchrun(b.paths["baseline"], world, args, bdir / "logs", timeout=b.timeout)
        if rc != 0:
            print(f"  FAILED: the FSDP2 baseline run exited with {rc}:\n" + launch.failure_log(logs))
            b.problems.append(f"the FSDP2 baseline on {world} processes failed (exit {rc})")
            (bdir / "metrics.jsonl").unlink(missing_ok=True)  # a partial run is no baseline
            return None
    return read_run(bdir, b.steps)["tokens_per_s"]


def read_run(run_dir: Path, steps: int) -> dict:
    from runtime.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.exists() else []
    if [r["step"] for r in records] != list(range(1, steps + 1)):
        raise RuntimeError(f"{path}: expected steps 1..{steps}, found {[r['step'] for r in records]}")
    speeds = [r["tokens_per_s"] for r in records[1:] if r.get("tokens_per_s")] or \
             [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    return {"losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records],
            "tokens_per_s": statistics.median(speeds) if speeds else None}


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b else math.inf


def compare(run: dict, ref: dict) -> dict:
    """Per-step relative differences of loss and gradient norm, and the worst of each."""
    loss = [_rel(a, b) for a, b in zip(run["losses"], ref["losses"])]
    norm = [_rel(a, b) for a, b in zip(run["grad_norms"], ref["grad_norms"])]
    bad = [x for x in loss + norm if not math.isfinite(x)]
    return {"loss_rel": loss, "grad_norm_rel": norm, "worst_loss_rel": max(loss) if not bad else math.inf,
            "worst_grad_norm_rel": max(norm) if not bad else math.inf}


def judge(b: Batch, tolerances: dict[str, float], verdict: str) -> None:
    """Compare every layout run with the reference of its dtype; an entry is ok when its `verdict`
    dtype run is within that dtype's tolerance and every export it made holds its weights."""
    for entry in b.results:
        ok = True
        for dtype, run in entry["runs"].items():
            if "losses" not in run or "losses" not in b.refs.get(dtype, {}):
                ok = ok and dtype != verdict
                continue
            run.update(compare(run, b.refs[dtype]))
            run["within"] = max(run["worst_loss_rel"], run["worst_grad_norm_rel"]) <= tolerances[dtype]
            if run.get("export", {}).get("problems"):
                ok = False
                b.problems.append(f"the HF export of {entry['label']} ({dtype}) does not hold its trained weights")
        v = entry["runs"].get(verdict, {})
        entry["ok"] = ok and v.get("within", False)
        if "within" in v and not v["within"]:
            b.problems.append(f"{entry['label']} does not train like one process in {verdict}")
        for dtype, run in entry["runs"].items():  # beyond its tolerance, but the verdict agrees
            if dtype != verdict and "within" in run:
                run["last_bit"] = not run["within"] and v.get("within", False)
