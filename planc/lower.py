"""Lower a checked plan to the script IR: concrete degrees, the settings the script uses (each with
the plan line it comes from), and the parallelize steps in the one order that composes:
TP/EP/SP -> activation checkpointing -> compile -> FSDP (bottom-up) / replication."""
from __future__ import annotations

import dataclasses
import os
import re

from .checks.vision import BUDGET_KEYS, media_settings
from .commands import launch
from .ir import Call, Code, Items, ScriptIR, SettingLine, SourceIR, Stmt
from .layout import DIMS, Layout
from .lower_loop import lower_loop
from .model_tree import num_experts
from .schema import DATA, KERNELS
from .steps import build_steps


def safe_comment_text(text: str) -> str:
    """Paths in comments and docstrings: nothing that could end a comment or a string."""
    return re.sub(r"[^\w./+=,:@-]", "_", text)


def docstring_path(path: str) -> str:
    """A path as a docstring or comment shows it: as is when it is plain, else with every other
    character replaced (`\"\"\"`, a backslash or a line break in a path must not reach the code)."""
    return path if re.fullmatch(r"[\w./+=,:@-]+", path) else safe_comment_text(path)


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
        if p["model.trust_remote_code"]:
            self.add("model.trust_remote_code")
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
        vl = ctx.tree.kind == "vl"
        data_keys = ["data.tokenizer", "data.max_len", "data.pack"]
        if p["data.pack"] == "dynamic":
            data_keys += ["data.tokens", "data.warmup_steps"]
            data_keys += [k for k in BUDGET_KEYS if vl and p[k] is not None]
        data_keys += ["data.shuffle"]
        if any(s["streaming"] for s in p.sources):
            data_keys += ["data.shuffle_buffer"]
        if sft:
            data_keys += ["data.chat_template", "data.system_prompt", "data.truncation"]
        data_keys += ["data.on_bad_record"]
        if vl:  # the media settings the plan writes (the others are the model family's own)
            data_keys += [f"data.{k}" for k in media_settings(p)]
        for k in data_keys:
            self.add(k)
        # train
        for k in ("train.epochs" if p["train.epochs"] else "train.steps", "train.global_batch", "train.micro_batch", "train.lr", "train.weight_decay",
                  "train.betas", "train.eps", "train.schedule", "train.warmup"):
            self.add(k)
        if p["train.schedule"] != "constant":
            self.add("train.min_lr")
        diffusion = p["train.objective"] == "block_diffusion"
        if diffusion:  # runtime/diffusion/: the objective's block, noise range and mask token
            for k in ("train.objective", "train.block", "train.noise", "train.mask_token"):
                self.add(k)
        for k in ("train.clip", "train.seed", "train.log_every"):
            self.add(k)
        moe_aux = _moe_aux_coef(ctx.tree.text_config) is not None and not diffusion
        if moe_aux:
            coef = p["train.moe_aux_loss"]
            self.add("train.moe_aux_loss", _moe_aux_coef(ctx.tree.text_config) if coef is None else coef,
                     None if coef is not None else "model config (router_aux_loss_coef)")
        has_ckpt = "checkpoint" in p.blocks
        output = p["train.output"] or (None if has_ckpt else f"out/{p.name}")
        self.add("train.output", output)
        lora = next((r for r in p.rules if r.kind == "lora"), None)
        if lora is not None:  # runtime.lora.LoraSpec's numbers, from the `lora` line
            for k in ("rank", "alpha", "dropout"):
                opt = lora.options[k]
                self.add(f"lora.{k}", opt.value, f"{self.file}:{(opt.span or lora.span).line}")
        if "fsdp" in kinds:
            self.add("train.param_dtype")
            self.add("train.reduce_dtype")
        loop = lower_loop(self)  # validation, epochs, profiling, trackers, MFU: only what the plan uses
        if has_ckpt:
            self.add("checkpoint.dir")
            self.add("checkpoint.every", p["checkpoint.every"] or p["train.steps"] or 0)  # 0 (epochs): the end
            self.add("checkpoint.keep")
            self.add("checkpoint.export")
        kernels = {}
        if "kernels" in p.blocks:
            for op in KERNELS.keys:
                if p[f"kernels.{op}"] != "off":
                    self.add(f"kernels.{op}")
                    kernels[op] = f"kernels.{op}"
        steps = build_steps(p, self.file, ctx.matches, ctx.tree.kind)
        kinds = {s.kind for s in steps}
        tp_sequence = "sequence" in {r.style for r in p.rules if r.kind == "tp"}
        ir = ScriptIR(
            name=p.name, plan_path=safe_comment_text(p.file), plan_file=self.file, out_path=self.out_path,
            world=ctx.world, device=p["mesh.device"], description=self.description(),
            settings=self.settings, where=self.wheres(), mesh=mesh,
            build_mesh=Stmt(Call("runtime.dist", "build_mesh", via="dist"), ("mesh",), wrap=None,
                            span=p.blocks.get("mesh", p.name_span)),
            build_model=self.build_model(), steps=steps, build_optimizer=self.build_optimizer(), sources=sources,
            apply_kernels=self.apply_kernels(kernels), kernels=kernels, checkpoint=has_ckpt,
            # with any TP the logits may come out vocab-sharded (a `loss` rule, or the model's own plan):
            # the loop then computes cross-entropy and backward under loss_parallel (a no-op otherwise)
            tp_loss="tp" in kinds, tp_sequence=tp_sequence, moe_aux=moe_aux, gpus_per_node=p["mesh.gpus_per_node"],
            modality=ctx.tree.kind, objective=p["train.objective"], loop=loop)
        return derive(ir)

    # the set-up statements the script runs and the dry run executes (planc/ir.py) -----------------
    def build_model(self) -> Stmt:
        kwargs = (("dtype", Code("cfg.model.dtype")), ("attention", Code("cfg.model.attention")))
        if self.plan["model.trust_remote_code"]:  # the directory's own modeling code runs
            kwargs += (("trust_remote_code", Code("cfg.model.trust_remote_code")),)
        call = Call("runtime.model", "build_meta", (Code("cfg.model.config"),), kwargs, via="models")
        return Stmt(call, ("model",), wrap=None, span=self.plan.value_span("model.config"))

    def apply_kernels(self, kernels: dict) -> list[Stmt]:
        if not kernels:
            return []
        choices = "{" + ", ".join(f'"{op}": cfg.{key}' for op, key in kernels.items()) + "}"
        span = self.plan.blocks.get("kernels")
        return [Stmt(Call("runtime.kernels", "apply_kernels", (Code("model"), Code(choices), Code("info.device"))),
                     ("kernels",), span=span),
                Stmt(Call("", "info", (Code('f"kernels: {kernels}"'),), via="log"), span=span)]

    def lr_parts(self) -> Items | None:
        """`lr "glob" scale = x` rules: (glob, x * cfg.train.lr) pairs, each with its plan line."""
        items = tuple(((g.pattern, Code(f"{float(r.options['scale'].value)!r} * cfg.train.lr")),
                       f"{self.file}:{r.span.line}") for r in self.plan.rules if r.kind == "lr" for g in r.globs)
        return Items(items) if items else None

    def build_optimizer(self) -> Stmt:
        kwargs = tuple((k, Code(f"cfg.train.{k}")) for k in ("lr", "weight_decay", "betas", "eps"))
        parts = self.lr_parts()
        if parts is not None:
            kwargs += (("parts", parts),)
        call = Call("runtime.optim", "build_optimizer", (Code("model"),), kwargs, via="optim")
        return Stmt(call, ("optimizer",), span=self.plan.span("train.optimizer"))

    def wheres(self) -> dict[str, str]:
        return {
            "model": self.block_where("model"), "mesh": self.block_where("mesh"),
            "parallelize": self.block_where("parallelize"), "data": self.block_where("data"),
            "train": self.block_where("train"), "checkpoint": self.block_where("checkpoint"),
            "kernels": self.block_where("kernels"), "optimizer": self._opt_where(),
            "clip": self.where("train.clip"), "every": self.where("checkpoint.every").replace(" (default)", ""),
            "export": self.where("checkpoint.export").replace(" (default)", ""),
            "objective": self.where("train.objective"),
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


# what the train loop imports for the features it uses, beside the set-up's own calls
_LOOP_IMPORTS = {"tp_loss": ("runtime.parallel.tp", "loss_context"),
                 "sp": ("runtime.parallel.ulysses", "slice_for_sp"),
                 "block_mask": ("runtime.parallel.ulysses", "block_causal_mask"),
                 "fused_ce": ("runtime.kernels", "fused_lm_loss_sum")}
# import lines in this order (a module not named here comes after them, by name)
_IMPORT_ORDER = ["runtime.data.multimodal", "runtime.kernels", "runtime.parallel.globs", "runtime.parallel.tp",
                 "runtime.parallel.ep", "runtime.parallel.mesh_ep", "runtime.parallel.ulysses",
                 "runtime.parallel.ulysses_vl", "runtime.parts", "runtime.parallel.checkpointing",
                 "runtime.parallel.offload", "runtime.parallel.compile", "runtime.parallel.fsdp", "runtime.parallel.ddp"]
# build_loader keywords of the data features a plan may use: settings key -> keyword
_LOADER_KEYS = ("data.tokens", "data.warmup_steps", "data.chat_template", "data.system_prompt", "data.truncation",
                "data.shuffle_buffer")

# vision-language: the processor's and the VL loader's keywords, and the loop's imports
_MEDIA = tuple(f"data.{k}" for k in DATA.stmts["media"].body)
_VL_LOADER_KEYS = ("data.tokens", *BUDGET_KEYS, "data.warmup_steps", "data.system_prompt", "data.truncation")
_VL_IMPORTS = (("runtime.data.multimodal", "build_processor"), ("runtime.data.multimodal", "build_vl_loader"),
               ("runtime.data.multimodal", "model_inputs"))
_VL_SP = ("runtime.parallel.ulysses_vl", "slice_labels")


def derive(ir: ScriptIR) -> ScriptIR:
    """Fill in what follows from the IR's steps and settings: the features, the mesh call, the
    imports, the loader's keywords, the launch lines. Lowering calls it, and so does anything that
    changes an IR's steps or settings (planc verify's variants), so emit only formats."""
    kinds = {s.kind for s in ir.steps}
    keys = {s.key for s in ir.settings}
    ir.features = kinds | ({"kernels"} if ir.kernels else set())
    ir.block_mask = ir.tp_sequence and "sp" not in kinds
    ir.model_parallel = bool(kinds & {"tp", "ep", "sp"})
    ir.build_mesh = dataclasses.replace(ir.build_mesh, call=Call("runtime.dist", "build_mesh", (Code("info"),), tuple(
        (dim, Code(f"cfg.{key}")) for dim, key in ir.mesh.items() if dim != "ep"), via="dist"))
    names: dict[str, list[str]] = {}

    def need(module: str, name: str) -> None:
        names.setdefault(module, [])
        if name not in names[module]:
            names[module].append(name)

    def walk(expr) -> None:
        if isinstance(expr, Call):
            if expr.via is None:
                need(expr.module, expr.name)
            for a in list(expr.args) + [v for _, v in expr.kwargs]:
                walk(a)
        elif isinstance(expr, Items):
            for item, _ in expr.items:
                walk(item)
        elif isinstance(expr, (tuple, list)):
            for x in expr:
                walk(x)

    for _, stmts in ir.setup():
        for st in stmts:
            walk(st.call)
    flags = {"tp_loss": ir.tp_loss, "sp": "sp" in kinds and ir.modality == "text", "block_mask": ir.block_mask, "fused_ce": "fused_ce" in ir.kernels}
    for flag, (module, name) in _LOOP_IMPORTS.items():
        if flags[flag]:
            need(module, name)
    if ir.modality == "vl":
        for module, name in _VL_IMPORTS + ((_VL_SP,) if "sp" in kinds else ()):
            need(module, name)
    rank = {m: i for i, m in enumerate(_IMPORT_ORDER)}
    ir.imports = {m: sorted(names[m]) for m in sorted(names, key=lambda m: (rank.get(m, len(rank)), m))}
    if ir.modality == "vl":  # the processor renders conversations and media; the VL loader packs them
        ir.processor_kwargs = [(k.split(".")[1], f"cfg.{k}") for k in ("data.chat_template", *_MEDIA) if k in keys]
        ir.loader_kwargs = [(k.split(".")[1], f"cfg.{k}") for k in _VL_LOADER_KEYS if k in keys]
    else:
        ir.loader_kwargs = [(k.split(".")[1], f"cfg.{k}") for k in _LOADER_KEYS if k in keys]
    # rows must split evenly over the ranks that shard the sequence (Ulysses, sequence-parallel TP)
    parts = (["cfg.mesh.sp"] if "sp" in kinds else []) + (["cfg.mesh.tp"] if ir.tp_sequence else [])
    ir.pad_multiple = " * ".join(parts)
    ir.one_process = _one_process(ir)
    how = launch(ir.world, ir.gpus_per_node, docstring_path(ir.out_path), ir.name)
    ir.launch = how.node() if how.multi_node else how.single()
    ir.launch_lines = how.lines()
    return ir


def _one_process(ir: ScriptIR) -> str:
    """The overrides that run a data-parallel plan as one process (empty for other layouts)."""
    if ir.world == 1 or set(ir.mesh) - {"dp_replicate", "dp_shard"}:
        return ""
    values = {s.key: s.value for s in ir.settings}
    return " ".join(f"--{key} 1" for key in ir.mesh.values() if values.get(key, 1) != 1)


def lower(checked, out_path: str) -> ScriptIR:
    return _Lowering(checked, out_path).run()
