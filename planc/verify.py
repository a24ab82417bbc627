"""`planc verify PLAN`: prove a plan's numerics on this CPU before it meets a cluster.

1. The plan is checked and lowered as `planc compile` does; its script is rendered from that IR with
   only setting values changed (shrunk model, local data, fp32 on cpu, a few steps, a temp output).
2. Its model is shrunk (runtime.parallel.shrink: same family, 2 layers, small sizes that keep every
   divisibility rule of the layouts run) and its data is local: the plan's own sources when they are
   on this machine (single JSON Lines files cut to their first records), else the demo corpus.
3. The layout runs on gloo processes: the plan's own, or the largest sub-layout that fits
   --max-procs (data-parallel degrees shrink first; tp/sp/ep are kept while they fit).
4. One plain process trains the same global batches with a reference script rendered from the same
   IR with every parallel step removed (no TP/EP/Ulysses/FSDP/replication code runs in it).
5. Per-step losses and gradient norms are compared side by side. Exit 0 when the worst relative
   difference of both is within --tolerance, 1 when not (or when a run fails: the failing rank's
   log is shown), 2 when the plan is invalid.
6. When the plan exports (`export = hf`), each layout's export is loaded with `from_pretrained` on
   one process and must equal, bit for bit, the weights of that layout's last DCP checkpoint.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .ir import ScriptIR, SettingLine

DIMS = ("dp_replicate", "dp_shard", "sp", "tp", "ep")
MODEL_DIMS = ("tp", "sp", "ep")  # the dims that constrain the model's shapes
PARALLEL_STEPS = {"tp", "ep", "sp", "fsdp", "replicate"}
SLICE_BYTES = 256 * 1024  # a verify run reads a few thousand tokens; tokenising more only costs time
MAX_LEN = 64  # row length of verify runs (rounded up to what sequence sharding needs)
REPO = Path(__file__).resolve().parents[1]  # where `runtime` lives, for the launched scripts


class PlanInvalid(Exception):
    """The plan (or a requested layout) cannot be verified: exit 2."""


# --- layouts -------------------------------------------------------------------------------------

def world_of(d: dict) -> int:
    return d["dp_replicate"] * d["dp_shard"] * d["sp"] * d["tp"]


def describe(d: dict, kinds: set[str]) -> str:
    """'FSDP2 x TP=2' for a layout of a plan whose steps are `kinds`."""
    parts = []
    if "fsdp" in kinds and d["dp_replicate"] > 1:
        parts.append("HSDP")
    elif "fsdp" in kinds and d["dp_shard"] * d["sp"] > 1:  # FSDP shards over the sp ranks too
        parts.append("FSDP2")
    elif "replicate" in kinds and d["dp_replicate"] > 1:
        parts.append("DDP")
    parts += [f"{k.upper()}={d[k]}" for k in ("tp", "sp", "ep") if d[k] > 1]
    return " x ".join(parts) or "one process"


def layout_text(d: dict) -> str:
    shown = [f"{k}={d[k]}" for k in DIMS if d[k] != 1] or ["dp_shard=1"]
    return " ".join(shown)


def parse_layout(text: str) -> dict:
    """'dp_shard=2,tp=2' (or spaces) -> degrees of every dim (unnamed dims are 1)."""
    d = dict.fromkeys(DIMS, 1)
    for part in filter(None, re.split(r"[,\s]+", text.strip())):
        key, eq, value = part.partition("=")
        if not eq or key not in DIMS:
            raise PlanInvalid(f"--layout {text!r}: give degrees as DIM=N with DIM among {', '.join(DIMS)}")
        try:
            d[key] = int(value)
        except ValueError:
            raise PlanInvalid(f"--layout {text!r}: {key} must be an integer, got {value!r}") from None
        if d[key] < 1:
            raise PlanInvalid(f"--layout {text!r}: {key} must be >= 1")
    return d


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _ep_fsdp(d: dict) -> int:
    return d["dp_shard"] * d["sp"] // d["ep"]


def _preference(plan: dict, d: dict) -> tuple:
    """Higher is better: keep every kind of model parallelism the plan has (tp, sp, ep), then its
    kinds of data parallelism (dp_shard, dp_replicate, the experts' own FSDP), then more ranks,
    then larger model-parallel degrees, then dp_shard before dp_replicate."""
    kept_model = sum(plan[k] > 1 and d[k] > 1 for k in MODEL_DIMS)
    kept_dp = sum(plan[k] > 1 and d[k] > 1 for k in ("dp_shard", "dp_replicate"))
    kept_dp += plan["ep"] > 1 and _ep_fsdp(plan) > 1 and _ep_fsdp(d) > 1
    return kept_model, kept_dp, world_of(d), math.prod(d[k] for k in MODEL_DIMS), d["dp_shard"]


def sub_layout(plan: dict, max_procs: int) -> dict | None:
    """The plan's degrees if they fit `max_procs` processes, else the preferred sub-layout: each
    degree a divisor of the plan's, ep still dividing dp_shard * sp. None if nothing fits."""
    if world_of(plan) <= max_procs:
        return dict(plan)
    best, best_key = None, None
    for combo in itertools.product(*(_divisors(plan[k]) for k in DIMS)):
        d = dict(zip(DIMS, combo))
        if world_of(d) > max_procs or (d["dp_shard"] * d["sp"]) % d["ep"]:
            continue
        key = _preference(plan, d)
        if best_key is None or key > best_key:
            best, best_key = d, key
    return best


def check_layout(d: dict, ir: ScriptIR, max_procs: int) -> None:
    """Refuse a layout the plan's script cannot run correctly (PlanInvalid)."""
    kinds = {s.kind for s in ir.steps}
    name = layout_text(d)
    if world_of(d) > max_procs:
        raise PlanInvalid(f"layout {name} needs {world_of(d)} processes, more than --max-procs {max_procs}")
    for dim in MODEL_DIMS:
        if d[dim] > 1 and dim not in kinds:
            raise PlanInvalid(f"layout {name}: {dim}={d[dim]} but the plan has no `{dim}` rule")
        if d[dim] != 1 and dim not in ir.mesh:
            raise PlanInvalid(f"layout {name}: the plan's script has no mesh.{dim} setting to change")
    if (d["dp_shard"] * d["sp"]) % d["ep"]:
        raise PlanInvalid(f"layout {name}: ep={d['ep']} must divide dp_shard * sp = {d['dp_shard'] * d['sp']}")
    if d["dp_replicate"] * d["dp_shard"] * d["sp"] > 1 and not kinds & {"fsdp", "replicate"}:
        raise PlanInvalid(f"layout {name}: data-parallel and sp ranks need an `fsdp` or `replicate` rule "
                          f"to reduce their gradients")


# --- the scripts ---------------------------------------------------------------------------------

def with_settings(ir: ScriptIR, changes: dict, drop=()) -> ScriptIR:
    """A copy of `ir` with some setting values changed (marked `planc verify`) and some dropped."""
    missing = set(changes) - {s.key for s in ir.settings}
    if missing:
        raise KeyError(f"planc verify changes settings the script does not have: {sorted(missing)}")
    lines = [SettingLine(s.key, changes[s.key], "planc verify") if s.key in changes else s
             for s in ir.settings if s.key not in drop]
    return dataclasses.replace(ir, settings=lines)


def _features(steps, ir: ScriptIR) -> set[str]:
    return {s.kind for s in steps} | ({"kernels"} if ir.kernels else set())


def layout_ir(ir: ScriptIR) -> ScriptIR:
    """The plan's script as compiled, less `compile` steps (~40 s per process on a CPU, and no
    change to the layout's numerics)."""
    steps = [s for s in ir.steps if s.kind != "compile"]
    return dataclasses.replace(ir, steps=steps, features=_features(steps, ir), out_path="layout.py")


def reference_ir(ir: ScriptIR) -> ScriptIR:
    """The same script for one process with every parallel step removed and no mesh degrees."""
    steps = [s for s in ir.steps if s.kind not in PARALLEL_STEPS | {"compile"}]
    dropped = {s.key for s in ir.settings if s.key.startswith("mesh.") and s.key != "mesh.device"}
    dropped |= {"train.param_dtype", "train.reduce_dtype"}  # FSDP's mixed precision; fp32 here anyway
    out = with_settings(ir, {}, drop=dropped)
    return dataclasses.replace(
        out, steps=steps, features=_features(steps, ir), mesh={}, tp_loss=False, tp_sequence=False,
        world=1, out_path="reference.py",
        description=f"{ir.description}; planc verify's one-process reference (no parallel steps)")


def baseline_ir(ir: ScriptIR) -> ScriptIR:
    """FSDP2 alone (the plan's fsdp rules, no tp/ep/sp steps): the speed baseline of --baseline."""
    if not any(s.kind == "fsdp" for s in ir.steps):
        raise PlanInvalid("--baseline needs an `fsdp` rule in the plan")
    steps = [s for s in ir.steps if s.kind not in {"tp", "ep", "sp", "compile"}]
    dropped = {s.key for s in ir.settings if s.key.startswith("mesh.")
               and s.key not in ("mesh.device", "mesh.dp_replicate", "mesh.dp_shard")}
    out = with_settings(ir, {}, drop=dropped)
    return dataclasses.replace(out, steps=steps, features=_features(steps, ir), tp_loss=False,
                               tp_sequence=False, out_path="baseline.py",
                               mesh={k: v for k, v in ir.mesh.items() if k in ("dp_replicate", "dp_shard")})


# --- model and data ------------------------------------------------------------------------------

def shrink_model(config_path: str, layouts: list[dict], vocab: int, out: Path):
    """Write a shrunk copy of the plan's model config to `out`; returns (config, one-line summary).

    One model serves every layout (and the reference): it keeps the rules of the lcm of their
    tp, sp and ep degrees."""
    from runtime.parallel.shrink import shrink_config

    from .model_tree import ModelLoadError, load_config

    try:
        real = load_config(config_path)
    except ModelLoadError as e:
        raise PlanInvalid(f"model.config: {e}") from None
    need = {k: math.lcm(*(d[k] for d in layouts)) for k in MODEL_DIMS}
    try:
        small = shrink_config(real, vocab=vocab, **need)
    except ValueError as e:
        raise PlanInvalid(f"the model cannot be shrunk for {layout_text(dict(dict.fromkeys(DIMS, 1), **need))}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    small.save_pretrained(str(out))
    return small, _shrink_summary(real, small)


def _shrink_summary(real, small) -> str:
    parts, seen = [], set()
    for key, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden"),
                       ("num_attention_heads", "heads"), ("num_key_value_heads", "KV heads"),
                       ("head_dim", "head_dim"), ("intermediate_size", "intermediate"),
                       ("num_experts", "experts"), ("num_local_experts", "experts"),
                       ("n_routed_experts", "experts"), ("num_experts_per_tok", "top-k"),
                       ("moe_intermediate_size", "expert intermediate"), ("vocab_size", "vocab")):
        a, b = getattr(real, key, None), getattr(small, key, None)
        if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and label not in seen:
            seen.add(label)  # configs alias some keys (num_local_experts -> num_experts)
            parts.append(f"{label} {a} -> {b}" if a != b else f"{label} {b}")
    return f"{small.model_type}: " + ", ".join(parts)


def _slice_lines(src: Path, dst: Path, limit: int = SLICE_BYTES) -> Path:
    """The first whole lines of `src` up to `limit` bytes (at least one line)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(src, "rb") as f, open(dst, "wb") as g:
        for line in f:
            if size and size + len(line) > limit:
                break
            g.write(line)
            size += len(line)
    return dst


def _local(path) -> bool:
    import glob

    return isinstance(path, str) and (os.path.exists(path) or bool(glob.glob(path)))


def demo_assets(demo_dir: str, work: Path) -> tuple[dict, str]:
    """The demo corpus + tokenizer: `demo_dir` when it holds them, else made in `work` (~10 s)."""
    from .demo_assets import make_demo_assets

    d = Path(demo_dir)
    if (d / "stdlib.jsonl").is_file() and (d / "tokenizer").is_dir() and (d / "stdlib_chat.jsonl").is_file():
        return {"jsonl": str(d / "stdlib.jsonl"), "chat": str(d / "stdlib_chat.jsonl"),
                "tokenizer": str(d / "tokenizer")}, str(d)
    return make_demo_assets(work / "demo"), f"{work / 'demo'} (made now; `planc demo-data` keeps one in data/demo)"


def _own_data_local(plan) -> bool:
    return all(_local(s["path"]) for s in plan.sources) and _local(plan["data.tokenizer"])


def data_changes(plan, mode: str, demo_dir: str, work: Path) -> tuple[dict, list[str]]:
    """Setting changes that point the plan's sources at local data, and lines saying what was used."""
    own = _own_data_local(plan)
    if mode == "plan" and not own:
        raise PlanInvalid("--data plan: the plan's data or tokenizer is not on this machine")
    use_own = own and mode != "demo"
    changes, notes = {}, []
    sft = any(s["kind"] == "sft" for s in plan.sources)
    if use_own:
        changes["data.tokenizer"] = os.path.abspath(plan["data.tokenizer"])
        for s in plan.sources:
            path = s["path"]
            fmt = s["format"] or ("jsonl" if str(path).endswith((".jsonl", ".ndjson")) else None)
            if fmt == "jsonl" and os.path.isfile(path):
                path = _slice_lines(Path(path), work / "data" / f"{s.name}.jsonl")
                notes.append(f"source {s.name}: the plan's own {s['path']}, first {path.stat().st_size:,} bytes")
            else:
                notes.append(f"source {s.name}: the plan's own {s['path']}")
            changes[f"data.{s.name}.path"] = os.path.abspath(path)
    else:
        assets, where = demo_assets(demo_dir, work)
        why = "--data demo" if mode == "demo" else "the plan's data is not on this machine"
        notes.append(f"demo corpus from {where} ({why})")
        changes["data.tokenizer"] = os.path.abspath(assets["tokenizer"])
        if sft:
            changes["data.chat_template"] = "chatml"  # the demo tokenizer carries no template of its own
        for s in plan.sources:
            chat = s["kind"] == "sft"
            src = Path(assets["chat" if chat else "jsonl"])
            path = _slice_lines(src, work / "data" / ("demo_chat.jsonl" if chat else "demo.jsonl"))
            changes[f"data.{s.name}.path"] = str(path.resolve())
            changes[f"data.{s.name}.format"] = "jsonl"
            changes[f"data.{s.name}.{'messages' if chat else 'text'}"] = "messages" if chat else "text"
    for s in plan.sources:
        if s["streaming"]:
            # Streaming reads each rank's own share: the global batch would depend on dp.
            changes[f"data.{s.name}.streaming"] = False
            notes.append(f"source {s.name}: read whole (streaming off), so every layout sees the same global batch")
    return changes, notes


def run_changes(ir: ScriptIR, plan, layouts: list[dict], steps: int) -> tuple[dict, list[str]]:
    """Setting changes for a short fp32 CPU run with one global batch for every layout."""
    keys = {s.key for s in ir.settings}
    dynamic = plan["data.pack"] == "dynamic"
    seq = math.lcm(*(d["sp"] * d["tp"] for d in layouts))
    max_len = -(-min(plan["data.max_len"], MAX_LEN) // seq) * seq
    micro = 1 if dynamic else min(plan["train.micro_batch"], 2)
    dps = math.lcm(*(d["dp_replicate"] * d["dp_shard"] for d in layouts))
    global_batch = micro * math.lcm(dps, 2) * 2  # at least two micro-batches per rank: accumulation runs
    c = {"model.dtype": "fp32", "model.weights": None, "mesh.device": "cpu", "data.max_len": max_len,
         "train.steps": steps, "train.global_batch": global_batch, "train.micro_batch": micro,
         "train.warmup": 0, "train.log_every": 1}
    if plan["model.attention"] not in ("sdpa", "eager"):
        c["model.attention"] = "sdpa"  # flash_attention_2 needs CUDA
    if dynamic:
        c["data.tokens"], c["data.warmup_steps"] = 2 * max_len, 0
    for k in ("train.param_dtype", "train.reduce_dtype"):
        if k in keys:
            c[k] = "fp32"
    if ir.checkpoint:  # an export the plan asks for is made and checked too
        c.update({"checkpoint.every": steps, "checkpoint.keep": 1,
                  "checkpoint.export": "hf" if plan["checkpoint.export"] == "hf" else "none"})
    notes = [f"fp32 on cpu, {steps} steps, global batch {global_batch} "
             f"{'micro-batches of up to ' + str(2 * max_len) + ' tokens' if dynamic else f'rows of {max_len} tokens'}"
             f", micro-batch {micro}, warmup 0 (the plan's lr {plan['train.lr']:g} from step 1)"]
    if plan["model.dtype"] != "fp32" or plan["train.param_dtype"] != "fp32":
        notes.append("the plan's bf16/fp16 is run in fp32: this CPU's bf16 is ~18x slower and parity needs fp32")
    if "model.attention" in c:
        notes.append(f"attention {plan['model.attention']} runs as sdpa here (it needs CUDA)")
    if any(s.kind == "compile" for s in ir.steps):
        notes.append("`compile` rules are left out (~40 s per process on CPU; they do not change the layout)")
    return {k: v for k, v in c.items() if k in keys}, notes


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


# --- running -------------------------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_layout(script: Path, nproc: int, args: list[str], log_dir: Path) -> subprocess.Popen:
    """torchrun on gloo, each rank's output in its own file (--redirects 3) under `log_dir`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--log-dir", str(log_dir), "--redirects", "3", str(script), *args]
    with open(log_dir / "torchrun.log", "w") as out:  # the child keeps its own copy of the file
        return subprocess.Popen(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True)


def start_single(script: Path, args: list[str], log_dir: Path) -> subprocess.Popen:
    """One plain process (world 1, no launcher)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = _env()
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    with open(log_dir / "python.log", "w") as out:
        return subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM first: torchrun passes it on to its workers (SIGKILL would orphan them)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait(proc: subprocess.Popen, timeout: float) -> int:
    """The exit status, or 124 when the run took longer than `timeout` seconds (it is stopped)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        return 124
    except BaseException:  # Ctrl-C: leave no run behind
        stop(proc)
        raise


def _port_taken(log_dir: Path) -> bool:
    """Whether a failed launch failed because a port was taken (EADDRINUSE), in any of its logs."""
    return any("EADDRINUSE" in t or "Address already in use" in t
               for t in (p.read_text(errors="replace") for p in log_dir.rglob("*.log")))


def failure_log(log_dir: Path, tail: int = 4000) -> str:
    """The failing rank's own log (torchrun names the first failure), else every log with a traceback."""
    parts = []
    launcher = log_dir / "torchrun.log"
    text = launcher.read_text(errors="replace") if launcher.exists() else ""
    m = re.search(r"Root Cause.*?rank\s*:\s*(\d+)", text, re.S)
    logs = sorted(p for p in log_dir.rglob("*.log") if p.name != "torchrun.log")
    if m:
        chosen = [p for p in logs if p.parent.name == m.group(1) and p.parent.parent.name.startswith("attempt")]
    else:
        chosen = [p for p in logs if "Traceback" in p.read_text(errors="replace")]
    for p in chosen or logs:
        body = p.read_text(errors="replace")
        if body.strip():
            parts.append(f"--- {p.relative_to(log_dir)} ---\n{body[-tail:]}")
    if not parts and text:
        parts.append(f"--- torchrun ---\n{text[-tail:]}")
    return "\n".join(parts)


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
    loss = [_rel(a, b) for a, b in zip(run["losses"], ref["losses"])]
    norm = [_rel(a, b) for a, b in zip(run["grad_norms"], ref["grad_norms"])]
    bad = [x for x in loss + norm if not math.isfinite(x)]
    return {"loss_rel": loss, "grad_norm_rel": norm, "worst_loss_rel": max(loss) if not bad else math.inf,
            "worst_grad_norm_rel": max(norm) if not bad else math.inf}


def check_export(run_dir: Path) -> dict:
    """The layout's HF export loaded as a user would (`from_pretrained`, one process) against the
    model weights of the layout's own last DCP checkpoint, read back without any process group:
    missing or unexpected names, and tensors that are not bitwise equal.

    (Not against the one-process run's weights: after a few AdamW steps those differ by more than
    the loss does, wherever a gradient is too small to rise above rounding: Adam normalises it.)"""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    flat = run_dir / "last_checkpoint.pt"
    dcp_to_torch_save(ckpts[-1], flat)
    saved = torch.load(flat, weights_only=False)["model"]
    flat.unlink()
    model, info = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "hf", output_loading_info=True)
    state = model.state_dict()
    problems = [f"{kind}: {names[:3]}" for kind, names in (("missing", sorted(info["missing_keys"])),
                                                          ("unexpected", sorted(info["unexpected_keys"]))) if names]
    problems += [f"not loaded: {k}" for k in sorted(set(saved) - set(state))[:3]]
    problems += [f"{k}: differs from the checkpoint" for k in sorted(set(saved) & set(state))
                 if not torch.equal(state[k], saved[k].to(state[k].dtype))][:3]
    return {"tensors": len(saved), "problems": problems, "checkpoint": ckpts[-1].name}


def table(run: dict, ref: dict, cmp: dict, nproc: int) -> str:
    head = (f"  {'step':>4}  {f'loss ({nproc} procs)':>18}  {'loss (1 proc)':>18}  {'rel diff':>8}"
            f"  {f'grad norm ({nproc} procs)':>23}  {'grad norm (1 proc)':>18}  {'rel diff':>8}")
    lines = [head]
    for i, (a, b, c, d) in enumerate(zip(run["losses"], ref["losses"], run["grad_norms"], ref["grad_norms"])):
        lines.append(f"  {i + 1:>4}  {a:>18.12g}  {b:>18.12g}  {cmp['loss_rel'][i]:>8.1e}"
                     f"  {c:>23.12g}  {d:>18.12g}  {cmp['grad_norm_rel'][i]:>8.1e}")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------

def verify(args) -> int:
    from .diagnostics import render
    from .frontend import check_file
    from .lower import lower

    if args.max_procs < 1 or args.steps < 1 or not args.tolerance > 0:
        raise PlanInvalid("--max-procs and --steps must be >= 1 and --tolerance > 0")
    checked = check_file(args.plan, skip_files=True)  # data may live on the cluster: verify brings its own
    if checked.ok and args.data != "demo" and _own_data_local(checked.plan):
        checked = check_file(args.plan)  # the plan's own data will be read: its file rules apply too
    errors = [d for d in checked.diagnostics if d.severity == "error"]
    if not checked.ok:
        for d in errors:
            print(render(d, checked.source), file=sys.stderr)
            print(file=sys.stderr)
        print(f"{args.plan}: the plan does not compose; nothing to verify", file=sys.stderr)
        return 2
    plan, degrees = checked.plan, dict(checked.ctx.degrees)
    ir = lower(checked, f"generated/{plan.name}.py")

    notes = []
    if args.layout:
        layouts = [parse_layout(t) for t in args.layout]
        for d in layouts:
            check_layout(d, ir, args.max_procs)
    else:
        d = sub_layout(degrees, args.max_procs)
        if d is None:
            raise PlanInvalid(f"no sub-layout of {layout_text(degrees)} fits {args.max_procs} processes")
        check_layout(d, ir, args.max_procs)
        layouts = [d]
        if d != degrees:
            changed = ", ".join(f"{k} {degrees[k]} -> {d[k]}" for k in DIMS if d[k] != degrees[k])
            lost = [k for k in MODEL_DIMS if degrees[k] > 1 and d[k] == 1]
            notes.append(f"the plan's layout {layout_text(degrees)} needs {world_of(degrees)} processes, more "
                         f"than --max-procs {args.max_procs}: running the sub-layout {layout_text(d)} instead "
                         f"({changed}; " + (f"{', '.join(lost)} could not be kept)" if lost else
                                           "every kind of model parallelism kept)"))

    try:
        work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix=f"planc-verify-{plan.name}-"))
        if args.keep and work.exists() and any(work.iterdir()):
            raise PlanInvalid(f"--keep {args.keep}: the directory is not empty")
        work.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:  # --keep names a file, a place that cannot be written, ...
        from .paths import reason

        raise PlanInvalid(f"--keep {args.keep}: {reason(e)}" if args.keep else f"no temporary directory: {reason(e)}") from None
    try:
        return _run_all(args, ir, plan, degrees, layouts, notes, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run_all(args, ir: ScriptIR, plan, degrees: dict, layouts: list[dict], notes: list[str], work: Path) -> int:
    from runtime.data import load_tokenizer

    from .emit import render_script

    kinds = {s.kind for s in ir.steps}
    dchanges, dnotes = data_changes(plan, args.data, args.demo_data, work)
    vocab = len(load_tokenizer(dchanges["data.tokenizer"]))
    _, summary = shrink_model(plan["model.config"], layouts, vocab, work / "model")
    rchanges, rnotes = run_changes(ir, plan, layouts, args.steps)
    base = with_settings(ir, {**dchanges, **rchanges, "model.config": str(work / "model")})

    print(f"planc verify {args.plan}: plan {plan.name!r}, {ir.description}")
    for line in notes:
        print(f"  layout    {line}")
    print(f"  model     {summary}")
    for line in dnotes:
        print(f"  data      {line}")
    for line in rnotes:
        print(f"  run       {line}")
    print(f"  files     {work}" + ("" if args.keep else " (removed at the end; --keep DIR keeps them)"))

    scripts = {"layout": layout_ir(base), "reference": reference_ir(base)}
    if args.baseline:
        scripts["baseline"] = baseline_ir(base)
    paths = {}
    for name, sir in scripts.items():
        paths[name] = work / f"{name}.py"
        paths[name].write_text(render_script(per_run(sir, work / "runs" / name)))

    # The reference runs beside the first layout (one process; a launch mostly waits), except when
    # speeds are compared (--baseline): then every run has the machine to itself.
    ref_dir = work / "runs" / "reference"
    ref_proc = start_single(paths["reference"], [], ref_dir)
    try:
        if args.baseline:
            wait(ref_proc, args.timeout)
        results, problems = _run_layouts(args, ir, kinds, degrees, layouts, paths, work)
        rc = wait(ref_proc, args.timeout)
    finally:
        stop(ref_proc)
    if rc != 0:
        log = (ref_dir / "python.log").read_text(errors="replace")[-4000:]
        print(f"\nFAILED: the one-process reference exited with {rc}:\n{log}")
        _write_json(args, plan, results, None, failed=True)
        return 1
    ref = read_run(ref_dir, args.steps)
    print(f"\nreference: one process, no parallel steps ({paths['reference']})")
    ok = not problems
    for r in results:
        if "losses" not in r:
            continue
        cmp = compare(r, ref)
        r.update(cmp)
        good = cmp["worst_loss_rel"] <= args.tolerance and cmp["worst_grad_norm_rel"] <= args.tolerance
        r["ok"] = good
        if not good:
            ok = False
            problems.append(f"{r['label']} does not train like one process")
        print(f"\n{r['label']} vs one process:")
        print(table(r, ref, cmp, r["world"]))
        speed = _speed(r, ref)
        print(f"  worst relative difference: loss {cmp['worst_loss_rel']:.1e}, grad norm "
              f"{cmp['worst_grad_norm_rel']:.1e} (tolerance {args.tolerance:g}): "
              f"{'OK' if good else 'FAILED'}" + (f"; {speed}" if speed else ""))
        if (Path(r["run_dir"]) / "checkpoints" / "hf").is_dir():
            ex = check_export(Path(r["run_dir"]))
            r["export"] = ex
            if ex["problems"]:
                ok = False
                problems.append(f"the HF export of {r['label']} does not hold its trained weights")
            print(f"  HF export: loads with from_pretrained on one process; its {ex['tensors']} tensors "
                  f"{'equal' if not ex['problems'] else 'DIFFER from'} the layout's {ex['checkpoint']} "
                  f"checkpoint" + "".join(f"\n    {p}" for p in ex["problems"]))
    _write_json(args, plan, results, ref, failed=not ok)
    verdict = "trains like one process in every layout run" if ok else "; ".join(problems)
    print(f"\n{'OK' if ok else 'FAILED'}: {plan.name}: {verdict} (tolerance {args.tolerance:g}, "
          f"{args.steps} steps, fp32)")
    return 0 if ok else 1


def _run_layouts(args, ir, kinds, degrees, layouts, paths, work) -> tuple[list[dict], list[str]]:
    """Run every layout (and its FSDP2 baseline with --baseline); their results and what failed."""
    results, problems = [], []
    for d in layouts:
        tag = layout_text(d).replace(" ", "_").replace("=", "")
        run_dir = work / "runs" / f"layout_{tag}"
        overrides = [a for k in DIMS if k in ir.mesh for a in (f"--mesh.{k}", str(d[k]))] + outputs(ir, run_dir)
        label = f"{describe(d, kinds)} ({layout_text(d)}) on {world_of(d)} process{'es' * (world_of(d) > 1)}"
        print(f"\nlayout {label}" + (" — the plan's own layout" if d == degrees else ""), flush=True)
        print(f"  torchrun --standalone --nproc-per-node {world_of(d)} {paths['layout']} {' '.join(overrides)}")
        t0 = time.perf_counter()
        rc = wait(start_layout(paths["layout"], world_of(d), overrides, run_dir / "logs"), args.timeout)
        if rc != 0 and _port_taken(run_dir / "logs"):
            # torchrun's free port was taken before it bound it (another launch on this machine)
            print("  the launcher lost its port to another process; launching again", flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            rc = wait(start_layout(paths["layout"], world_of(d), overrides, run_dir / "logs"), args.timeout)
        print(f"  finished in {time.perf_counter() - t0:.0f} s (exit {rc})", flush=True)
        entry = {"layout": d, "label": label, "world": world_of(d), "run_dir": str(run_dir)}
        if rc != 0:
            print(f"  FAILED: the layout run exited with {rc}; the failing rank's log:\n"
                  + failure_log(run_dir / "logs"))
            problems.append(f"the {label} run failed (exit {rc})")
            results.append(dict(entry, ok=False, error=f"exit {rc}"))
            continue
        entry.update(read_run(run_dir, args.steps))
        if args.baseline:
            bdir = work / "runs" / f"baseline_{world_of(d)}"
            if not (bdir / "metrics.jsonl").exists():
                bargs = ["--mesh.dp_replicate", "1", "--mesh.dp_shard", str(world_of(d)), *outputs(ir, bdir)]
                rc = wait(start_layout(paths["baseline"], world_of(d), bargs, bdir / "logs"), args.timeout)
                if rc != 0:
                    print(f"  FAILED: the FSDP2 baseline run exited with {rc}:\n" + failure_log(bdir / "logs"))
                    problems.append(f"the FSDP2 baseline on {world_of(d)} processes failed (exit {rc})")
            if (bdir / "metrics.jsonl").exists():
                entry["baseline_tokens_per_s"] = read_run(bdir, args.steps)["tokens_per_s"]
        results.append(entry)
    return results, problems


def _speed(r: dict, ref: dict) -> str:
    """tokens/s (median over steps 2..N, rank 0's wall clock; noisy on a shared CPU)."""
    if not r.get("tokens_per_s"):
        return ""
    out = f"{r['tokens_per_s']:,.0f} tokens/s"
    if ref.get("tokens_per_s"):
        out += f" ({r['tokens_per_s'] / ref['tokens_per_s']:.2f}x one process"
        if r.get("baseline_tokens_per_s"):
            out += f", {r['tokens_per_s'] / r['baseline_tokens_per_s']:.2f}x FSDP2 alone on {r['world']}"
        out += ")"
    return out


def _write_json(args, plan, results, ref, failed: bool) -> None:
    if not args.json:
        return
    out = {"plan": plan.name, "ok": not failed, "tolerance": args.tolerance, "steps": args.steps,
           "reference": ref, "layouts": results}
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))


