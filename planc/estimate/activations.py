"""Activation memory of transformer layers, after Korthikanti et al., "Reducing Activation
Recomputation in Large Transformer Models" (2022), section 4.

The paper's GPT layer (16-bit activations, 1-byte dropout masks, MLP of 4h, a heads) stores

    no parallelism              s*b*h * (34 + 5*a*s/h)
    tensor parallel t           s*b*h * (10 + 24/t + 5*a*s/(h*t))
    tensor + sequence parallel  s*b*h/t * (34 + 5*a*s/h)
    + selective recomputation   s*b*h/t * 34
    full recomputation          2*s*b*h            (the layer input only)

`korthikanti` returns exactly those. `layer_terms` rebuilds them term by term so the same
accounting applies to the layers planc trains (grouped-query attention, SwiGLU or MoE MLPs, no
dropout, sdpa attention that never stores the s*s scores, Ulysses sequence parallelism); with the
paper's GPT settings it reduces to the formulas above, and on transformers' own Llama and Qwen3
layers it equals the bytes autograd really keeps (tests/test_estimate.py checks both).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model_tree import num_experts


def korthikanti(s: int, b: int, h: int, a: int, t: int = 1, *, sp: bool = False,
                recompute: str | None = None) -> float:
    """Bytes of one GPT layer's stored activations, as published (recompute: None|selective|full)."""
    if recompute == "full":
        return 2 * s * b * h / (t if sp else 1)
    if recompute == "selective":
        return s * b * h * 34 / t if sp else s * b * h * (10 + 24 / t)
    if sp:
        return s * b * h / t * (34 + 5 * a * s / h)
    return s * b * h * (10 + 24 / t + 5 * a * s / (h * t))


@dataclass
class LayerShape:
    h: int  # hidden size
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int = 0  # dense MLP intermediate size (0: none)
    gated: bool = True  # SwiGLU (gate, up, down) rather than a GELU MLP
    experts: int = 0  # routed experts (0: dense layer)
    top_k: int = 0
    expert_ffn: int = 0
    shared_ffn: int = 0  # an always-on shared expert beside the routed ones
    dropout: bool = False  # attention / residual dropout masks (1 byte per element)
    scores: bool = False  # the attention stores its s x s scores (eager); sdpa/flash does not
    norm_upcast: bool = False  # RMSNorm computed in fp32, as transformers' Llama/Qwen/Mistral norms
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)


def gpt_shape(h: int, a: int) -> LayerShape:
    """The paper's layer: MHA, GELU MLP of 4h, dropout, scores stored."""
    return LayerShape(h=h, heads=a, kv_heads=a, head_dim=h // a, ffn=4 * h, gated=False, dropout=True,
                      scores=True)


