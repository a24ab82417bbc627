"""VeOmni training configs (YAML) -> an equivalent .veo plan.

    result = import_veomni("qwen3.yaml", ["--train.global_batch_size", "16"], world=8)
    result.text    # the plan, formatted; result.notes: what did not carry over, each at its YAML line

Both generations of VeOmni's keys are read: the nested one (`train.accelerator.*`,
`train.optimizer.*`, `train.checkpoint.*`, `model.ops_implementation.*`) and the older flat one
(`train.lr`, `train.save_steps`, `train.data_parallel_mode`, `train.ulysses_parallel_size`, ...).
Settings a config leaves out take VeOmni's defaults (the older generation's where they differ and
the config uses older keys), written out explicitly in the plan. Every setting that cannot be
carried over becomes a Note (file:line:col, key, why) and a comment at the top of the plan: none
is dropped silently. docs/import.md lists the mapping.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from runtime.vocab import SCHEDULES

from .loop import carry_lora, carry_profile, carry_trackers
from .plantext import Block, Word, literal, render
from .readout import Note, Settings
from .yamlsrc import Entry, ImportError_, apply_overrides, load_entries

__all__ = ["Note", "ImportResult", "import_veomni"]

LAYERS, ATTENTION, EXPERTS = "model.layers.*", "model.layers.*.self_attn", "model.layers.*.mlp.experts"
_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float32": "fp32", "fp32": "fp32", "float16": "fp16", "fp16": "fp16"}
_ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash_attention_2"}
_KERNELS = {  # ops_implementation key -> planc kernels key
    "rms_norm_implementation": "rmsnorm", "swiglu_mlp_implementation": "swiglu",
    "rotary_pos_emb_implementation": "rotary", "cross_entropy_loss_implementation": "fused_ce",
    "moe_implementation": "moe"}
_KERNEL_VALUES = {"liger_kernel": "auto", "triton": "auto", "fused_triton": "auto", "fused": "auto",
                  "chunk_loss": "torch", "eager": "off"}
@dataclass
class ImportResult:
    name: str
    text: str
    notes: list


def _generation(entries) -> bool:
    """True for the older flat `train.*` keys (train.lr, train.data_parallel_mode, ...)."""
    flat = ("train.lr", "train.data_parallel_mode", "train.output_dir", "train.save_steps",
            "train.ulysses_parallel_size", "train.enable_gradient_checkpointing", "train.optimizer")
    return any(k in entries and not isinstance(entries[k].value, dict) for k in flat)


def _mixture(c: Settings, path: str, entry: Entry) -> list[tuple[str, str, float]]:
    """(name, path, weight) of each source of a VeOmni multi-source YAML."""
    sub = load_entries(path)
    sources, names = sub.get("sources"), sub.get("names")
    if sources is None or not isinstance(sources.value, list):
        raise ImportError_(f"{entry.where}: {path} has no `sources:` list (a VeOmni multi-source YAML)")
    weights = [1.0] * len(sources.value)
    schedule = sub.get("schedule")
    if schedule is not None:
        steps = schedule.value if isinstance(schedule.value, list) else []
        if len(steps) != 1 or not isinstance(steps[0], dict) or steps[0].get("schedule_type", "const") != "const":
            c.note(schedule, "only a constant schedule carries over: its first weights are used")
        if steps and isinstance(steps[0], dict) and isinstance(steps[0].get("weights"), list):
            weights = steps[0]["weights"]
    for key in sub:
        if key not in ("sources", "names", "schedule"):
            c.note(sub[key], "not carried over: planc has no such mixture setting")
    labels = names.value if names is not None and isinstance(names.value, list) else []
    if len(weights) != len(sources.value) or (labels and len(labels) != len(sources.value)):
        raise ImportError_(f"{path}: sources, names and weights have different lengths")
    out = []
    for i, src in enumerate(sources.value):
        label = labels[i] if labels else Path(str(src)).stem
        out.append((_ident(label, i), str(src), float(weights[i])))
    return out


def _ident(label: str, i: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", str(label)).strip("_") or f"source{i}"
    return name if name[0].isalpha() else f"s_{name}"


def _model(c: Settings, model: Block, data: Block, kernels: Block, sp: int) -> None:
    config, ce = c.get("model.config_path")
    weights, we = c.get("model.model_path")
    if config is None and weights is None:
        raise ImportError_("the config names no model (model.model_path or model.config_path)")
    model.set("config", str(config or weights))
    if config is not None and weights is not None and str(config) != str(weights):
        model.set("weights", str(weights))
    tok, _ = c.get("model.tokenizer_path")
    data.set("tokenizer", str(tok or config or weights))
    attn, ae = c.get("model.ops_implementation.attn_implementation", "model.attn_implementation",
                     default="flash_attention_2")
    if attn not in _ATTENTION:
        c.note(ae, f"attention {attn!r} is not available in planc: sdpa is used", key="attn_implementation")
    elif sp > 1 and attn == "flash_attention_2":
        c.note(ae, "Ulysses in planc wraps sdpa or eager attention (flash_attention_2 not built): sdpa is used",
               key="attn_implementation")
        attn = "sdpa"
    model.set("attention", Word(_ATTENTION.get(attn, "sdpa")))
    for vkey, pkey in _KERNELS.items():
        value, e = c.get(f"model.ops_implementation.{vkey}", f"model.{vkey}")
        if e is None:
            continue
        if value in _KERNEL_VALUES:
            kernels.set(pkey, Word(_KERNEL_VALUES[value]))
        else:
            c.note(e, f"kernel {value!r} has no planc counterpart: the torch path runs")


def _steps(c: Settings, *, dyn: bool, global_rows: int, max_len: int, epochs: int) -> tuple[int, str]:
    max_steps, me = c.get("train.max_steps")
    if max_steps:
        return int(max_steps), "train.max_steps"
    if dyn:
        size, se = c.get("data.train_size", default=10_000_000)
        per_epoch = math.ceil(size / (global_rows * max_len))
        return per_epoch * epochs, (f"{epochs} epoch(s) x ceil(train_size {size:,} tokens / (global_batch_size "
                                    f"{global_rows} x max_seq_len {max_len})), VeOmni's count")
    size, se = c.get("data.train_size")
    if se is not None:
        c.note(se, "unused without dyn_bsz: VeOmni then counts steps from data.train_sample")
    samples, _ = c.get("data.train_sample", default=10_000)
    per_epoch = math.ceil(samples / global_rows)
    return per_epoch * epochs, f"{epochs} epoch(s) x ceil(train_sample {samples:,} / global_batch_size {global_rows})"


def import_veomni(path, overrides: Sequence[str] = (), *, name: str | None = None, world: int | None = None,
                  device: str = "cuda") -> ImportResult:
    """Convert the VeOmni YAML at `path` (with `--section.key VALUE` `overrides`) into plan text.
    `world`: the number of processes the config is meant for (VeOmni derives its data-parallel
    size from the launch); without it the plan says `dp_shard = auto` and `planc check` needs
    `--world N`. Raises ImportError_ when the config cannot be read or names no model/data."""
    entries = apply_overrides(load_entries(path), overrides)
    c = Settings(entries, _generation(entries))
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "-", Path(path).stem)
    model, mesh, par, data, train, ckpt, kernels, val = (Block(b) for b in (
        "model", "mesh", "parallelize", "data", "train", "checkpoint", "kernels", "validation"))

    # --- mesh + parallelize
    sp, spe = c.get("train.accelerator.ulysses_size", "train.ulysses_parallel_size", default=1)
    _model(c, model, data, kernels, sp)
    tp, _ = c.get("train.accelerator.tp_size", "train.tensor_parallel_size", default=1)
    ep, _ = c.get("train.accelerator.ep_size", "train.expert_parallel_size", default=1)
    for keys in (("train.accelerator.pp_size", "train.pipeline_parallel_size"),
                 ("train.accelerator.cp_size", "train.context_parallel_size")):
        value, e = c.get(*keys, default=1)
        if value and value > 1:
            c.note(e, f"not carried over: {keys[0].split('.')[-1]} = {value}: pipeline and context (ring) "
                      "parallelism are not built in planc (use sp for long sequences)")
    mode, me = c.get("train.accelerator.fsdp_config.fsdp_mode", "train.data_parallel_mode",
                     default="ddp" if c.old else "fsdp2")
    replicate, rpe = c.get("train.accelerator.dp_replicate_size", default=-1)
    shard, she = c.get("train.accelerator.dp_shard_size", default=-1)
    if mode == "ddp":
        if world:
            dp = world // (sp * tp)
            mesh.set("dp_replicate", dp)
        else:
            mesh.set("dp_replicate", Word("auto"))
        par.stmt("replicate")
    else:
        if mode != "fsdp2":
            c.note(me, f"{mode} becomes FSDP2 (fully_shard), the only FSDP planc builds")
        if replicate and replicate > 1:
            mesh.set("dp_replicate", int(replicate))
        if shard and shard > 0:
            mesh.set("dp_shard", int(shard))
        elif world:
            mesh.set("dp_shard", world // (sp * tp * max(1, replicate if replicate and replicate > 0 else 1)))
        else:
            mesh.set("dp_shard", Word("auto"))
        reshard, _ = c.get("train.accelerator.fsdp_config.reshard_after_forward", "train.enable_full_shard",
                           default=True)
        offload, _ = c.get("train.accelerator.fsdp_config.offload", "train.enable_fsdp_offload", default=False)
        opts = [literal(LAYERS)] + (["reshard_after_forward"] if reshard else ["reshard_after_forward = false"])
        par.stmt("fsdp", *opts, *(["offload"] if offload else []))
    if world:
        mesh.set("world", world)
    for dim, value in (("sp", sp), ("tp", tp), ("ep", ep)):
        if value > 1:
            mesh.set(dim, int(value))
    mesh.set("device", Word(device))
    if tp > 1:
        par.stmt("tp", "plan = model", comment="the config's own base_model_tp_plan")
    if ep > 1:
        par.stmt("ep", literal(EXPERTS))
    if sp > 1:
        par.stmt("sp", "ulysses", literal(ATTENTION))
    ckpt_on, _ = c.get("train.gradient_checkpointing.enable", "train.enable_gradient_checkpointing", default=True)
    if ckpt_on:
        par.stmt("checkpoint", literal(LAYERS))
    act, ae = c.get("train.accelerator.offload_config.enable_activation", "train.accelerator.offload.enable_activation",
                    "train.enable_activation_offload", default=False)
    if act:
        par.stmt("offload", literal(LAYERS), comment="activation offloading: what the layers save waits in host memory")
    limit, le = c.get("train.accelerator.offload_config.activation_gpu_limit",
                      "train.accelerator.offload.activation_gpu_limit", "train.activation_gpu_limit")
    if act and le is not None and limit:
        c.note(le, "planc offloads everything the matching layers save (no device-memory allowance)")

    # --- data
    train_path, tpe = c.get("data.train_path")
    if train_path is None:
        raise ImportError_(f"{path}: the config has no data.train_path")
    kind_value, ke = c.get("data.data_type", default="conversation" if not c.old else "plaintext")
    kinds = {"plaintext": "pretrain", "conversation": "sft"}
    if kind_value not in kinds:
        raise ImportError_(f"{ke.where if ke else path}: data_type {kind_value!r} cannot be imported "
                           "(planc trains text: plaintext or conversation)")
    kind = kinds[kind_value]
    field_value, _ = c.get("data.text_keys", default="content_split" if kind == "pretrain" else "messages")
    streaming, _ = c.get("data.datasets_type", default="mapping")
    if str(train_path).endswith((".yaml", ".yml")):
        base = Path(path).parent
        mix_path = train_path if Path(train_path).is_file() else str(base / train_path)
        sources = _mixture(c, mix_path, tpe)
    else:
        parts = [p.strip() for p in str(train_path).split(",") if p.strip()]
        if len(parts) > 1:
            c.note(tpe, "several comma-separated datasets: VeOmni concatenates them, planc mixes them by "
                        "tokens at equal weights (give each a weight proportional to its size to match)")
        sources = [(_ident(Path(p).stem, i) if len(parts) > 1 else "train", p, 1.0) for i, p in enumerate(parts)]
    for label, spath, weight in sources:
        body = {"path": spath, "kind": Word(kind), ("text" if kind == "pretrain" else "messages"): str(field_value)}
        if len(sources) > 1:
            body["weight"] = weight
        if streaming == "iterable":
            body["streaming"] = True
        data.stmt("source", literal(label), body=body)
    eval_path, _ = c.get("data.eval_path")
    if eval_path is not None:  # the held-out set: same kind and field as the training data
        body = {"path": str(eval_path), "kind": Word(kind), ("text" if kind == "pretrain" else "messages"): str(field_value)}
        val.stmt("source", literal("eval"), body=body)
        every, _ = c.get("train.eval_steps")
        if every:
            val.set("every", int(every))
    max_len, _ = c.get("data.max_seq_len", default=2048)
    data.set("max_len", int(max_len))
    template, te = c.get("data.chat_template", default="default")
    if kind == "sft":
        if template == "chatml":
            data.set("chat_template", Word("chatml"))
        else:
            c.note(te, f"chat template {template!r}: the tokenizer's own template is used (or say chatml)",
                   key="data.chat_template")
    elif te is not None:
        c.note(te, "a chat template has no effect on plaintext data")

    # --- batch
    micro, _ = c.get("train.micro_batch_size", default=1)
    gbs, ge = c.get("train.global_batch_size")
    dyn, _ = c.get("train.dyn_bsz", default=True)
    if gbs is None:
        if not world:
            raise ImportError_(f"{path}: train.global_batch_size is not set (VeOmni then uses micro_batch_size x "
                               "dp size): give world=N to derive it")
        gbs = micro * world // (sp * tp)
    if dyn:
        if gbs % micro:
            raise ImportError_(f"{ge.where if ge else path}: global_batch_size {gbs} is not a multiple of "
                               f"micro_batch_size {micro}")
        warm_ratio, _ = c.get("train.bsz_warmup_ratio", default=0.0)
        c.get("train.bsz_warmup_init_mbtoken")
    epochs, _ = c.get("train.num_train_epochs", default=1)
    steps, how = _steps(c, dyn=dyn, global_rows=gbs, max_len=max_len, epochs=epochs)
    if dyn:
        pack_opts = {"tokens": micro * max_len}
        if warm_ratio:
            pack_opts["warmup_steps"] = int(steps * warm_ratio)
        data.set("pack", Word("dynamic"), pack_opts,
                 comment="VeOmni's dyn_bsz: micro-batches of micro_batch_size x max_seq_len tokens")
        train.set("steps", steps, comment=how)
        train.set("global_batch", gbs // micro, comment=f"global_batch_size {gbs} / micro_batch_size {micro} micro-batches")
        train.set("micro_batch", 1)
    else:
        data.set("pack", Word("none"), comment="dyn_bsz off: one sample per row")
        train.set("steps", steps, comment=how)
        train.set("global_batch", gbs)
        train.set("micro_batch", micro)
    for key in ("train.dyn_bsz_margin", "data.dyn_bsz_buffer_size", "train.dyn_bsz_buffer_size"):
        value, e = c.get(key)
        if e is not None:
            c.note(e, "planc's dynamic batching plans a look-ahead window itself: no buffer setting")

    # --- optimisation
    opt, oe = c.get("train.optimizer.type", "train.optimizer", default="adamw")
    if opt != "adamw":
        c.note(oe, f"optimizer {opt!r} becomes adamw, the optimizer planc builds")
    lr, _ = c.get("train.optimizer.lr", "train.lr", default=5e-5)
    wd, wde = c.get("train.optimizer.weight_decay", "train.weight_decay", default=0.0)
    train.set("optimizer", Word("adamw"), {"lr": float(lr), "weight_decay": float(wd)})
    if wd:
        c.note(wde, "planc leaves 1-D parameters (norms, biases) out of weight decay; VeOmni decays all "
                    "but no_decay_modules/no_decay_params")
    for key in ("no_decay_modules", "no_decay_params"):
        value, e = c.get(f"train.optimizer.{key}", f"train.{key}")
        if e is not None and value:
            c.note(e, "planc's decay groups are fixed: >= 2-D parameters decay, 1-D ones do not")
    style, se = c.get("train.optimizer.lr_decay_style", "train.lr_decay_style", default="constant")
    if style not in SCHEDULES:
        c.note(se, f"lr_decay_style {style!r} becomes constant")
        style = "constant"
    warm, _ = c.get("train.optimizer.lr_warmup_ratio", "train.lr_warmup_ratio", default=0.0)
    lr_min, _ = c.get("train.optimizer.lr_min", "train.lr_min", default=1e-7)
    sched = {"warmup": int(steps * warm)}
    if style != "constant":
        sched["min_lr"] = float(f"{min(1.0, float(lr_min) / float(lr)):.6g}") if lr else 0.0
    train.set("schedule", Word(style), sched)
    for key, default in (("lr_start", 0.0), ("lr_decay_ratio", 1.0)):
        value, e = c.get(f"train.optimizer.{key}", f"train.{key}", default=default)
        if e is not None and value != default:
            c.note(e, f"{key} = {value} has no planc counterpart (planc warms up from lr/warmup and decays "
                      "over all steps after warm-up)")
    clip, _ = c.get("train.optimizer.max_grad_norm", "train.max_grad_norm", default=1.0)
    train.set("clip", float(clip))
    seed, _ = c.get("train.seed", default=42)
    train.set("seed", int(seed))
    carry_lora(c, train)
    carry_trackers(c, train)
    carry_profile(c, train)
    mp_on, _ = c.get("train.accelerator.fsdp_config.mixed_precision.enable", "train.enable_mixed_precision",
                     default=True)
    model.set("dtype", Word("fp32"), comment="master weights" + ("; compute dtype: train.mixed_precision" if mp_on else ""))
    if mp_on:
        pd, pe = c.get("train.accelerator.fsdp_config.mixed_precision.param_dtype", default="bfloat16")
        rd, re_ = c.get("train.accelerator.fsdp_config.mixed_precision.reduce_dtype", default="float32")
        if pd not in _DTYPES or rd not in _DTYPES:
            raise ImportError_(f"{(pe or re_).where}: unknown dtype {pd if pd not in _DTYPES else rd!r}")
        train.stmt("mixed_precision", body={"param": Word(_DTYPES[pd]), "reduce": Word(_DTYPES[rd])})

    # --- checkpoints
    out, _ = c.get("train.checkpoint.output_dir", "train.output_dir", default="output")
    every, ee = c.get("train.checkpoint.save_steps", "train.save_steps", default=0)
    hf, _ = c.get("train.checkpoint.save_hf_weights", "train.save_hf_weights", default=True)
    ckpt.set("dir", str(out))
    if every and every > 0:
        ckpt.set("every", int(every))
    elif ee is not None:
        c.note(ee, "save_steps = 0: planc checkpoints at the last step (and every N steps when given)")
    ckpt.set("export", Word("hf" if hf else "none"))
    c.leftovers()

    header = [f"Imported from {path} by `planc import` (a VeOmni config); check it with `planc check`."]
    if c.notes:
        header.append("Not carried over as it was (also printed by `planc import`):")
        header += [f"  {n}" for n in c.notes]
    text = render(name, header, [model, mesh, par, data, train, val, ckpt, kernels])
    return ImportResult(name=name, text=text, notes=c.notes)
