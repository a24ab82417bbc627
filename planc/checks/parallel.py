"""Tensor, sequence and expert parallel rules, checked against the model's real (meta) modules.

Divisibility is checked on what each rank holds, module by module, the way the runtime's
parallelize functions require it: tp splits the modules its rules name (heads of the attention
projections, features of the MLP, the vocabulary of the ends); Ulysses then scatters the heads
each tp rank holds; ep splits each experts module's experts. See planc/checks/tp_plan.py.
"""
from __future__ import annotations

from runtime.vocab import ATTENTIONS, ULYSSES_ATTENTIONS

from ..model_tree import num_experts
from .tp_plan import assign, fits, is_model_plan, kind_help, kind_problem, splits, uncovered, valid_degrees
from .tp_plan import shape as _shape

_WRAPPED = " or ".join(ULYSSES_ATTENTIONS)
RULES = {
    "tp-divides": "tp divides what each rank holds of every module a tp rule shards: attention heads, "
                  "KV heads, MLP features",
    "tp-vocab": "vocab-parallel embedding, loss or a sharded output layer needs vocab_size % tp == 0",
    "tp-rules": "tp > 1 has tp rules, tp rules have tp > 1, and `tp plan = model` needs a config with a plan",
    "tp-module": "tp colwise / rowwise / loss name Linear layers, tp vocab an Embedding, tp sequence norms "
                 "(a container gets the globs of its projections as the hint)",
    "seq-divides": "max_len is a multiple of the ranks that split a row, sp (Ulysses) times tp with "
                   "sequence-parallel norms; warns (rows are padded to it)",
    "sp-heads": "Ulysses on the heads each tp rank holds: q heads % sp == 0; KV heads % sp == 0 or sp % KV heads == 0",
    "sp-rules": "sp > 1 has an `sp ulysses` rule, and such a rule has sp > 1",
    "ep-experts": "each experts module's experts % ep == 0; `ep` rules match fused, gated, unbiased experts modules",
    "ep-rules": "ep > 1 has an `ep` rule, and an `ep` rule has ep > 1",
    "rule-overlap": "no module or parameter is claimed by two sharding rules (the config's own tp plan included)",
    "tp-incomplete": "inside a block with colwise modules, every other weight has a tp rule (rowwise pairs colwise)",
    "tp-sequence": "`tp sequence` covers every norm on the residual stream, is not used with MoE experts, and "
                   "keeps documents within a sliding-window model's window",
    "tp-tied": "tied embeddings are not sharded by vocab / loss / colwise head rules",
    "ep-cover": "`ep` rules cover every experts module (tokens are dispatched in every MoE layer)",
    "sp-cover": "`sp ulysses` names attention modules, and covers every one (the sequence is sharded everywhere)",
    "sp-attention": f"Ulysses wraps {_WRAPPED} attention (eager: the model's own function), not "
                    f"{', '.join(a for a in ATTENTIONS if a not in ULYSSES_ATTENTIONS)}, and documents stay within "
                    "a sliding-window model's window",
}


