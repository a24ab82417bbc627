"""Shrink a model config for `planc verify`: same family, tiny sizes, same divisibility rules.

`planc verify` proves a plan's numerics on a CPU by running the plan's layout on a small copy of
its model. The copy must keep the family (same modeling code, same parameter names, so the
plan's globs still match) and every divisibility rule the plan relies on:

- tp divides the attention heads, the KV heads, the intermediate sizes and (vocab-parallel) the
  vocabulary;
- Ulysses: q heads % sp == 0 and, per tp rank, KV heads % sp == 0 or sp % KV heads == 0 (the
  repeated-KV case is kept when the real model has it); heads % (tp*sp) == 0;
- ep divides the number of experts, and top-k stays <= experts.

Everything else shrinks: 2 layers, hidden 64 (or heads * head_dim where the family derives the
head size), head_dim 16 (8 with many heads), small MLPs, vocab 256.
"""
from __future__ import annotations

import copy
import math

__all__ = ["shrink_config"]

_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
_DEGREES = ("tp", "sp", "ep", "dp_replicate", "dp_shard", "pp")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _heads(q: int, kv: int, tp: int, sp: int) -> tuple[int, int]:
    """Small (q heads, kv heads) keeping the plan's head rules, or ValueError if the real model
    already breaks them (the plan checker refuses such plans)."""
    if q % kv:
        raise ValueError(f"attention heads ({q}) must be a multiple of KV heads ({kv})")
    if kv % tp or q % tp:
        raise ValueError(f"tp={tp} must divide the attention heads ({q}) and KV heads ({kv})")
    if q % (tp * sp):
        raise ValueError(f"heads ({q}) must be divisible by tp*sp={tp * sp}")
    kv_local = kv // tp
    if kv_local % sp == 0:
        per_rank = sp  # one KV head per (tp, sp) rank: the smallest that keeps kv % sp == 0
    elif sp % kv_local == 0:
        per_rank = kv_local  # keep "fewer KV heads than sp ranks": Ulysses repeats them
    else:
        raise ValueError(f"Ulysses sp={sp} needs KV heads per tp rank ({kv_local}) divisible by sp "
                         f"or dividing it")
    new_kv = tp * per_rank
    grouped = new_kv * min(q // kv, 2)  # keep grouped-query attention when the model has it
    return math.lcm(grouped, tp * sp), new_kv


def shrink_config(config, *, layers: int = 2, hidden: int = 64, vocab: int = 256, **degrees):
    """A small copy of `config` (an HF PretrainedConfig) that keeps the rules of `degrees`.

    `degrees` are the plan's mesh degrees (tp, sp, ep, dp_replicate, dp_shard, pp); data-parallel
    ones do not constrain the model and are accepted for convenience.
    """
    unknown = set(degrees) - set(_DEGREES)
    if unknown:
        raise ValueError(f"unknown degree(s) {sorted(unknown)}; expected some of {', '.join(_DEGREES)}")
    for name, d in degrees.items():
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"degree {name} must be an int >= 1, got {d!r}")
    tp, sp, ep = degrees.get("tp", 1), degrees.get("sp", 1), degrees.get("ep", 1)
    cfg = copy.deepcopy(config)

    q = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or q
    new_q, new_kv = _heads(q, kv, tp, sp)
    head_dim = 16 if new_q <= 8 else 8
    cfg.num_attention_heads, cfg.num_key_value_heads = new_q, new_kv
    if getattr(config, "head_dim", None) is not None:
        cfg.head_dim = head_dim
        cfg.hidden_size = hidden
    else:  # the family derives head_dim = hidden / heads
        cfg.hidden_size = new_q * head_dim
    _shrink_mla(cfg)

    cfg.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        cfg.layer_types = list(config.layer_types[:layers])
    cfg.intermediate_size = _round_up(2 * cfg.hidden_size, tp)
    cfg.vocab_size = _round_up(vocab, tp)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ids = getattr(cfg, key, None)
        if isinstance(ids, int) and ids >= cfg.vocab_size:
            setattr(cfg, key, cfg.vocab_size - 1)
        elif isinstance(ids, list):
            setattr(cfg, key, [min(i, cfg.vocab_size - 1) for i in ids])
    _shrink_moe(config, cfg, ep, tp, layers)
    return cfg


def _shrink_mla(cfg) -> None:
    """DeepSeek-style latent attention: shrink the ranks and head parts too."""
    for key, value in (("q_lora_rank", 16), ("kv_lora_rank", 16), ("qk_rope_head_dim", 8),
                       ("qk_nope_head_dim", 8), ("v_head_dim", 16)):
        if getattr(cfg, key, None) is not None:
            setattr(cfg, key, value)
    if getattr(cfg, "qk_rope_head_dim", None) is not None and getattr(cfg, "head_dim", None) is not None:
        cfg.head_dim = cfg.qk_rope_head_dim
    if getattr(cfg, "qk_nope_head_dim", None) is not None and hasattr(cfg, "qk_head_dim"):
        cfg.qk_head_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim


def _shrink_moe(config, cfg, ep: int, tp: int, layers: int) -> None:
    key = next((k for k in _EXPERT_KEYS if getattr(config, k, None)), None)
    if key is None:
        if ep > 1:
            raise ValueError(f"ep={ep} needs an MoE model; {type(config).__name__} has no experts")
        return
    experts = getattr(config, key)
    if experts % ep:
        raise ValueError(f"ep={ep} must divide the number of experts ({experts})")
    new_experts = _round_up(max(4, 2 * ep), ep)
    setattr(cfg, key, new_experts)
    top_k = getattr(config, "num_experts_per_tok", None)
    if top_k:
        cfg.num_experts_per_tok = min(top_k, 2, new_experts)
    if getattr(config, "moe_intermediate_size", None):
        cfg.moe_intermediate_size = _round_up(32, tp)
    if getattr(config, "shared_expert_intermediate_size", None):
        cfg.shared_expert_intermediate_size = _round_up(64, tp)
    # Keep at least one MoE layer among the few left (and one dense one where the model has some).
    if getattr(config, "decoder_sparse_step", None):
        cfg.decoder_sparse_step = min(config.decoder_sparse_step, layers)
    if isinstance(getattr(config, "mlp_only_layers", None), list):
        cfg.mlp_only_layers = [i for i in config.mlp_only_layers if i < layers - 1]
    if getattr(config, "first_k_dense_replace", None):
        cfg.first_k_dense_replace = min(config.first_k_dense_replace, layers - 1)
    if getattr(config, "n_group", None):  # grouped routing: one group holds every expert
        cfg.n_group = 1
        cfg.topk_group = 1