def layer_terms(L: LayerShape, s: int, b: int, p: int = 2, *, t: int = 1, seq_tp: bool = False,
                u: int = 1, selective: bool = False) -> dict[str, float]:
    """Stored bytes of one layer, term by term. s: tokens per row, b: rows, p: bytes per activation,
    t: tensor-parallel degree (seq_tp: norms and residuals sequence-sharded too), u: Ulysses degree
    (every term is divided by u: outside attention a rank holds s/u tokens, inside it all s tokens
    of a/u heads). Terms inside the TP region are divided by t; the rest only with seq_tp."""
    sb = s * b / u
    rep = t if seq_tp else 1  # what sits outside the TP region (norms, residual stream, masks)
    hq, hkv = L.heads * L.head_dim, L.kv_heads * L.head_dim
    mask = 1 if L.dropout else 0
    if L.norm_upcast:
        # x.float() (kept by pow), rsqrt (one fp32 per token) and the normalised x in the compute
        # dtype (kept by the weight multiply); the norm's output is the next block's input
        norms = 2 * (4 * sb * L.h + 4 * sb + p * sb * L.h) / rep
    else:
        norms = 2 * p * sb * L.h / rep  # the paper's LayerNorm keeps its input
    terms = {
        "norm inputs": norms,
        "qkv input": p * sb * L.h / rep,
        "q, k": p * sb * (hq + hkv) / t,
        "v": p * sb * hkv / t,
        "attention output": p * sb * hq / t,  # the o_proj input
        "dropout masks": 2 * mask * sb * L.h / rep,
    }
    if L.qk_norm:  # the same three tensors per head of q and of k, inside the TP region
        terms["q, k norms"] = (4 * sb * (hq + hkv) + 4 * sb * (L.heads + L.kv_heads) + p * sb * (hq + hkv)) / t
    if L.scores and not selective:
        # softmax output (p), and with dropout its mask (1) and output (p): the paper's 5as^2b
        terms["attention scores"] = (p + (1 + p) * mask) * L.heads * s * sb / t
    elif not L.scores:
        terms["attention lse"] = 4 * L.heads * sb / t  # flash/sdpa keep one fp32 per row and head
    terms["mlp input"] = p * sb * L.h / rep
    if L.experts:
        rows = sb * L.top_k  # (token, expert) pairs; EP moves them, the count stays (uniform routing)
        terms["router"] = 4 * sb * L.experts
        terms["expert inputs"] = p * rows * L.h
        terms["expert intermediates"] = 4 * p * rows * L.expert_ffn
        terms["expert outputs"] = p * rows * L.h
        if L.shared_ffn:
            terms["shared expert"] = 4 * p * sb * L.shared_ffn / t
    if L.ffn and not L.experts:
        terms["mlp intermediates"] = (4 if L.gated else 2) * p * sb * L.ffn / t
    return terms


def layer_bytes(L: LayerShape, s: int, b: int, p: int = 2, **kw) -> float:
    return sum(layer_terms(L, s, b, p, **kw).values())


def rotary_bytes(L: LayerShape, s: int, b: int, p: int = 2, *, u: int = 1) -> float:
    """cos and sin of the rotary embedding: made once per forward and kept by every layer (the
    same two tensors), so they count once per model."""
    return 2 * p * s * b * L.head_dim / u


def checkpointed_layer_bytes(L: LayerShape, s: int, b: int, p: int = 2, *, t: int = 1,
                             seq_tp: bool = False, u: int = 1) -> float:
    """What a fully recomputed layer keeps between forward and backward: its input."""
    return p * s * b * L.h / (t if seq_tp else 1) / u


def shape_of(config, tree=None, layer: int = 0, attention: str = "sdpa") -> LayerShape:
    """LayerShape of a transformers config (layer `layer`: dense or MoE as the module tree says)."""
    g = lambda *names, default=0: next((getattr(config, n) for n in names if getattr(config, n, None)), default)
    h = config.hidden_size
    heads = g("num_attention_heads")
    kv = g("num_key_value_heads", default=heads)
    head_dim = g("head_dim", default=h // heads)
    experts = num_experts(config)
    moe = bool(experts) and (tree is None or any(m.startswith(f"model.layers.{layer}.") and m.endswith(".experts")
                                                   for m in tree.modules))
    act = str(g("hidden_act", "activation_function", default="silu"))
    dropout = bool(g("attention_dropout", "attn_pdrop", "hidden_dropout", "resid_pdrop", default=0.0))
    shared = g("shared_expert_intermediate_size") or (g("n_shared_experts") * g("moe_intermediate_size")
                                                      if g("n_shared_experts") else 0)
    qk_norm = tree is not None and any(m.startswith(f"model.layers.{layer}.") and m.endswith(".q_norm")
                                       for m in tree.modules)
    return LayerShape(h=h, heads=heads, kv_heads=kv, head_dim=head_dim,
                      norm_upcast=getattr(config, "rms_norm_eps", None) is not None, qk_norm=qk_norm,
                      ffn=g("intermediate_size", "n_inner", default=4 * h), gated="gelu" not in act or "glu" in act,
                      experts=experts if moe else 0, top_k=g("num_experts_per_tok", "moe_topk") if moe else 0,
                      expert_ffn=g("moe_intermediate_size") if moe else 0, shared_ffn=shared if moe else 0,
                      dropout=dropout, scores=attention == "eager")