def check(ctx) -> None:
    if ctx.degrees is None or ctx.tree is None:
        return
    p, d = ctx.plan, ctx.degrees
    tp, sp, ep = d["tp"], d["sp"], d["ep"]
    tp_rules = [r for r in p.rules if r.kind == "tp"]
    sp_rules = [r for r in p.rules if r.kind == "sp"]
    ep_rules = [r for r in p.rules if r.kind == "ep"]
    n_err = len(ctx.diags)

    # tp ------------------------------------------------------------------------------------
    if tp > 1 and not tp_rules:
        ctx.error("tp-rules", f"tp = {tp}, but no `tp` rule says what to shard", p.span("mesh.tp"),
                  "add `tp plan = model` (the config's own plan) or `tp colwise/rowwise ...` rules")
    if tp == 1 and tp_rules:
        ctx.warn("tp-rules", "`tp` rules have no effect with tp = 1", tp_rules[0].span, "set tp in `mesh`")
    assigned = assign(ctx, tp_rules) if tp_rules else {}
    kinds_ok = _tp_kinds(ctx, assigned)
    splits_ok = _tp_splits(ctx, assigned, tp) if kinds_ok else False
    seq = any(s == "sequence" for s, _ in assigned.values())

    # sp (Ulysses) and the row length --------------------------------------------------------
    if sp > 1 and not sp_rules:
        ctx.error("sp-rules", f"sp = {sp}, but no `sp ulysses` rule names the attention modules", p.span("mesh.sp"),
                  'add `sp ulysses "model.layers.*.self_attn"`')
    if sp == 1 and sp_rules:
        ctx.warn("sp-rules", "`sp` rules have no effect with sp = 1", sp_rules[0].span, "set sp in `mesh`")
    if sp > 1 and sp_rules and splits_ok:
        _sp_heads(ctx, assigned, tp, sp)
    split_row = sp * (tp if seq else 1)
    max_len = p["data.max_len"]
    if split_row > 1 and max_len % split_row and p["data.pack"] != "dynamic":
        # the loader pads every row to a multiple of split_row (slice_for_sp, sequence-parallel
        # TP need equal slices): it runs, but each fixed-length row carries pad tokens
        who = " * ".join(x for x, on in ((f"sp({sp})", sp > 1), (f"tp({tp}) with sequence-parallel norms",
                                                                   seq and tp > 1)) if on)
        ctx.warn("seq-divides", f"max_len ({max_len}) is not a multiple of {who} = {split_row}: every row is "
                 f"padded to {-(-max_len // split_row) * split_row} tokens", p.span("data.max_len"),
                 f"use max_len = {max_len // split_row * split_row or split_row}")

    # ep --------------------------------------------------------------------------------------
    n_exp = num_experts(ctx.tree.text_config)
    if ep > 1 and not ep_rules:
        ctx.error("ep-rules", f"ep = {ep}, but no `ep` rule names the experts", p.span("mesh.ep"),
                  'add `ep "model.layers.*.mlp.experts"`')
    if ep == 1 and ep_rules:
        ctx.warn("ep-rules", "`ep` rules have no effect with ep = 1", ep_rules[0].span, "set ep in `mesh`")
    _ep_experts(ctx, ep)

    _sliding_window(ctx, sp_rules, seq)

    tp_errors = any(x.rule in ("tp-module", "rule-overlap", "tp-rules") and x.severity == "error"
                    for x in ctx.diags[n_err:])
    _coverage(ctx, tp_rules, sp_rules, ep_rules, n_exp, assigned, tp_errors)
    _param_overlap(ctx, assigned)


