"""The lowered plan: what the template needs and nothing else (codegen reads only this)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SettingLine:
    key: str  # "train.lr"
    value: Any  # a plain Python value, emitted with repr()
    where: str  # "demo.veo:27", or "demo.veo:25 (default)"


@dataclass
class Step:
    """One parallelize step, in the order the compiler applies them."""

    kind: str  # tp | ep | sp | checkpoint | compile | fsdp | replicate
    where: str
    why: str
    globs: list[str] = field(default_factory=list)
    style: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    rules: list[tuple[str, list[str], str]] = field(default_factory=list)  # tp: (style, globs, where)
    from_model: bool = False  # tp: start from the config's own base_model_tp_plan


@dataclass
class SourceIR:
    name: str
    fields: list[str]  # the source keys the script passes (path, format, text, ...)


@dataclass
class ScriptIR:
    name: str
    plan_path: str  # as given to planc (sanitised for comments)
    plan_file: str  # basename, for `# demo.veo:12` comments
    out_path: str  # generated/<name>.py
    world: int
    device: str
    description: str
    settings: list[SettingLine]
    where: dict[str, str]  # section -> "demo.veo:11" or "demo.veo:13-16"
    mesh: dict[str, str]  # build_mesh keyword -> settings key ("dp_shard" -> "mesh.dp_shard")
    steps: list[Step]
    sources: list[SourceIR]
    tp_loss: bool = False  # vocab-sharded logits: cross-entropy and backward under loss_parallel
    tp_sequence: bool = False  # sequence-parallel norms: an explicit block-causal mask is needed
    moe_aux: bool = False  # an MoE model: its load-balancing loss joins the backward
    kernels: dict[str, str] = field(default_factory=dict)  # op -> settings key
    checkpoint: bool = False
    features: set[str] = field(default_factory=set)  # fsdp, ddp, tp, sp, ep, checkpointing, compile, kernels
