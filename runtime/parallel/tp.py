"""Tensor parallelism on a 1-D `tp` mesh with DTensor `parallelize_module` (Megatron layout).

A plan's `tp` rules arrive here as ``[(style, [module names]), ...]`` with concrete names:

- ``colwise``  Linear sharded on its output dim (q/k/v, gate/up); on the lm_head it means
               "shard, then gather the logits" (HF's ``colwise_gather_output``).
- ``rowwise``  Linear sharded on its input dim (o_proj, down_proj); its output is summed over tp.
- ``sequence`` norms run on a sequence shard (Megatron sequence parallelism): the residual stream
               between blocks stays split along the sequence, rowwise outputs reduce-scatter into
               it and colwise inputs all-gather from it.
- ``vocab``    vocab-parallel input embedding (rows of the table sharded over tp).
- ``loss``     lm_head sharded over the vocabulary with sharded logits; compute the loss inside
               `loss_context(logits)` so cross-entropy runs on the shards (no full logits).

Parameters that stay whole inside a TP region but see only this rank's heads (Qwen3's per-head
``q_norm``/``k_norm``) get Replicate DTensors whose gradients are summed over tp; they are found
by `apply_tp` itself, so a plan needs no rule for them.

What the caller owes (DESIGN.md): pass `position_ids` explicitly when ``sequence`` is used
(HF would build them from the local, shorter length), and with packed rows also a 4-D
block-causal mask built from the global positions (`runtime.parallel.ulysses.block_causal_mask`).
Use AdamW with ``foreach=False`` when TP runs without FSDP: plain tensors then sit beside DTensors.
"""
from __future__ import annotations

import contextlib
import re

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from ..vocab import TP_STYLES

__all__ = ["apply_tp", "tp_rules_from_config", "loss_context"]

# HF `base_model_tp_plan` styles that touch MoE experts: expert tensor parallelism is not built
# (experts are split with EP instead), so these entries are reported back, not applied.
_HF_EXPERT_STYLES = {"packed_colwise", "moe_tp_experts", "grouped_gemm", "ep_dispatch_experts"}


def _check_rules(model: nn.Module, rules) -> dict[str, str]:
    """{module name: style} after checking styles, names and that no module is claimed twice."""
    modules = dict(model.named_modules())
    style_of: dict[str, str] = {}
    for rule in rules:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
            raise ValueError(f"a tp rule is (style, [module names]), got {rule!r}")
        style, names = rule
        if style not in TP_STYLES:
            raise ValueError(f"unknown tp style {style!r}; expected one of {', '.join(TP_STYLES)}")
        if isinstance(names, str):
            names = [names]
        if not names:
            raise ValueError(f"tp {style} rule names no module")
        for name in names:
            if name not in modules:
                raise ValueError(f"tp {style}: no module named {name!r} in the model")
            if name in style_of:
                raise ValueError(f"module {name!r} is claimed by two tp rules "
                                 f"({style_of[name]} and {style})")
            style_of[name] = style
    return style_of


