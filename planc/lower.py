"""Lower a checked plan to the script IR: concrete degrees, the settings the script uses (each with
the plan line it comes from), and the parallelize steps in the one order that composes:
TP/EP/SP -> activation checkpointing -> compile -> FSDP (bottom-up) / replication."""
from __future__ import annotations

import os
import re

from .ir import ScriptIR, SettingLine, SourceIR, Step
from .layout import DIMS, Layout
from .model_tree import num_experts
from .schema import KERNELS

WHY = {
    "tp": "tensor parallel first: it turns weights into DTensors that FSDP then shards on the data dims",
    "ep": "experts next: each ep rank keeps its experts, and tokens travel to them by all-to-all",
    "sp": "Ulysses swaps the attention function (all-to-all around it); parameters are untouched",
    "checkpoint": "checkpoint whole blocks before FSDP wraps them, so the recomputation gathers weights again",
    "compile": "compile each block after checkpointing and before FSDP, so FSDP's hooks stay outside the graph",
    "fsdp": "FSDP2 units bottom-up (each matching module, then the root): one unit's full weights at a time",
    "replicate": "plain replication: every rank holds the whole model and gradients are all-reduced",
}
ORDER = ["tp", "ep", "sp", "checkpoint", "compile", "fsdp", "replicate"]


def safe_comment_text(text: str) -> str:
    """Paths in comments and docstrings: nothing that could end a comment or a string."""
    return re.sub(r"[^\w./+=,:@-]", "_", text)


