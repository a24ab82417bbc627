"""The shrunk model and the local data of a `planc verify` run.

The plan's model is shrunk (runtime.parallel.shrink: same family, 2 layers, small sizes that keep
every divisibility rule of the layouts run); its data is local: the plan's own sources when they
are on this machine (single JSON Lines files cut to their first records), else the demo corpus."""
from __future__ import annotations

import glob
import math
import os
from pathlib import Path

from ..layout import Layout
from .scripts import PlanInvalid

SLICE_BYTES = 256 * 1024  # a verify run reads a few thousand tokens; tokenising more only costs time


def shrink_model(config_path: str, layouts: list[Layout], vocab: int, out: Path, trust_remote_code: bool = False):
    """Write a shrunk copy of the plan's model config to `out`; returns (config, one-line summary).

    One model serves every layout (and the reference): it keeps the rules of the lcm of their
    tp, sp and ep degrees. A model that ships its own modeling code (`auto_map`; the plan says
    `trust_remote_code = true`) keeps it: the code's files are copied beside the shrunk config, so
    every run builds the directory's own classes, as the plan's script does."""
    from runtime.checkpoint.export import copy_model_code
    from runtime.parallel.shrink import shrink_config

    from ..model_tree import ModelLoadError, load_config

    try:
        real = load_config(config_path, trust_remote_code)
    except ModelLoadError as e:
        raise PlanInvalid(f"model.config: {e}") from None
    if getattr(real, "vision_config", None) is not None:
        return _vl_as_is(real, out)
    need = {k: math.lcm(*(getattr(d, k) for d in layouts)) for k in ("tp", "sp", "ep")}
    try:
        small = shrink_config(real, vocab=vocab, **need)
    except ValueError as e:
        raise PlanInvalid(f"the model cannot be shrunk for {Layout(**need).text()}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    small.save_pretrained(str(out))
    code = copy_model_code(real, out)
    summary = _shrink_summary(real, small)
    if code:
        summary += f"; its own modeling code ({', '.join(code)}, trusted by the plan) runs in every run"
    return small, summary


def _vl_as_is(config, out: Path):
    """A vision-language model runs at its own size: its vision tower, merger and mrope sections
    are tied to the language model's sizes, so a small config of the family is the plan's to give."""
    text = config.get_text_config()
    if text.hidden_size > VL_LARGEST_HIDDEN or text.num_hidden_layers > VL_LARGEST_LAYERS:
        raise PlanInvalid(f"verify runs a vision-language model at its own size, and this one is large "
                          f"(hidden {text.hidden_size}, {text.num_hidden_layers} layers): verify a copy of the "
                          f"plan whose model.config is a small config of the same family "
                          f"(plans/models/tiny-qwen2.5-vl is one)")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    return config, (f"{config.model_type}: run at its own size (vision-language models are not shrunk): "
                    f"{text.num_hidden_layers} layers, hidden {text.hidden_size}")


VL_LARGEST_HIDDEN, VL_LARGEST_LAYERS = 512, 8  # what a CPU verify run of a VL model can afford


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
    return isinstance(path, str) and (os.path.exists(path) or bool(glob.glob(path)))


def demo_assets(demo_dir: str, work: Path) -> tuple[dict, str]:
    """The demo corpus + tokenizer: `demo_dir` when it holds them, else made in `work` (~10 s)."""
    from ..demo_assets import make_demo_assets

    d = Path(demo_dir)
    if (d / "stdlib.jsonl").is_file() and (d / "tokenizer").is_dir() and (d / "stdlib_chat.jsonl").is_file():
        return {"jsonl": str(d / "stdlib.jsonl"), "chat": str(d / "stdlib_chat.jsonl"),
                "tokenizer": str(d / "tokenizer")}, str(d)
    return make_demo_assets(work / "demo"), f"{work / 'demo'} (made now; `planc demo-data` keeps one in data/demo)"


def own_data_local(plan) -> bool:
    """Whether every source of the plan and its tokenizer are on this machine."""
    return all(_local(s["path"]) for s in plan.sources) and _local(plan["data.tokenizer"])


def vl_data_changes(plan, mode: str, work: Path) -> tuple[dict, list[str]]:
    """As data_changes, for a vision-language plan: its own conversations as they are (their media
    paths are relative to the record file, so it is not cut), else the VL demo's."""
    own = own_data_local(plan)
    if mode == "plan" and not own:
        raise PlanInvalid("--data plan: the plan's data or tokenizer is not on this machine")
    if own and mode != "demo":
        changes = {"data.tokenizer": os.path.abspath(plan["data.tokenizer"])}
        changes.update({f"data.{s.name}.path": os.path.abspath(s["path"]) for s in plan.sources})
        return changes, [f"source {s.name}: the plan's own {s['path']}" for s in plan.sources]
    from ..demo_vl_assets import make_vl_demo_assets

    d = Path("data/vl_demo")
    if (d / "chat_hf.jsonl").is_file() and (d / "tokenizer").is_dir():
        assets, where = {"hf": str(d / "chat_hf.jsonl"), "tokenizer": str(d / "tokenizer")}, str(d)
    else:
        assets, where = make_vl_demo_assets(work / "vl_demo"), f"{work / 'vl_demo'} (made now)"
    changes = {"data.tokenizer": os.path.abspath(assets["tokenizer"]), "data.chat_template": "tokenizer"}
    for s in plan.sources:
        changes.update({f"data.{s.name}.path": os.path.abspath(assets["hf"]), f"data.{s.name}.format": "jsonl",
                        f"data.{s.name}.messages": "messages"})
    why = "--data demo" if mode == "demo" else "the plan's data is not on this machine"
    return changes, [f"vision-language demo conversations from {where} ({why})"]


def data_changes(plan, mode: str, demo_dir: str, work: Path) -> tuple[dict, list[str]]:
    """Setting changes that point the plan's sources at local data, and lines saying what was used."""
    own = own_data_local(plan)
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
        if plan["train.objective"] == "block_diffusion":  # the demo tokenizer plus its mask token
            from ..demo_diffusion import make_diffusion_demo

            demo = make_diffusion_demo(Path(assets["tokenizer"]).parent)
            changes["data.tokenizer"] = os.path.abspath(demo["tokenizer_mask"])
            changes["train.mask_token"] = demo["mask_token"]
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
