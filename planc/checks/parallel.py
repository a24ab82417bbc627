"""Tensor, sequence and expert parallel rules, checked against the model's real config."""
from __future__ import annotations

from runtime.vocab import ATTENTIONS, ULYSSES_ATTENTIONS

from ..model_tree import num_experts

_WRAPPED = " or ".join(ULYSSES_ATTENTIONS)
RULES = {
    "tp-divides": "tp divides attention heads, KV heads and the sharded dimensions",
    "tp-vocab": "vocab-parallel embedding / loss needs vocab_size % tp == 0",
    "tp-rules": "tp > 1 has tp rules, and tp rules have tp > 1",
    "seq-divides": "max_len is a multiple of sp (Ulysses) and of tp (sequence-parallel norms)",
    "sp-heads": "Ulysses: q heads % sp == 0; kv heads % sp == 0 or sp % kv heads == 0; heads % (tp*sp) == 0",
    "sp-rules": "sp > 1 has an `sp ulysses` rule, and such a rule has sp > 1",
    "ep-experts": "num_experts % ep == 0, and `ep` rules match MoE experts modules",
    "ep-rules": "ep > 1 has an `ep` rule, and an `ep` rule has ep > 1",
    "rule-overlap": "no parameter is claimed by two sharding rules",
    "tp-incomplete": "inside a block with colwise modules, every other weight has a tp rule (rowwise pairs colwise)",
    "tp-sequence": "`tp sequence` covers every norm on the residual stream, and is not used with MoE experts",
    "tp-tied": "tied embeddings are not sharded by vocab / loss / colwise head rules",
    "ep-cover": "`ep` rules cover every experts module (tokens are dispatched in every MoE layer)",
    "sp-cover": "`sp ulysses` covers every attention module (the sequence is sharded everywhere)",
    "sp-attention": f"Ulysses wraps {_WRAPPED} attention, not "
                    f"{', '.join(a for a in ATTENTIONS if a not in ULYSSES_ATTENTIONS)}",
}