class _Lowering:
    def __init__(self, checked, out_path: str):
        self.plan, self.ctx = checked.plan, checked.ctx
        self.file = safe_comment_text(os.path.basename(self.plan.file))
        self.out_path = out_path
        self.settings: list[SettingLine] = []

    def where(self, key: str) -> str:
        s = self.plan.settings.get(key)
        if s is not None and s.span is not None:
            return f"{self.file}:{s.span.line}"
        block = key.split(".")[0]
        if block in self.plan.blocks:
            return f"{self.file}:{self.plan.blocks[block].line} (default)"
        return "default"

    def block_where(self, *blocks: str) -> str:
        spans = [self.plan.block_spans[b] for b in blocks if b in self.plan.block_spans]
        if not spans:
            return "defaults"
        lo, hi = min(s.line for s in spans), max(s.end_line or s.line for s in spans)
        return f"{self.file}:{lo}" if lo == hi else f"{self.file}:{lo}-{hi}"

    def add(self, key: str, value=None, where: str | None = None):
        v = self.plan[key] if value is None and key in self.plan.settings else value
        self.settings.append(SettingLine(key, v, where or self.where(key)))

    def run(self) -> ScriptIR:
        p, ctx = self.plan, self.ctx
        d = ctx.degrees
        kinds = {r.kind for r in p.rules}
        # model
        for k in ("model.config", "model.weights", "model.dtype", "model.attention"):
            self.add(k)
        # mesh: every degree that is written or not 1 (dp_shard always, so one process is one override)
        mesh = {}
        for dim in DIMS:
            if dim in ("dp_replicate", "dp_shard") or p.settings[f"mesh.{dim}"].written or d[dim] != 1:
                self.add(f"mesh.{dim}", d[dim])
                mesh[dim] = f"mesh.{dim}"
        self.add("mesh.device")
        # data
        sources = []
        sft = any(s["kind"] == "sft" for s in p.sources)
        for s in p.sources:
            fields = ["path", "format", "kind"] if sft else ["path", "format"]
            fields.append("messages" if s["kind"] == "sft" else "text")
            if len(p.sources) > 1:
                fields.append("weight")
            if s["streaming"]:
                fields.append("streaming")
            for f in fields:
                value = s[f]
                if f == "format" and value is None:
                    from .checks.data import resolved_format

                    value = resolved_format(s)
                self.add(f"data.{s.name}.{f}", value)
            sources.append(SourceIR(s.name, fields))
        data_keys = ["data.tokenizer", "data.max_len", "data.pack"]
        if p["data.pack"] == "dynamic":
            data_keys += ["data.tokens", "data.warmup_steps"]
        data_keys += ["data.shuffle"]
        if any(s["streaming"] for s in p.sources):
            data_keys += ["data.shuffle_buffer"]
        if sft:
            data_keys += ["data.chat_template", "data.system_prompt", "data.truncation"]
        data_keys += ["data.on_bad_record"]
        for k in data_keys:
            self.add(k)
        # train
        for k in ("train.steps", "train.global_batch", "train.micro_batch", "train.lr", "train.weight_decay",
                  "train.betas", "train.eps", "train.schedule", "train.warmup"):
            self.add(k)
        if p["train.schedule"] != "constant":
            self.add("train.min_lr")
        for k in ("train.clip", "train.seed", "train.log_every"):
            self.add(k)
        moe_aux = _moe_aux_coef(ctx.tree.config) is not None
        if moe_aux:
            coef = p["train.moe_aux_loss"]
            self.add("train.moe_aux_loss", _moe_aux_coef(ctx.tree.config) if coef is None else coef,
                     None if coef is not None else "model config (router_aux_loss_coef)")
        has_ckpt = "checkpoint" in p.blocks
        output = p["train.output"] or (None if has_ckpt else f"out/{p.name}")
        self.add("train.output", output)
        if "fsdp" in kinds:
            self.add("train.param_dtype")
            self.add("train.reduce_dtype")
        if has_ckpt:
            self.add("checkpoint.dir")
            self.add("checkpoint.every", p["checkpoint.every"] or p["train.steps"])
            self.add("checkpoint.keep")
            self.add("checkpoint.export")
        kernels = {}
        if "kernels" in p.blocks:
            for op in KERNELS.keys:
                if p[f"kernels.{op}"] != "off":
                    self.add(f"kernels.{op}")
                    kernels[op] = f"kernels.{op}"
        steps = self.steps()
        features = {s.kind for s in steps}
        # with any TP the logits may come out vocab-sharded (a `loss` rule, or the model's own plan):
        # the loop then computes cross-entropy and backward under loss_parallel (a no-op otherwise)
        tp_loss = "tp" in features
        tp_sequence = "sequence" in {r.style for r in p.rules if r.kind == "tp"}
        if kernels:
            features.add("kernels")
        return ScriptIR(
            name=p.name, plan_path=safe_comment_text(p.file), plan_file=self.file, out_path=self.out_path,
            world=ctx.world, device=p["mesh.device"], description=self.description(),
            settings=self.settings, where=self.wheres(), mesh=mesh, steps=steps, sources=sources,
            kernels=kernels, checkpoint=has_ckpt, features=features, tp_loss=tp_loss, tp_sequence=tp_sequence,
            moe_aux=moe_aux)

    def steps(self) -> list[Step]:
        out = []
        for kind in ORDER:
            rules = [r for r in self.plan.rules if r.kind == kind]
            if kind == "tp" and rules:  # every tp rule goes into one apply_tp call
                lines = sorted({r.span.line for r in rules})
                where = f"{self.file}:{lines[0]}" + (f"-{lines[-1]}" if len(lines) > 1 else "")
                from_model = any(r.options.get("plan") and r.options["plan"].value == "model" for r in rules)
                out.append(Step("tp", where, WHY["tp"], from_model=from_model,
                                rules=[(r.style, [g.pattern for g in r.globs], f"{self.file}:{r.span.line}")
                                       for r in rules if r.style]))
                continue
            for r in rules:
                opts = {k: s.value for k, s in r.options.items()}
                out.append(Step(kind, f"{self.file}:{r.span.line}", WHY[kind], [g.pattern for g in r.globs],
                                r.style, opts))
        return out

    def wheres(self) -> dict[str, str]:
        return {
            "model": self.block_where("model"), "mesh": self.block_where("mesh"),
            "parallelize": self.block_where("parallelize"), "data": self.block_where("data"),
            "train": self.block_where("train"), "checkpoint": self.block_where("checkpoint"),
            "kernels": self.block_where("kernels"), "optimizer": self._opt_where(),
            "clip": self.where("train.clip"), "every": self.where("checkpoint.every").replace(" (default)", ""),
            "export": self.where("checkpoint.export").replace(" (default)", ""),
        }

    def _opt_where(self) -> str:
        lines = sorted({s.span.line for k in ("train.optimizer", "train.schedule")
                        if (s := self.plan.settings.get(k)) is not None and s.span is not None})
        if not lines:
            return self.block_where("train")
        return f"{self.file}:{lines[0]}" + (f"-{lines[-1]}" if lines[-1] != lines[0] else "")

    def description(self) -> str:
        ctx = self.ctx
        n = ctx.tree.n_params
        size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
        layout = Layout.from_degrees(ctx.degrees)
        what = layout.describe({r.kind for r in self.plan.rules})
        return (f"{ctx.tree.model_type} ({size} parameters), {what} on {layout.world} {self.plan['mesh.device']} "
                f"process{'es' * (layout.world != 1)}")


def _moe_aux_coef(config) -> float | None:
    """The load-balancing loss weight of an MoE config (None for a dense model)."""
    if not num_experts(config) or not hasattr(config, "router_aux_loss_coef"):
        return None
    return float(config.router_aux_loss_coef)


def lower(checked, out_path: str) -> ScriptIR:
    return _Lowering(checked, out_path).run()