def sliding_window(config) -> int | None:
    """Tokens of the model's sliding-window attention layers, or None when every layer attends to
    the whole (causal) row."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or (types is not None and "sliding_attention" not in types):
        return None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def _sliding_window(ctx, sp_rules, seq: bool) -> None:
    """Ulysses and sequence-parallel TP hand attention a block-causal mask over the whole row (built
    from the positions): a sliding window would be silently dropped once rows outgrow it."""
    window = sliding_window(ctx.tree.text_config)
    max_len = ctx.plan["data.max_len"]  # documents are at most max_len; the mask stops at their ends
    if window is None or max_len <= window:
        return
    for active, rule, what in ((ctx.degrees["sp"] > 1 and sp_rules, "sp-attention", "Ulysses"),
                               (ctx.degrees["tp"] > 1 and seq, "tp-sequence", "sequence-parallel TP")):
        if active:
            ctx.error(rule, f"{ctx.tree.model_type} attends within sliding windows of {window} tokens, but "
                      f"{what} masks whole documents: documents of up to {max_len} tokens would attend past "
                      "the window", ctx.plan.span("data.max_len"), f"use max_len <= {window}")
            return


def _tp_kinds(ctx, assigned) -> bool:
    """`tp-module`: each module is what its style shards; one error per rule."""
    model, ok, seen = ctx.tree.model, True, set()
    for name, (style, rule) in assigned.items():
        problem = kind_problem(model, name, style)
        if problem and id(rule) not in seen:
            seen.add(id(rule))
            ok = False
            ctx.error("tp-module", problem, rule.span, kind_help(model, name, style))
        elif problem:
            ok = False
    return ok


def _tp_splits(ctx, assigned, tp: int) -> bool:
    """`tp-divides`: sizes the degree does not split, one error for the degree (the vocabulary
    among them); `tp-vocab`: only the vocabulary does not split, one error per rule."""
    p = ctx.plan
    all_splits = splits(ctx.tree.model, assigned)
    bad = [s for s in all_splits if not fits(s, tp)]
    if not bad:
        return True
    good = [t for t in valid_degrees(all_splits) if t > 1]
    choose = ("choose tp among " + ", ".join(map(str, good))) if good else "nothing this model holds splits: use tp = 1"
    if any(not s.vocab for s in bad):
        groups: dict[tuple, list[str]] = {}
        for s in bad:
            leaf = _shape(s.module).rpartition(".")[2]
            groups.setdefault((s.what, s.count), [])
            if leaf not in groups[(s.what, s.count)]:
                groups[(s.what, s.count)].append(leaf)
        parts = [f"{count} {what} ({', '.join(leaves)})" if what.endswith(("heads", "vocabulary"))
                 else f"{what} {count} ({', '.join(leaves)})" for (what, count), leaves in groups.items()]
        ctx.error("tp-divides", f"tp({tp}) does not split what each rank would hold: {'; '.join(parts)}",
                  p.span("mesh.tp"), choose)
        return False
    for rule in {id(s.rule): s.rule for s in bad}.values():
        s = next(x for x in bad if x.rule is rule)
        by_model = " (the config's own plan shards it)" if is_model_plan(rule) and rule.style is None else ""
        ctx.error("tp-vocab", f"vocab_size ({s.count}) is not a multiple of tp ({tp}): {s.module!r} is split over "
                  f"the vocabulary{by_model}", rule.span,
                  f"pad vocab_size to {-(-s.count // tp) * tp} in the config, or {choose}")
    return False


def _sp_heads(ctx, assigned, tp: int, sp: int) -> None:
    """Ulysses scatters the heads each tp rank holds (runtime.parallel.ulysses.check_heads)."""
    from runtime.parallel.ulysses import check_heads, is_attention, local_heads

    model, cfg = ctx.tree.model, ctx.tree.text_config
    heads = cfg.num_attention_heads
    kv_default = getattr(cfg, "num_key_value_heads", None) or heads
    seen = set()
    for _, names in ctx.rule_modules("sp"):
        for name in names:
            mod = model.get_submodule(name)
            if not is_attention(mod):
                continue  # sp-cover says so
            split = {proj: tp if assigned.get(f"{name}.{proj}", ("",))[0] == "colwise" else 1
                     for proj in ("q_proj", "k_proj")}
            q = local_heads(mod, "q_proj", heads, split["q_proj"])
            kv = local_heads(mod, "k_proj", kv_default, split["k_proj"])
            try:
                check_heads(q, kv, sp)
            except ValueError:
                if (q, kv) in seen:
                    continue
                seen.add((q, kv))
                held = f"each of the tp({tp}) ranks holds {q} attention heads and {kv} KV heads" \
                    if split["q_proj"] > 1 else f"the attention has {q} heads and {kv} KV heads"
                ok = [s for s in range(2, q + 1) if q % s == 0 and (kv % s == 0 or s % kv == 0)]
                ctx.error("sp-heads", f"Ulysses scatters heads over sp({sp}), but {held}: sp must divide the "
                          "heads, and divide or be a multiple of the KV heads", ctx.plan.span("mesh.sp"),
                          ("choose sp among " + ", ".join(map(str, ok))) if ok else
                          "lower tp (each rank then holds more heads), or use sp = 1")


def _ep_experts(ctx, ep: int) -> None:
    """`ep` rules name the runtime's experts modules; ep divides each one's experts."""
    from runtime.parallel.ep import experts_modules

    model, tree = ctx.tree.model, ctx.tree
    found = set(experts_modules(model))
    for rule, names in ctx.rule_modules("ep"):
        if not found:
            ctx.error("ep-experts", f"{tree.model_type} has no fused MoE experts module to shard", rule.span,
                      "expert parallelism needs an MoE model whose experts are one module with 3-D weights")
            return
        bad = [m for m in names if m not in found]
        if bad:
            ctx.error("ep-experts", f"{bad[0]!r} is a {tree.module_types[bad[0]]}, not an MoE experts module",
                      rule.span, f'match the fused experts modules, e.g. "{_shape(sorted(found)[0])}"')
            continue
        for m in names:
            mod = model.get_submodule(m)
            if getattr(mod, "has_bias", False) or getattr(mod, "is_transposed", False) or not getattr(mod, "has_gate", True):
                ctx.error("ep-experts", f"{m!r} ({type(mod).__name__}) has biased, transposed or ungated experts, "
                          "which expert parallelism does not handle", rule.span, "drop the `ep` rule and set ep = 1")
                break
        counts = sorted({model.get_submodule(m).gate_up_proj.shape[0] for m in names})
        if ep > 1 and any(c % ep for c in counts):
            n = next(c for c in counts if c % ep)
            ctx.error("ep-experts", f"ep({ep}) must divide the number of experts ({n}) of each experts module",
                      ctx.plan.span("mesh.ep"), "choose ep among " +
                      ", ".join(str(x) for x in range(2, n + 1) if all(c % x == 0 for c in counts)))
            return


def _param_overlap(ctx, assigned) -> None:
    """A parameter sharded by both a tp and an ep rule."""
    tp_params = {q: rule for m, (_, rule) in assigned.items() for q in ctx.tree.direct_params.get(m, [])}
    for rule, names in ctx.rule_modules("ep"):
        for m in names:
            for q in ctx.tree.direct_params.get(m, []):
                if q in tp_params:
                    ctx.error("rule-overlap", f"{q} is claimed by two sharding rules (the other at line "
                              f"{tp_params[q].span.line})", rule.span, "each module takes one tp/ep style")
                    return


def _is_norm(tree, name: str) -> bool:
    return tree.module_types.get(name, "").endswith(("RMSNorm", "LayerNorm", "Norm"))


def _coverage(ctx, tp_rules, sp_rules, ep_rules, n_exp, assigned, tp_errors: bool) -> None:
    """Rules that must cover whole classes of modules (the runtime refuses partial coverage)."""
    from runtime.parallel.ep import experts_modules
    from runtime.parallel.ulysses import eager_function, is_attention

    p, tree, model = ctx.plan, ctx.tree, ctx.tree.model
    if assigned and not tp_errors:
        name, parent, why = uncovered(model, assigned)
        if why == "colwise":
            rule = next(r for m, (s, r) in assigned.items() if s == "colwise" and m.startswith(parent + "." if parent else ""))
            ctx.error("tp-incomplete", f"{name!r} keeps whole weights inside {parent!r}, whose other "
                      "projections are colwise: it would see one rank's shard only", rule.span,
                      f"add a rule for it, e.g. `tp {'sequence' if _is_norm(tree, name) else 'rowwise'} \"{_shape(name)}\"`")
        elif why == "sequence" and n_exp == 0:
            seq = next(r for m, (s, r) in assigned.items() if s == "sequence")
            ctx.error("tp-sequence", f"`tp sequence` leaves {name!r} whole on the sequence-sharded stream",
                      seq.span, 'cover every norm: e.g. `tp sequence "model.layers.*.*_layernorm" "model.norm"`'
                      if _is_norm(tree, name) else f"give it a tp rule (`{_shape(name)}`)")
    seq_rules = [r for m, (s, r) in assigned.items() if s == "sequence"]
    if seq_rules and n_exp:
        ctx.error("tp-sequence", "`tp sequence` with MoE experts is not built: experts see whole tokens",
                  seq_rules[0].span, "drop `tp sequence` (keep colwise/rowwise), or use sp for long sequences")
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
        experts = experts_modules(model)
        covered = {m for _, names in ctx.rule_modules("ep") for m in names}
        missing = [m for m in experts if m not in covered]
        if missing:
            ctx.error("ep-cover", f"`ep` leaves {missing[0]!r} (and {len(missing) - 1} more) unsharded: tokens "
                      "are dispatched in every MoE layer", ep_rules[0].span, f'cover them all: `ep "{_shape(missing[0])}"`')
    if sp_rules:
        # the language model's attention (a vision tower keeps its own: every sp rank sees whole images)
        attn = [n for n, m in model.named_modules() if is_attention(m) and n.startswith(tree.language + ".")]
        for rule, names in ctx.rule_modules("sp"):
            other = [m for m in names if m not in attn]
            if other:
                ctx.error("sp-cover", f"{other[0]!r} is a {tree.module_types[other[0]]}, not an attention module",
                          rule.span, f'name the attention modules: `sp ulysses "{_shape(attn[0])}"`' if attn
                          else "this model has no attention module Ulysses can wrap")
                return
        covered = {m for _, names in ctx.rule_modules("sp") for m in names}
        missing = [m for m in attn if m not in covered]
        if missing:
            ctx.error("sp-cover", f"`sp ulysses` leaves {missing[0]!r} (and {len(missing) - 1} more) unwrapped: "
                      "the sequence is sharded for every layer", sp_rules[0].span,
                      f'cover them all: `sp ulysses "{_shape(missing[0])}"`')
        if p["model.attention"] not in ULYSSES_ATTENTIONS:
            ctx.error("sp-attention", f"Ulysses wraps {_WRAPPED} attention; {p['model.attention']} is not built",
                      p.span("model.attention"), f"use attention = {ULYSSES_ATTENTIONS[0]}")
        elif p["model.attention"] == "eager":
            plain = next((m for m in attn if eager_function(model.get_submodule(m)) is None), None)
            if plain is not None:
                ctx.error("sp-attention", f"{type(model.get_submodule(plain)).__name__} has no eager attention "
                          "function of its own for Ulysses to call", p.span("model.attention"), "use attention = sdpa")
