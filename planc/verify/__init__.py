"""`planc verify PLAN`: prove a plan's numerics on this CPU before it meets a cluster.

1. The plan is checked and lowered as `planc compile` does; its script is rendered from that IR with
   only setting values changed (shrunk model, local data, cpu, a few steps, a temp output).
2. Its model is shrunk (runtime.parallel.shrink: same family, 2 layers, small sizes that keep every
   divisibility rule of the layouts run; a trusted model directory's own modeling code goes with
   it) and its data is local: the plan's own sources when they are on this machine (single JSON
   Lines files cut to their first records), else the demo corpus.
3. The layout runs on gloo processes: the plan's own, or the largest sub-layout that fits
   --max-procs (data-parallel degrees shrink first; tp/sp/ep are kept while they fit).
4. One plain process trains the same global batches with a reference script rendered from the same
   IR with every parallel step removed (no TP/EP/Ulysses/FSDP/replication code runs in it).
5. Every layout and the reference run in two dtypes (--dtype both, the default):
   - fp64, the verdict: a layout computes the same sums as one process in another order, and in
     fp64 those orders agree to ~1e-15, so any difference above --tolerance (1e-9) is a layout
     error. (Kernels take their torch paths in fp64: Triton kernels take no fp64. What transformers
     itself computes in fp32 - RMSNorm statistics, the MoE router's softmax and load-balancing
     loss - stays fp32: the same rounding in every layout.)
   - the plan's dtype (fp32 on this CPU), reported beside it against --plan-tolerance (1e-5). In
     fp32 a last-bit difference can grow: Adam normalises each gradient entry, so an entry that is
     mostly rounding moves its weight by a learning-rate-sized step either way, and an MoE router
     near-tie can pick another expert. When fp32 is above its tolerance but fp64 agrees, the report
     says so: a last-bit effect, not a layout error.
   --dtype fp64 runs the verdict alone; --dtype plan runs only the plan's dtype and judges it
   against --plan-tolerance (the behaviour before fp64 runs existed).
6. Per-step losses and gradient norms are compared side by side. Exit 0 when the verdict dtype is
   within its tolerance in every layout, 1 when not (or when a run fails: the failing rank's log is
   shown), 2 when the plan or the options are invalid.
7. When the plan exports (`export = hf`), each layout's export is loaded with `from_pretrained` on
   one process and must equal, bit for bit, the weights of that layout's last DCP checkpoint.

Every run gets the same pinned environment (planc/launch.py PINNED: one OpenMP and MKL thread,
torch's deterministic algorithms), forced whatever the caller's shell says; the report prints it.

Modules: scripts (the IR variants and setting changes), data (the shrunk model and local data),
runs (launching and comparing), export (the HF export check), report (output and JSON).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..layout import Layout
from .scripts import PlanInvalid

__all__ = ["DTYPE_MODES", "PlanInvalid", "VerifyOptions", "verify"]

DTYPE_MODES = {"both": ["fp64", "fp32"], "fp64": ["fp64"], "plan": ["fp32"]}


@dataclass(frozen=True)
class VerifyOptions:
    """What `planc verify` is asked to do (planc/cli.py builds it from the command line)."""
    plan: str
    max_procs: int = 4
    layouts: tuple[str, ...] = ()  # "dp_shard=2,tp=2", ...; empty: the plan's own (or a sub-layout)
    steps: int = 5
    dtype: str = "both"  # a key of DTYPE_MODES
    tolerance: float = 1e-9  # the fp64 verdict's
    plan_tolerance: float = 1e-5  # the plan dtype's (fp32 on CPU)
    data: str = "auto"  # auto | plan | demo
    demo_data: str = "data/demo"
    baseline: bool = False
    keep: str | None = None
    json: str | None = None
    timeout: float = 900


def verify(opts: VerifyOptions) -> int:
    """The command (see the module docstring); raises PlanInvalid for exit 2."""
    from ..diagnostics import render
    from ..frontend import check_file
    from ..lower import lower
    from .data import own_data_local

    if opts.max_procs < 1 or opts.steps < 1 or not (opts.tolerance > 0 and opts.plan_tolerance > 0):
        raise PlanInvalid("--max-procs and --steps must be >= 1 and the tolerances > 0")
    if opts.dtype not in DTYPE_MODES:
        raise PlanInvalid(f"--dtype must be one of {', '.join(DTYPE_MODES)}, not {opts.dtype!r}")
    checked = check_file(opts.plan, skip_files=True)  # data may live on the cluster: verify brings its own
    if checked.ok and opts.data != "demo" and own_data_local(checked.plan):
        checked = check_file(opts.plan)  # the plan's own data will be read: its file rules apply too
    if not checked.ok:
        for d in checked.diagnostics:
            if d.severity == "error":
                print(render(d, checked.source), file=sys.stderr)
                print(file=sys.stderr)
        print(f"{opts.plan}: the plan does not compose; nothing to verify", file=sys.stderr)
        return 2
    plan, own = checked.plan, Layout.from_degrees(checked.ctx.degrees)
    epochs = _steps_for_epochs(plan, opts.steps)
    ir = lower(checked, f"generated/{plan.name}.py")
    layouts, notes = choose_layouts(opts, ir, own)
    if epochs:
        notes.append(f"the plan trains {epochs} epoch(s); verified runs take --steps {opts.steps} steps instead")

    try:
        work = Path(opts.keep).resolve() if opts.keep else Path(tempfile.mkdtemp(prefix=f"planc-verify-{plan.name}-"))
        if opts.keep and work.exists() and any(work.iterdir()):
            raise PlanInvalid(f"--keep {opts.keep}: the directory is not empty")
        work.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:  # --keep names a file, a place that cannot be written, ...
        from ..paths import reason

        raise PlanInvalid(f"--keep {opts.keep}: {reason(e)}" if opts.keep else f"no temporary directory: {reason(e)}") from None
    try:
        return _run(opts, ir, plan, own, layouts, notes, work)
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)


def _steps_for_epochs(plan, steps: int):
    """An epochs plan is verified as a steps plan: the run is --steps optimizer steps on verify's own
    short data either way, and the script then has no whole-epoch count to make first. Returns the
    plan's epochs (None for a steps plan)."""
    from ..plan import Setting

    epochs = plan.settings.get("train.epochs")
    if epochs is None or epochs.value is None:
        return None
    plan.settings["train.steps"] = Setting(steps, epochs.span, epochs.line_span)
    plan.settings["train.epochs"] = Setting(None)
    return epochs.value


