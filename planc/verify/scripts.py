"""The scripts `planc verify` runs, all rendered from the plan's own IR with only settings changed:
the layout script (the compiled one), the one-process reference (every parallel step removed),
the FSDP2-alone baseline (--baseline); the setting changes of a short CPU run on the shrunk model;
and the command-line overrides that run the same scripts in another dtype or output directory."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from runtime.vocab import CUDA_ATTENTIONS

from ..ir import ScriptIR, SettingLine
from ..layout import DIMS, Layout
from ..lower import derive
from ..steps import PARALLEL

MAX_LEN = 64  # row length of verify runs (rounded up to what sequence sharding needs)
PLAN_DTYPE_ON_CPU = "fp32"  # the plan's bf16/fp16 runs as fp32 here (~18x faster on this CPU)
DTYPE_KEYS = ("model.dtype", "train.param_dtype", "train.reduce_dtype")


class PlanInvalid(Exception):
    """The plan (or a requested layout) cannot be verified: exit 2."""


def with_settings(ir: ScriptIR, changes: dict, drop=()) -> ScriptIR:
    """A copy of `ir` with some setting values changed (marked `planc verify`) and some dropped."""
    missing = set(changes) - {s.key for s in ir.settings}
    if missing:
        raise KeyError(f"planc verify changes settings the script does not have: {sorted(missing)}")
    lines = [SettingLine(s.key, changes[s.key], "planc verify") if s.key in changes else s
             for s in ir.settings if s.key not in drop]
    return derive(dataclasses.replace(ir, settings=lines))


def layout_ir(ir: ScriptIR) -> ScriptIR:
    """The plan's script as compiled, less `compile` steps (~40 s per process on a CPU, and no
    change to the layout's numerics)."""
    steps = [s for s in ir.steps if s.kind != "compile"]
    return derive(dataclasses.replace(ir, steps=steps, out_path="layout.py"))


def reference_ir(ir: ScriptIR) -> ScriptIR:
    """The same script for one process with every parallel step removed and no mesh degrees."""
    steps = [s for s in ir.steps if s.kind not in PARALLEL | {"compile"}]
    dropped = {s.key for s in ir.settings if s.key.startswith("mesh.") and s.key != "mesh.device"}
    dropped |= {"train.param_dtype", "train.reduce_dtype"}  # FSDP's mixed precision: no FSDP here
    out = with_settings(ir, {}, drop=dropped)
    return derive(dataclasses.replace(
        out, steps=steps, mesh={}, tp_loss=False, tp_sequence=False, world=1, out_path="reference.py",
        description=f"{ir.description}; planc verify's one-process reference (no parallel steps)"))


def baseline_ir(ir: ScriptIR) -> ScriptIR:
    """FSDP2 alone (the plan's fsdp rules, no tp/ep/sp steps): the speed baseline of --baseline."""
    if not any(s.kind == "fsdp" for s in ir.steps):
        raise PlanInvalid("--baseline needs an `fsdp` rule in the plan")
    steps = [s for s in ir.steps if s.kind not in {"tp", "ep", "sp", "compile"}]
    dropped = {s.key for s in ir.settings if s.key.startswith("mesh.")
               and s.key not in ("mesh.device", "mesh.dp_replicate", "mesh.dp_shard")}
    out = with_settings(ir, {}, drop=dropped)
    return derive(dataclasses.replace(out, steps=steps, tp_loss=False, tp_sequence=False, out_path="baseline.py",
                                      mesh={k: v for k, v in ir.mesh.items() if k in ("dp_replicate", "dp_shard")}))


def check_layout(d: Layout, ir: ScriptIR, max_procs: int) -> None:
    """Refuse a layout the plan's script cannot run correctly (PlanInvalid)."""
    kinds = {s.kind for s in ir.steps}
    name = d.text()
    if d.world > max_procs:
        raise PlanInvalid(f"layout {name} needs {d.world} processes, more than --max-procs {max_procs}")
    for dim in ("tp", "sp", "ep"):
        if getattr(d, dim) > 1 and dim not in kinds:
            raise PlanInvalid(f"layout {name}: {dim}={getattr(d, dim)} but the plan has no `{dim}` rule")
        if getattr(d, dim) != 1 and dim not in ir.mesh:
            raise PlanInvalid(f"layout {name}: the plan's script has no mesh.{dim} setting to change")
    if d.problem():
        raise PlanInvalid(f"layout {name}: {d.problem()}")
    if d.dp * d.sp > 1 and not kinds & {"fsdp", "replicate"}:
        raise PlanInvalid(f"layout {name}: data-parallel and sp ranks need an `fsdp` or `replicate` rule "
                          f"to reduce their gradients")