def _cfg(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def check(ctx) -> None:
    if ctx.degrees is None or ctx.tree is None:
        return
    p, cfg, d = ctx.plan, ctx.tree.config, ctx.degrees
    tp, sp, ep = d["tp"], d["sp"], d["ep"]
    heads = _cfg(cfg, "num_attention_heads")
    kv = _cfg(cfg, "num_key_value_heads", default=heads)
    tp_rules = [r for r in p.rules if r.kind == "tp"]
    sp_rules = [r for r in p.rules if r.kind == "sp"]
    ep_rules = [r for r in p.rules if r.kind == "ep"]

    # tp ------------------------------------------------------------------------------------
    if tp > 1 and not tp_rules:
        ctx.error("tp-rules", f"tp = {tp}, but no `tp` rule says what to shard", p.span("mesh.tp"),
                  "add `tp plan = model` (the config's own plan) or `tp colwise/rowwise ...` rules")
    if tp == 1 and tp_rules:
        ctx.warn("tp-rules", "`tp` rules have no effect with tp = 1", tp_rules[0].span, "set tp in `mesh`")
    if tp > 1 and tp_rules:
        span = p.span("mesh.tp")
        for what, n in (("attention heads", heads), ("KV heads", kv)):
            if n and n % tp:
                ctx.error("tp-divides", f"tp({tp}) must divide the {what} ({n})", span,
                          "choose tp among " + ", ".join(str(x) for x in range(1, n + 1) if n % x == 0 and heads % x == 0 and kv % x == 0))
        inter = _cfg(cfg, "intermediate_size")
        if inter and inter % tp:
            ctx.error("tp-divides", f"tp({tp}) must divide intermediate_size ({inter})", span)
        if any(r.style in ("vocab", "loss") for r in tp_rules):
            vocab = _cfg(cfg, "vocab_size")
            if vocab and vocab % tp:
                r = next(r for r in tp_rules if r.style in ("vocab", "loss"))
                ctx.error("tp-vocab", f"vocab_size ({vocab}) is not a multiple of tp ({tp})", r.span,
                          f"pad vocab_size to {-(-vocab // tp) * tp} in the config")
        if any(r.style == "sequence" for r in tp_rules) and p["data.max_len"] % tp:
            ctx.error("seq-divides", f"sequence-parallel norms split max_len ({p['data.max_len']}) over tp({tp})",
                      p.span("data.max_len"), f"use max_len = {p['data.max_len'] // tp * tp or tp}")

    # sp (Ulysses) --------------------------------------------------------------------------
    if sp > 1 and not sp_rules:
        ctx.error("sp-rules", f"sp = {sp}, but no `sp ulysses` rule names the attention modules", p.span("mesh.sp"),
                  'add `sp ulysses "model.layers.*.self_attn"`')
    if sp == 1 and sp_rules:
        ctx.warn("sp-rules", "`sp` rules have no effect with sp = 1", sp_rules[0].span, "set sp in `mesh`")
    if sp > 1:
        span = p.span("mesh.sp")
        if heads and heads % sp:
            ctx.error("sp-heads", f"Ulysses scatters heads: sp({sp}) must divide the attention heads ({heads})", span)
        if kv and kv % sp and sp % kv:
            ctx.error("sp-heads", f"KV heads ({kv}) and sp({sp}): one must divide the other", span,
                      "KV heads are repeated when sp is a multiple of them")
        if tp > 1 and heads and heads % (tp * sp):
            ctx.error("sp-heads", f"with tp and sp together, heads ({heads}) must divide by tp*sp = {tp * sp}", span)
        if p["data.max_len"] % sp:
            ctx.error("seq-divides", f"max_len ({p['data.max_len']}) is not a multiple of sp ({sp})",
                      p.span("data.max_len"), f"use max_len = {p['data.max_len'] // sp * sp or sp}")

    # ep --------------------------------------------------------------------------------------
    n_exp = num_experts(cfg)
    if ep > 1 and not ep_rules:
        ctx.error("ep-rules", f"ep = {ep}, but no `ep` rule names the experts", p.span("mesh.ep"),
                  'add `ep "model.layers.*.mlp.experts"`')
    if ep == 1 and ep_rules:
        ctx.warn("ep-rules", "`ep` rules have no effect with ep = 1", ep_rules[0].span, "set ep in `mesh`")
    for rule, names in ctx.rule_modules("ep"):
        if not n_exp:
            ctx.error("ep-experts", f"{ctx.tree.model_type} has no experts to shard", rule.span,
                      "expert parallelism needs an MoE model")
            break
        bad = [m for m in names if not _is_experts(ctx.tree, m)]
        if bad:
            ctx.error("ep-experts", f"{bad[0]!r} is a {ctx.tree.module_types[bad[0]]}, not an MoE experts module",
                      rule.span, "match the fused experts modules, e.g. \"model.layers.*.mlp.experts\"")
    if ep > 1 and n_exp and n_exp % ep:
        ctx.error("ep-experts", f"ep({ep}) must divide the number of experts ({n_exp})", p.span("mesh.ep"),
                  "choose ep among " + ", ".join(str(x) for x in range(2, n_exp + 1) if n_exp % x == 0))

    _coverage(ctx, tp_rules, sp_rules, ep_rules, n_exp)

    # overlaps ----------------------------------------------------------------------------------
    claimed: dict[str, object] = {}
    for rule, names in ctx.rule_modules("tp") + ctx.rule_modules("ep"):
        for m in names:
            for q in ctx.tree.direct_params.get(m, []):
                if q in claimed and claimed[q] is not rule:
                    other = claimed[q]
                    ctx.error("rule-overlap", f"{q} is claimed by two sharding rules (the other at line {other.span.line})",
                              rule.span, "each module takes one tp/ep style")
                    break
                claimed[q] = rule


def _is_norm(tree, name: str) -> bool:
    return tree.module_types.get(name, "").endswith(("RMSNorm", "LayerNorm", "Norm"))


def _coverage(ctx, tp_rules, sp_rules, ep_rules, n_exp) -> None:
    """Rules that must cover whole classes of modules (the runtime refuses partial coverage)."""
    p, tree = ctx.plan, ctx.tree
    tp_mods = {m: r for r, names in ctx.rule_modules("tp") for m in names}
    colwise = [m for m, r in tp_mods.items() if r.style == "colwise"]
    if tp_rules and not any(r.options.get("plan") and r.options["plan"].value == "model" for r in tp_rules):
        parents = {m.rsplit(".", 1)[0] for m in colwise if "." in m}
        for parent in sorted(parents):
            for m in tree.modules:
                if m.startswith(parent + ".") and tree.direct_params.get(m) and m not in tp_mods \
                        and not _is_norm(tree, m):
                    rule = tp_mods[next(c for c in colwise if c.startswith(parent + "."))]
                    ctx.error("tp-incomplete", f"{m!r} keeps whole weights inside {parent!r}, whose other "
                              "projections are colwise: it would see one rank's shard only", rule.span,
                              f"add a rule for it, e.g. `tp rowwise \"{_shape(m)}\"`")
                    return
    seq = [r for r in tp_rules if r.style == "sequence"]
    if seq:
        if n_exp:
            ctx.error("tp-sequence", "`tp sequence` with MoE experts is not built: experts see whole tokens",
                      seq[0].span, "drop `tp sequence` (keep colwise/rowwise), or use sp for long sequences")
        covered = {m for r, names in ctx.rule_modules("tp", "sequence") for m in names}
        attn = {m for m in tree.modules if tree.module_types.get(m, "").endswith("Attention")}
        stream = [m for m in tree.modules if _is_norm(tree, m) and not any(m.startswith(a + ".") for a in attn)]
        missing = [m for m in stream if m not in covered]
        if missing:
            ctx.error("tp-sequence", f"`tp sequence` leaves {missing[0]!r} (and {len(missing) - 1} more) whole on "
                      "the sequence-sharded stream", seq[0].span,
                      'cover every norm: e.g. `tp sequence "model.layers.*.*_layernorm" "model.norm"`')
    if tree.tied:
        tied = {q.rsplit(".", 1)[0] for group in tree.tied for q in group}
        for r in tp_rules:
            names = {m for rr, ns in ctx.rule_modules("tp", r.style) if rr is r for m in ns}
            if r.style in ("vocab", "loss", "colwise") and names & tied:
                ctx.error("tp-tied", f"{sorted(names & tied)[0]!r} shares its weight with another module "
                          "(tied embeddings); sharding it one way breaks the other", r.span,
                          "untie the embeddings in the config (tie_word_embeddings = false), or leave them unsharded")
                break
    if ep_rules and n_exp:
        experts = [m for m in tree.modules if _is_experts_module(tree, m)]
        covered = {m for _, names in ctx.rule_modules("ep") for m in names}
        missing = [m for m in experts if m not in covered]
        if missing:
            ctx.error("ep-cover", f"`ep` leaves {missing[0]!r} (and {len(missing) - 1} more) unsharded: tokens "
                      "are dispatched in every MoE layer", ep_rules[0].span, f'cover them all: `ep "{_shape(missing[0])}"`')
    if sp_rules:
        attn = [m for m in tree.modules if tree.module_types.get(m, "").endswith("Attention")]
        covered = {m for _, names in ctx.rule_modules("sp") for m in names}
        missing = [m for m in attn if m not in covered]
        if missing:
            ctx.error("sp-cover", f"`sp ulysses` leaves {missing[0]!r} (and {len(missing) - 1} more) unwrapped: "
                      "the sequence is sharded for every layer", sp_rules[0].span,
                      f'cover them all: `sp ulysses "{_shape(missing[0])}"`')
        if p["model.attention"] not in ULYSSES_ATTENTIONS:
            ctx.error("sp-attention", f"Ulysses wraps {_WRAPPED} attention; {p['model.attention']} is not built",
                      p.span("model.attention"), f"use attention = {ULYSSES_ATTENTIONS[0]}")


def _shape(name: str) -> str:
    import re

    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)


def _is_experts_module(tree, name: str) -> bool:
    params = tree.direct_params.get(name, [])
    return sum(len(tree.param_shape[q]) == 3 for q in params) >= 2


def _is_experts(tree, name: str) -> bool:
    params = tree.direct_params.get(name, [])
    return any(tree.param_shape[q] and len(tree.param_shape[q]) == 3 for q in params) or \
        "expert" in tree.module_types.get(name, "").lower()