def choose_layouts(opts: VerifyOptions, ir, own: Layout) -> tuple[list[Layout], list[str]]:
    """The --layout list, else the plan's own layout or its preferred sub-layout; and what was chosen."""
    from .scripts import check_layout

    if opts.layouts:
        layouts = []
        for text in opts.layouts:
            try:
                layouts.append(Layout.parse(text))
            except ValueError as e:
                raise PlanInvalid(f"--layout {e}") from None
        for d in layouts:
            check_layout(d, ir, opts.max_procs)
        return layouts, []
    d = own.sub_layout(opts.max_procs)
    if d is None:
        raise PlanInvalid(f"no sub-layout of {own.text()} fits {opts.max_procs} processes")
    check_layout(d, ir, opts.max_procs)
    if d == own:
        return [d], []
    changed = ", ".join(f"{k} {v} -> {getattr(d, k)}" for k, v in own.degrees().items() if v != getattr(d, k))
    lost = [k for k in ("tp", "sp", "ep") if getattr(own, k) > 1 and getattr(d, k) == 1]
    return [d], [f"the plan's layout {own.text()} needs {own.world} processes, more than --max-procs "
                  f"{opts.max_procs}: running the sub-layout {d.text()} instead ({changed}; "
                  + (f"{', '.join(lost)} could not be kept)" if lost else "every kind of model parallelism kept)")]


def _run(opts: VerifyOptions, ir, plan, own: Layout, layouts: list[Layout], notes: list[str], work: Path) -> int:
    from runtime.data import load_tokenizer

    from ..emit import render_script
    from . import report
    from .data import data_changes, shrink_model, vl_data_changes
    from .runs import Batch, judge, run_all
    from .scripts import baseline_ir, dtype_note, layout_ir, per_run, reference_ir, run_changes, with_settings

    if ir.modality == "vl":
        dchanges, dnotes = vl_data_changes(plan, opts.data, work)
    else:
        dchanges, dnotes = data_changes(plan, opts.data, opts.demo_data, work)
    vocab = len(load_tokenizer(dchanges["data.tokenizer"]))
    trust = bool(plan["model.trust_remote_code"])
    _, summary = shrink_model(plan["model.config"], layouts, vocab, work / "model", trust)
    rchanges, rnotes = run_changes(ir, plan, layouts, opts.steps)
    base = with_settings(ir, {**dchanges, **rchanges, "model.config": str(work / "model")})
    dtypes = DTYPE_MODES[opts.dtype]
    verdict = dtypes[0]
    tolerances = {"fp64": opts.tolerance, "fp32": opts.plan_tolerance}
    tolerances = {k: v for k, v in tolerances.items() if k in dtypes}
    what = {"fp64": "fp64", "fp32": dtype_note(plan)}
    dlines = [f"{what[d]}: {'the verdict' if d == verdict else 'reported beside it'}, tolerance {tolerances[d]:g}"
              for d in dtypes]
    if "fp64" in dtypes and ir.kernels:
        dlines.append("in fp64 every kernel runs its torch path (Triton kernels take no fp64)")
    report.print_header(opts.plan, plan, ir.description, {"layout": notes, "model": [summary], "data": dnotes,
                                                          "run": rnotes, "dtypes": dlines}, work, bool(opts.keep))

    scripts = {"layout": layout_ir(base), "reference": reference_ir(base)}
    if opts.baseline:
        scripts["baseline"] = baseline_ir(base)
    paths = {}
    for name, sir in scripts.items():
        paths[name] = work / f"{name}.py"
        paths[name].write_text(render_script(per_run(sir, work / "runs" / name)))

    batch = Batch(irs=scripts, paths=paths, layouts=layouts, kinds={s.kind for s in ir.steps}, own=own,
                  dtypes=dtypes, speed_dtype=dtypes[-1], work=work, steps=opts.steps, timeout=opts.timeout,
                  baseline=opts.baseline, trust_remote_code=trust)
    run_all(batch)
    judge(batch, tolerances, verdict)
    ok = not batch.problems and all(e["ok"] for e in batch.results)
    if len(batch.refs) == len(dtypes) and all("losses" in r for r in batch.refs.values()):
        report.print_results(batch, tolerances, verdict)
    report.write_json(opts.json, plan, batch, ok, tolerances, verdict)
    report.print_verdict(plan, batch, ok, tolerances, verdict)
    return 0 if ok else 1