def cmd_verify(args) -> int:
    """The `planc verify` command body (see the module docstring)."""
    try:
        return verify(args)
    except PlanInvalid as e:
        print(f"planc verify: {e}", file=sys.stderr)
        return 2


def add_parser(sub):
    """`planc verify`'s arguments (planc/cli.py adds the subcommand with them)."""
    from . import args as A  # numeric options checked as they are read (usage error, exit 2)

    c = sub.add_parser("verify", help="prove a plan's numerics on this CPU against one process",
                       description="Shrink the plan's model, run its layout (or the largest sub-layout that "
                       "fits --max-procs) on gloo processes and one plain process on the same global "
                       "batches, and compare per-step losses and gradient norms; with `export = hf`, also "
                       "load each layout's export on one process. Exit 0 within --tolerance, 1 "
                       "otherwise, 2 for an invalid plan.")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("--max-procs", type=A.count, default=4, metavar="N",
                   help="most processes a layout may use on this machine (default 4)")
    c.add_argument("--layout", action="append", metavar="DIM=N,...",
                   help="run this layout instead (e.g. dp_shard=1,tp=2); repeat for several, which share "
                        "one reference run")
    c.add_argument("--steps", type=A.count, default=5, help="optimizer steps (default 5)")
    c.add_argument("--tolerance", type=A.positive, default=1e-5,
                   help="worst relative difference allowed, per step, in loss and gradient norm (default 1e-5)")
    c.add_argument("--data", choices=("auto", "plan", "demo"), default="auto",
                   help="auto: the plan's own data when it is on this machine, else the demo corpus")
    c.add_argument("--demo-data", default="data/demo", metavar="DIR",
                   help="where the demo corpus and tokenizer are (default data/demo; made in the temp dir "
                        "if missing)")
    c.add_argument("--baseline", action="store_true",
                   help="also run FSDP2 alone on each layout's process count, for tokens/s relative to it")
    c.add_argument("--keep", metavar="DIR", help="write everything to DIR (empty or new) and keep it")
    c.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    c.add_argument("--timeout", type=A.positive, default=900, help="seconds allowed per run (default 900)")
    return c