def run_changes(ir: ScriptIR, plan, layouts: list[Layout], steps: int) -> tuple[dict, list[str]]:
    """Setting changes for a short CPU run (in the plan's dtype on CPU) with one global batch for
    every layout; and lines that say what was changed."""
    keys = {s.key for s in ir.settings}
    dynamic = plan["data.pack"] == "dynamic"
    seq = math.lcm(*(d.sp * d.tp for d in layouts))
    if plan["train.objective"] == "block_diffusion":  # rows stay whole diffusion blocks
        seq = math.lcm(seq, plan["train.block"])
    max_len = -(-min(plan["data.max_len"], MAX_LEN) // seq) * seq
    micro = 1 if dynamic else min(plan["train.micro_batch"], 2)
    dps = math.lcm(*(d.dp for d in layouts))
    global_batch = micro * math.lcm(dps, 2) * 2  # at least two micro-batches per rank: accumulation runs
    c = {"model.weights": None, "mesh.device": "cpu", "data.max_len": max_len, "train.steps": steps,
         "train.global_batch": global_batch, "train.micro_batch": micro, "train.warmup": 0,
         "train.log_every": 1, **dict.fromkeys(DTYPE_KEYS, PLAN_DTYPE_ON_CPU)}
    if plan["model.attention"] in CUDA_ATTENTIONS:
        c["model.attention"] = "sdpa"  # flash_attention_2 needs CUDA
    if dynamic:
        c["data.tokens"], c["data.warmup_steps"] = 2 * max_len, 0
    if ir.checkpoint:  # an export the plan asks for is made and checked too
        c.update({"checkpoint.every": steps, "checkpoint.keep": 1,
                  "checkpoint.export": "hf" if plan["checkpoint.export"] == "hf" else "none"})
    rows = f"micro-batches of up to {2 * max_len} tokens" if dynamic else f"rows of {max_len} tokens"
    notes = [f"cpu, {steps} steps, global batch {global_batch} {rows}, micro-batch {micro}, warmup 0 "
             f"(the plan's lr {plan['train.lr']:g} from step 1)"]
    if "model.attention" in c:
        notes.append(f"attention {plan['model.attention']} runs as sdpa here (it needs CUDA)")
    if any(s.kind == "compile" for s in ir.steps):
        notes.append("`compile` rules are left out (~40 s per process on CPU; they do not change the layout)")
    return {k: v for k, v in c.items() if k in keys}, notes


def dtype_note(plan) -> str:
    """What the plan-dtype runs are, in words."""
    if plan["model.dtype"] != PLAN_DTYPE_ON_CPU or plan["train.param_dtype"] != PLAN_DTYPE_ON_CPU:
        return (f"the plan's {plan['model.dtype']}/{plan['train.param_dtype']} run as fp32 on cpu "
                f"(this CPU's bf16 is ~18x slower)")
    return "fp32, the plan's dtype"


def dtype_args(ir: ScriptIR, dtype: str) -> list[str]:
    """Command-line overrides that run a script rendered for the plan's dtype in `dtype` instead.
    In fp64 every kernel takes its torch path (Triton kernels take no fp64)."""
    if dtype == PLAN_DTYPE_ON_CPU:
        return []
    keys = {s.key for s in ir.settings}
    out = [a for k in DTYPE_KEYS if k in keys for a in (f"--{k}", dtype)]
    return out + [a for key in ir.kernels.values() if key in keys for a in (f"--{key}", "torch")]


def per_run(ir: ScriptIR, run_dir: Path) -> ScriptIR:
    """Point a script's outputs (metrics, checkpoints) into `run_dir`."""
    keys = {s.key for s in ir.settings}
    c = {"train.output": str(run_dir)}
    if "checkpoint.dir" in keys:
        c["checkpoint.dir"] = str(run_dir / "checkpoints")
    return with_settings(ir, c)


def outputs(ir: ScriptIR, run_dir: Path) -> list[str]:
    """The same as command-line overrides, for a script that serves several runs."""
    args = ["--train.output", str(run_dir)]
    return args + (["--checkpoint.dir", str(run_dir / "checkpoints")] if ir.checkpoint else [])


def mesh_args(ir: ScriptIR, d: Layout) -> list[str]:
    """--mesh.X overrides that run the layout script in layout `d`."""
    return [a for k in DIMS if k in ir.mesh for a in (f"--mesh.{k}", str(getattr(d, k)))]