def _check_shapes(model: nn.Module, style_of: dict[str, str], tp: int) -> None:
    """Refuse shardings that cannot split evenly, with the module and the numbers."""
    modules = dict(model.named_modules())
    for name, style in style_of.items():
        mod = modules[name]
        if style in ("colwise", "rowwise", "loss") and not isinstance(mod, nn.Linear):
            raise ValueError(f"tp {style} needs an nn.Linear, but {name!r} is {type(mod).__name__}")
        if style == "vocab" and not isinstance(mod, nn.Embedding):
            raise ValueError(f"tp vocab needs an nn.Embedding, but {name!r} is {type(mod).__name__}")
        if style == "sequence" and not any(p.dim() == 1 for p in mod.parameters(recurse=False)):
            raise ValueError(f"tp sequence is for norms (1-D weights); {name!r} is {type(mod).__name__}")
        if style in ("colwise", "loss") and mod.out_features % tp:
            raise ValueError(f"tp {style} on {name!r}: out_features {mod.out_features} is not divisible by tp={tp}")
        if style == "rowwise" and mod.in_features % tp:
            raise ValueError(f"tp rowwise on {name!r}: in_features {mod.in_features} is not divisible by tp={tp}")
        if style == "vocab" and mod.num_embeddings % tp:
            raise ValueError(f"tp vocab on {name!r}: vocab size {mod.num_embeddings} is not divisible by "
                             f"tp={tp} (pad the vocabulary to a multiple of tp)")
        # Attention projections must split on whole heads: HF views them as (..., -1, head_dim).
        parent = modules[name.rpartition(".")[0]] if "." in name else model
        head_dim = getattr(parent, "head_dim", None)
        if style == "colwise" and isinstance(head_dim, int) and mod.out_features % (tp * head_dim):
            heads = mod.out_features // head_dim
            raise ValueError(f"tp colwise on {name!r}: {heads} heads are not divisible by tp={tp}")


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _gather_sequence_hook(tp_mesh: DeviceMesh):
    """Forward pre-hook: the block's input (a local sequence shard) becomes a full-sequence
    Replicate DTensor, once per block rather than once per projection (q, k, v share it)."""

    def to_replicate(x):
        if isinstance(x, DTensor):
            return x.redistribute(tp_mesh, [Replicate()])
        return DTensor.from_local(x, tp_mesh, [Shard(1)], run_check=False).redistribute(tp_mesh, [Replicate()])

    def hook(module, args, kwargs):
        # HF calls attention with hidden_states=..., MLPs positionally: accept both.
        if args and isinstance(args[0], torch.Tensor):
            return (to_replicate(args[0]), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": to_replicate(kwargs["hidden_states"])}
        raise TypeError(f"sequence-parallel TP: cannot find the hidden states among the inputs of "
                        f"{type(module).__name__}")

    return hook


def _head_norms(model: nn.Module, colwise_parents: set[str], style_of: dict[str, str]) -> list[str]:
    """Per-head norms (weight of size head_dim) beside colwise projections, e.g. Qwen3 q_norm."""
    found = []
    modules = dict(model.named_modules())
    for parent_name in colwise_parents:
        parent = modules[parent_name] if parent_name else model
        head_dim = getattr(parent, "head_dim", None)
        for child_name, child in parent.named_children():
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            weight = getattr(child, "weight", None)
            if (full not in style_of and isinstance(head_dim, int) and isinstance(weight, torch.Tensor)
                    and weight.dim() == 1 and weight.numel() == head_dim):
                found.append(full)
    return sorted(found)


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, rules) -> nn.Module:
    """Shard `model` in place over `tp_mesh` following `rules` ([(style, [module names])])."""
    style_of = _check_rules(model, rules)
    tp = tp_mesh.size()
    _check_shapes(model, style_of, tp)
    seq = "sequence" in style_of.values()
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {id(m): n for n, m in model.named_modules()}
    embed_name, head_name = names.get(id(embed)), names.get(id(head))
    if (embed is not None and head is not None and embed.weight is head.weight
            and {style_of.get(embed_name), style_of.get(head_name)} & {"vocab", "loss", "colwise"}):
        raise ValueError("tp vocab/loss/colwise on tied input and output embeddings is not supported; "
                         "untie them (tie_word_embeddings=false) or leave both unsharded")
    if seq:
        _refuse_sequence_with_moe(model)

    # In sequence-parallel mode the residual stream is a local sequence shard (Shard(1)).
    stream = Shard(1) if seq else Replicate()
    plan: dict[str, object] = {}
    for name, style in style_of.items():
        if style == "colwise":
            # The lm_head under `colwise` gathers its logits, so HF's own loss sees whole rows.
            plan[name] = ColwiseParallel(output_layouts=Replicate()) if name == head_name else ColwiseParallel()
        elif style == "rowwise":
            plan[name] = RowwiseParallel(output_layouts=stream)
        elif style == "sequence":
            plan[name] = SequenceParallel(use_local_output=True)
        elif style == "vocab":
            plan[name] = RowwiseParallel(input_layouts=Replicate(), output_layouts=stream)
        elif style == "loss":
            plan[name] = ColwiseParallel(input_layouts=stream, output_layouts=Shard(-1), use_local_output=False)

    colwise_parents = {_parent(n) for n, s in style_of.items() if s == "colwise" and n != head_name}
    for norm in _head_norms(model, colwise_parents, style_of):
        # Input (batch, seq, local heads, head_dim): the heads dim is the shard, the weight is
        # Replicate, so DTensor sums its gradient over tp ranks (each saw other heads).
        plan[norm] = SequenceParallel(sequence_dim=2, use_local_output=True)

    if seq:
        # Blocks whose projections are colwise read the full sequence: gather it once per block.
        # (the lm_head is left to its own style)
        for parent in sorted(colwise_parents):
            mod = model.get_submodule(parent) if parent else model
            mod.register_forward_pre_hook(_gather_sequence_hook(tp_mesh), with_kwargs=True)
        # The stream must enter and leave sharded even when the ends are not tensor-parallel.
        if embed_name is not None and embed_name not in style_of:
            plan[embed_name] = PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Shard(1))
        if head_name is not None and head_name not in style_of:
            plan[head_name] = PrepareModuleInput(input_layouts=Shard(1), desired_input_layouts=Replicate(),
                                                 use_local_output=True)
    _check_coverage(model, plan, colwise_parents, seq, {embed_name, head_name})
    parallelize_module(model, tp_mesh, plan)
    if seq and embed is not None:
        embed.register_forward_pre_hook(_sequence_divisible(tp))
    return model


