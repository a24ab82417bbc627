"""Ulysses sequence parallelism around unmodified HF attention.

Each of the `sp` ranks holds a slice of every row's sequence. Everything outside attention is
per-token, so it runs on the slice as is; attention needs the whole sequence, so around it one
all-to-all trades "my tokens, all heads" for "all tokens, my heads" and a second one trades back.
The attention itself is the model's own sdpa or eager function, registered under
``ulysses_<inner>`` through `transformers.AttentionInterface`: sdpa is transformers' shared one;
eager is each model's own `eager_attention_forward` (in the module that defines its attention
class), which needs the causal mask spelled out as an additive float mask.

The data side (`slice_for_sp`): pad rows to a multiple of sp, then cut input_ids, the already
shifted labels and the *global* position_ids into sp slices; every sp rank reads the same rows.
The loss sum and its token count are then reduced over the dp x sp group (`Mesh.loss`).

Packed rows stay separate documents: the attention sees the gathered global position_ids and
builds a block-causal mask from them (a new document starts where positions do not go up by one).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..vocab import ULYSSES_ATTENTIONS

__all__ = ["apply_ulysses", "slice_for_sp", "block_causal_mask", "register_ulysses", "check_heads",
           "is_attention", "local_heads", "eager_function"]


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """(B, 1, S, S) mask: causal, and only within a document of a packed row.

    A document starts where position_ids do not continue the previous token (+1). `dtype=bool`
    gives True = attend (sdpa); a float dtype gives an additive mask (0 / most negative, eager).
    """
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be (batch, seq), got shape {tuple(position_ids.shape)}")
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    doc = starts.cumsum(dim=1)
    same_doc = doc[:, :, None] == doc[:, None, :]
    seq = position_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=position_ids.device).tril()
    mask = (same_doc & causal)[:, None]
    if dtype == torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def check_heads(q_heads: int, kv_heads: int, sp: int) -> None:
    """Ulysses head rules (heads here are the ones this rank holds, i.e. after TP)."""
    if q_heads % sp:
        raise ValueError(f"Ulysses sp={sp} needs the attention heads ({q_heads}) divisible by sp")
    if kv_heads % sp and sp % kv_heads:
        raise ValueError(f"Ulysses sp={sp} needs the KV heads ({kv_heads}) divisible by sp, "
                         f"or sp divisible by them (KV heads are then repeated)")


def is_attention(module) -> bool:
    """An HF attention module, as Ulysses recognises one (it has KV groups and a head_dim)."""
    return hasattr(module, "num_key_value_groups") and hasattr(module, "head_dim")


def local_heads(attn: nn.Module, proj: str, default: int, split: int = 1) -> int:
    """Heads this rank computes through `attn.<proj>`: after TP a projection's weight is a DTensor
    with local rows. `split` divides the rows of a still whole weight the way TP will (a checker
    asking before sharding); `default` answers for an attention module without that projection."""
    linear = getattr(attn, proj, None)
    if linear is None:
        return default
    w = linear.weight
    rows = w.to_local().shape[0] if hasattr(w, "to_local") else w.shape[0]
    return rows // split // attn.head_dim


def eager_function(module):
    """The model's own eager attention (`eager_attention_forward` in the module that defines the
    attention class), or None: transformers keeps no shared "eager" entry."""
    import sys

    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return fn if callable(fn) else None


def _seq_to_heads(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    """(B, H, S/sp, D) on each rank -> (B, H/sp, S, D): gather the sequence, scatter heads."""
    b, h, s, d = x.shape
    x = x.reshape(b, sp, h // sp, s, d).permute(1, 0, 2, 3, 4).contiguous()
    x = funcol.all_to_all_single(x, None, None, group)  # equal splits along dim 0, autograd-aware
    # dim 0 now counts source ranks, i.e. sequence slices in order.
    return x.permute(1, 2, 0, 3, 4).reshape(b, h // sp, sp * s, d)


def _heads_to_seq(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    """(B, S, H/sp, D) -> (B, S/sp, H, D): the way back, on HF's (batch, seq, heads, dim) output."""
    b, s, h, d = x.shape
    x = x.reshape(b, sp, s // sp, h, d).permute(1, 0, 2, 3, 4).contiguous()
    x = funcol.all_to_all_single(x, None, None, group)  # equal splits along dim 0, autograd-aware
    # dim 0 now counts source ranks, i.e. head groups in order.
    return x.permute(1, 2, 0, 3, 4).reshape(b, s // sp, sp * h, d)


def _ulysses_forward(inner_name: str):
    # Every layer of one forward gets the same position_ids tensor: build its mask once.
    last = {"key": None, "mask": None}

    def mask_for(position_ids, group, dtype):
        key = last["key"]
        if position_ids is None or key is None or key[0] is not position_ids or key[1:] != (group, dtype):
            last["mask"] = _global_mask(position_ids, group, inner_name, dtype)
            last["key"] = (position_ids, group, dtype)
        return last["mask"]

    def attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
        group = getattr(module, "sp_group", None)
        if group is None:
            raise RuntimeError(f"{type(module).__name__} runs with Ulysses attention but has no sp group; "
                               f"call apply_ulysses(model, sp_mesh) first")
        sp = dist.get_world_size(group)
        q_heads, kv_heads = query.shape[1], key.shape[1]
        check_heads(q_heads, kv_heads, sp)
        target = module
        if kv_heads % sp:
            # Fewer KV heads than ranks: give each rank the KV head its query heads use.
            rep = sp // kv_heads
            key = key.repeat_interleave(rep, dim=1)
            value = value.repeat_interleave(rep, dim=1)
            # Locally 1 KV head serves q_heads/sp query heads: tell the inner attention so.
            target = _GroupsView(module, (q_heads // sp))
        query = _seq_to_heads(query, group, sp)
        key = _seq_to_heads(key, group, sp)
        value = _seq_to_heads(value, group, sp)

        if attention_mask is None:
            attention_mask = mask_for(kwargs.get("position_ids"), group, query.dtype)
        elif attention_mask.shape[-1] != query.shape[2]:
            raise ValueError(f"Ulysses attention got a mask for {attention_mask.shape[-1]} keys but the "
                             f"gathered sequence has {query.shape[2]}; pass a full-length 4-D mask or none")
        kwargs.pop("position_ids", None)
        inner = eager_function(module) if inner_name == "eager" else ALL_ATTENTION_FUNCTIONS[inner_name]
        if inner is None:
            raise ValueError(f"{type(module).__name__} has no eager_attention_forward for Ulysses to call")
        out, _ = inner(target, query, key, value, attention_mask, **kwargs)
        # Attention weights of local heads would be misleading: return none.
        return _heads_to_seq(out, group, sp), None

    return attention


class _GroupsView:
    """The attention module as the inner function sees it, with another KV-group count."""

    def __init__(self, module: nn.Module, groups: int):
        self._module = module
        self.num_key_value_groups = groups

    def __getattr__(self, name):
        return getattr(self._module, name)


def _global_mask(position_ids, group, inner_name: str, dtype):
    """Mask over the gathered sequence from the gathered global positions; None = plain causal."""
    if position_ids is None:
        raise ValueError("Ulysses attention needs position_ids (global positions of this rank's slice); "
                         "pass them to the model")
    sp = dist.get_world_size(group)
    rows, part = position_ids.shape
    parts = position_ids.new_empty(sp * rows, part)
    dist.all_gather_single(parts, position_ids.contiguous(), group=group)
    full = parts.view(sp, rows, part).permute(1, 0, 2).reshape(rows, sp * part)
    if inner_name == "eager":
        # eager attention masks nothing by itself: even plain causal rows need the mask, additive
        return block_causal_mask(full, dtype)
    expected = torch.arange(full.shape[1], device=full.device).expand_as(full)
    if torch.equal(full, expected):
        return None  # one document per row: sdpa does plain causal attention (is_causal)
    return block_causal_mask(full, torch.bool)


def register_ulysses(inner: str = "sdpa") -> str:
    """Register ``ulysses_<inner>`` with transformers and return that name."""
    if inner not in ULYSSES_ATTENTIONS:
        raise ValueError(f"Ulysses wraps sdpa or eager attention, not {inner!r}")
    name = f"ulysses_{inner}"
    AttentionInterface.register(name, _ulysses_forward(inner))
    return name


def apply_ulysses(model: nn.Module, sp_mesh: DeviceMesh, modules: list[str] | None = None) -> nn.Module:
    """Route `model`'s attention through Ulysses over `sp_mesh`.

    `modules` are the attention modules (a plan's `sp ulysses` globs, resolved); by default every
    module that has `num_key_value_groups` and `head_dim` (`is_attention`). All of them must be
    covered: the batch is sequence-sharded everywhere. The model's attention implementation
    (sdpa or eager) becomes the inner function.
    """
    sp = sp_mesh.size()
    inner = model.config._attn_implementation or "sdpa"
    if inner.startswith("ulysses_"):
        inner = inner[len("ulysses_"):]
    if inner not in ULYSSES_ATTENTIONS:
        raise ValueError(f"Ulysses wraps sdpa or eager attention, not {inner!r}")
    attn = {n: m for n, m in model.named_modules() if is_attention(m)}
    if modules is None:
        modules = list(attn)
    missing = sorted(set(attn) - set(modules))
    if missing:
        raise ValueError(f"Ulysses must cover every attention module; not covered: {missing[:3]}")
    cfg = model.config
    if not modules:
        raise ValueError("sp ulysses: the model has no attention module to wrap")
    for name in modules:  # check everything before changing anything
        if name not in attn:
            raise ValueError(f"sp ulysses: {name!r} is not an attention module")
        mod = attn[name]
        q_heads = local_heads(mod, "q_proj", cfg.num_attention_heads)
        kv_default = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        kv_heads = local_heads(mod, "k_proj", kv_default)
        check_heads(q_heads, kv_heads, sp)
        if inner == "eager" and eager_function(mod) is None:
            raise ValueError(f"sp ulysses with eager attention: {type(mod).__name__}'s module defines no "
                             f"eager_attention_forward to call; use attention = sdpa")
    for name in modules:
        attn[name].sp_group = sp_mesh.get_group()
    model.set_attn_implementation(register_ulysses(inner))
    return model


def slice_for_sp(batch: dict, sp_rank: int, sp: int, pad_id: int = 0) -> dict:
    """This sp rank's slice of a batch of rows {input_ids, labels, position_ids} (B, S).

    Rows are padded to a multiple of sp first: pads get label -100 (no target) and positions that
    start a new document (0, 1, ...), so no real token attends to them. Labels must already be
    shifted (each position holds its next token): slicing never crosses a target.
    """
    for key in ("input_ids", "labels", "position_ids"):
        if key not in batch:
            raise KeyError(f"slice_for_sp needs {key!r} in the batch")
    seq = batch["input_ids"].shape[1]
    pad = (-seq) % sp
    out = dict(batch)
    if pad:
        rows = batch["input_ids"].shape[0]
        fill = {"input_ids": pad_id, "labels": -100}
        for key in ("input_ids", "labels"):
            out[key] = torch.cat([batch[key], batch[key].new_full((rows, pad), fill[key])], dim=1)
        tail = torch.arange(pad, device=batch["position_ids"].device).expand(rows, pad)
        out["position_ids"] = torch.cat([batch["position_ids"], tail.to(batch["position_ids"].dtype)], dim=1)
    part = (seq + pad) // sp
    for key in ("input_ids", "labels", "position_ids"):
        out[key] = out[key][:, sp_rank * part:(sp_rank + 1) * part]
    mask = out.pop("attention_mask", None)
    if mask is not None and not bool(mask.all()):
        # A padding mask of whole rows cannot follow the slices; packed rows need none.
        raise ValueError("slice_for_sp: rows with padding masks are not supported; mark pads with "
                         "label -100 and positions that start a new document instead")
    return out