def _sequence_divisible(tp: int):
    """Sequence-parallel shards must be equal: refuse other lengths before any collective."""

    def hook(module, args):
        seq = args[0].shape[1]
        if seq % tp:
            raise ValueError(f"sequence-parallel TP needs the sequence length ({seq}) divisible by tp={tp}; "
                             f"pad rows to a multiple of {tp}")

    return hook


def _refuse_sequence_with_moe(model: nn.Module) -> None:
    """MoE blocks would route only this rank's sequence shard with replicated expert weights, whose
    gradients then differ per tp rank; that layout is not built."""
    for name, mod in model.named_modules():
        if any(p.dim() == 3 for p in mod.parameters(recurse=False)):
            raise ValueError(f"tp sequence with MoE experts ({name!r}) is not supported: use tp without "
                             f"`sequence` (experts then see the whole sequence) or Ulysses `sp`")


def _check_coverage(model: nn.Module, plan: dict, colwise_parents: set[str], seq: bool, ends: set) -> None:
    """Refuse, before touching the model, a layout that would train a parameter wrong silently.

    A whole parameter inside a block with colwise projections sees only this rank's shard of the
    block's activations (its heads, its MLP columns); with ``sequence``, one anywhere on the
    residual stream sees only this rank's tokens. Either way its gradient would be partial on
    each rank and never summed (or its output wrong, like a down_proj left out of `rowwise`).
    """
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    for name in owners:
        if name in plan:
            continue
        inside = any(name == p or name.startswith(p + ".") or not p for p in colwise_parents)
        if inside:
            raise ValueError(f"{name!r} keeps whole parameters inside a tensor-parallel block, where it "
                             f"would see only this rank's shard; give it a tp rule (e.g. rowwise)")
        if seq and name not in ends:
            raise ValueError(f"with tp sequence, {name!r} would see only this rank's tokens; give it a tp "
                             f"rule (`sequence` for norms)")


def loss_context(logits: torch.Tensor):
    """`loss_parallel()` when `logits` are sharded over the vocabulary (a `loss` rule), else a
    no-op context. Compute the cross-entropy AND call `backward()` inside it: both dispatch on the
    vocab shards, so full logits are never gathered."""
    if isinstance(logits, DTensor) and any(
            isinstance(p, Shard) and p.dim in (-1, logits.ndim - 1) for p in logits.placements):
        return loss_parallel()
    return contextlib.nullcontext()


def tp_rules_from_config(model: nn.Module):
    """Turn the model's own tensor-parallel plan into `apply_tp` rules.

    The plan is transformers' merged `model.tp_plan` (the config's `base_model_tp_plan` under the
    base-model prefix, plus the head's and the vocab-parallel embedding). Returns
    ``(rules, skipped)``; `skipped` lists ``(pattern, hf_style, reason)`` for entries not applied:
    MoE expert sharding (EP does that), per-head norms (`apply_tp` finds them), tied embeddings
    (sharding one weight two ways is refused) and patterns matching no module. An HF style this
    runtime does not know raises ValueError.
    """
    plan = dict(getattr(model, "tp_plan", None) or {})
    if not plan:
        raise ValueError(f"{type(model).__name__} has no tensor-parallel plan in its config; write tp rules")
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = embed is not None and head is not None and embed.weight is head.weight
    ends = {n for n, m in model.named_modules() if m is embed or m is head}

    names = [n for n, _ in model.named_modules() if n]
    by_style: dict[str, list[str]] = {}
    skipped = []
    for pattern, hf_style in plan.items():
        rx = re.compile(re.escape(pattern).replace(r"\*", r"[^.]+") + r"\Z")
        hits = [n for n in names if rx.match(n)]
        if hf_style in _HF_EXPERT_STYLES or ".experts." in pattern + ".":
            skipped.append((pattern, hf_style, "MoE experts are split by expert parallelism (ep), not tp"))
            continue
        if hf_style == "replicated_with_grad_allreduce":
            skipped.append((pattern, hf_style, "per-head norm: apply_tp handles it without a rule"))
            continue
        if tied and set(hits) & ends:
            skipped.append((pattern, hf_style, "tied input/output embeddings stay whole"))
            continue
        style = {"colwise": "colwise", "rowwise": "rowwise", "colwise_gather_output": "colwise",
                 "embedding_rowwise": "vocab"}.get(hf_style)
        if style is None:
            raise ValueError(f"HF tp style {hf_style!r} (for {pattern!r}) is not supported by this runtime")
        if not hits:
            skipped.append((pattern, hf_style, "matches no module of this model"))
            continue
        by_style.setdefault(style, []).extend(hits)
    return list(by_style.items()), skipped
