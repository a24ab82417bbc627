"""What each tensor-parallel rank holds, worked out on the meta model before anything is sharded.

The plan's `tp` rules resolve to {module: style}, the config's own plan (`tp plan = model`)
included, read by the runtime's own `tp_rules_from_config`. Every module is then held to what
`runtime.parallel.tp.apply_tp` requires of it: the right kind of module for its style, sizes that
split evenly over tp (whole heads for attention projections), and no whole weight left where it
would see one rank's shard. Used by planc/checks/parallel.py, which owns the rule names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from math import gcd

LINEAR_STYLES = ("colwise", "rowwise", "loss")
# output projections of the usual families: what a block's rowwise half is called
ROWWISE_NAMES = ("o_proj", "down_proj", "out_proj", "c_proj", "dense_4h_to_h", "fc2", "w2", "wo")


def shape(name: str) -> str:
    """A module name with its layer numbers folded into `*` (the glob a person writes)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)


def is_model_plan(rule) -> bool:
    opt = rule.options.get("plan")
    return opt is not None and opt.value == "model"


def assign(ctx, tp_rules) -> dict[str, tuple[str, object]]:
    """{module: (style, rule)} for every tp rule, the config's own plan included. A module named by
    two tp rules is an error (`rule-overlap`): the runtime refuses it, whatever the styles."""
    out: dict[str, tuple[str, object]] = {}
    reported = set()
    model = ctx.tree.model
    for rule in tp_rules:
        pairs = []
        if is_model_plan(rule):
            from runtime.parallel.tp import tp_rules_from_config

            try:
                from_cfg, _ = tp_rules_from_config(model)
            except ValueError as e:
                ctx.error("tp-rules", f"`tp plan = model`: {e}", rule.span, "write the tp rules out "
                          "(`tp colwise ...` / `tp rowwise ...`), or use `tp plan = megatron`")
                continue
            pairs += [(style, name) for style, names in from_cfg for name in names]
        if rule.style:
            pairs += [(rule.style, m) for r, names in ctx.rule_modules("tp") if r is rule for m in names]
        for style, name in pairs:
            if name in out and out[name][1] is not rule and (id(out[name][1]), id(rule)) not in reported:
                reported.add((id(out[name][1]), id(rule)))
                first = out[name][1]
                by_model = " (the config's own plan)" if is_model_plan(first) else ""
                ctx.error("rule-overlap", f"{name!r} is already `tp {out[name][0]}` by the rule at line "
                          f"{first.span.line}{by_model}; a module takes one tp style", rule.span,
                          "drop one of the two rules" + (", or write the tp rules out instead of "
                                                        "`tp plan = model`" if by_model else ""))
                continue
            out.setdefault(name, (style, rule))
    return out


@dataclass
class Split:
    """What tp must divide for one module: `count` things called `what`."""
    module: str
    style: str
    rule: object
    what: str  # attention heads | KV heads | heads | out_features | in_features | vocabulary
    count: int
    vocab: bool  # the input embedding or the output layer (the vocabulary is split)


def kind_problem(model, name: str, style: str) -> str | None:
    """Why `style` cannot shard module `name` (apply_tp's own refusals), or None."""
    from torch import nn

    mod = model.get_submodule(name)
    if style in LINEAR_STYLES and not isinstance(mod, nn.Linear):
        return f"`tp {style}` shards nn.Linear layers, but {name!r} is a {type(mod).__name__}"
    if style == "vocab" and not isinstance(mod, nn.Embedding):
        return f"`tp vocab` shards an nn.Embedding, but {name!r} is a {type(mod).__name__}"
    if style == "sequence" and not any(p.dim() == 1 for p in mod.parameters(recurse=False)):
        return f"`tp sequence` is for norms (1-D weights), but {name!r} is a {type(mod).__name__}"
    return None


def kind_help(model, name: str, style: str) -> str:
    """The rule a person meant: a container's own projections, the right style for the ends."""
    from torch import nn

    mod = model.get_submodule(name)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if mod is head:
        return f'the output layer takes `tp loss "{name}"` (vocab-sharded logits) or `tp colwise "{name}"`'
    if mod is embed:
        return f'the input embedding takes `tp vocab "{name}"`'
    if style == "sequence":
        return 'name the norms: e.g. `tp sequence "model.layers.*.*_layernorm" "model.norm"`'
    linears = [n for n, m in mod.named_modules() if n and isinstance(m, nn.Linear)]
    if not linears:
        return "point the rule at the Linear layers it should shard"
    groups: dict[str, list[str]] = {}
    for n in linears:
        parent, _, leaf = n.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    base = shape(name)
    lines = []
    for parent, leaves in list(groups.items())[:2]:
        prefix = f"{base}.{parent}" if parent else base
        col = [x for x in leaves if x not in ROWWISE_NAMES]
        row = [x for x in leaves if x in ROWWISE_NAMES]
        if col:
            lines.append(f'`tp colwise "{prefix}.{_alternatives(col)}"`')
        if row:
            lines.append(f'`tp rowwise "{prefix}.{_alternatives(row)}"`')
    return f"{name!r} holds Linear layers; shard those: " + " and ".join(lines)


def _alternatives(leaves: list[str]) -> str:
    """`{q,k,v}_proj` for q_proj, k_proj, v_proj; the one name for one."""
    if len(leaves) == 1:
        return leaves[0]
    tail = leaves[0][leaves[0].rfind("_"):] if "_" in leaves[0] else ""
    if tail and all(x.endswith(tail) and len(x) > len(tail) for x in leaves):
        return "{" + ",".join(x[: -len(tail)] for x in leaves) + "}" + tail
    return "{" + ",".join(leaves) + "}"


def splits(model, assigned: dict[str, tuple[str, object]]) -> list[Split]:
    """What tp must divide, module by module (apply_tp's `_check_shapes` arithmetic)."""
    out = []
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    for name, (style, rule) in assigned.items():
        if style == "sequence" or kind_problem(model, name, style):
            continue
        mod = model.get_submodule(name)
        ends = mod is head or mod is embed
        if style == "vocab":
            out.append(Split(name, style, rule, "vocabulary", mod.num_embeddings, True))
        elif style == "rowwise":
            out.append(Split(name, style, rule, "in_features", mod.in_features, ends))
        else:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            head_dim = getattr(parent, "head_dim", None)
            if style == "colwise" and isinstance(head_dim, int) and not ends and mod.out_features % head_dim == 0:
                leaf = name.rpartition(".")[2]
                what = "KV heads" if leaf in ("k_proj", "v_proj") else "attention heads" if leaf == "q_proj" else "heads"
                out.append(Split(name, style, rule, what, mod.out_features // head_dim, False))
            elif style == "colwise" and isinstance(head_dim, int) and not ends:
                out.append(Split(name, style, rule, f"out_features in whole heads of {head_dim}",
                                 mod.out_features, False))
            else:
                out.append(Split(name, style, rule, "vocabulary" if ends else "out_features", mod.out_features, ends))
    return out


def fits(s: Split, tp: int) -> bool:
    if s.what.startswith("out_features in whole heads of "):
        head_dim = int(s.what.rsplit(" ", 1)[1])
        return s.count % (tp * head_dim) == 0
    return s.count % tp == 0


def valid_degrees(all_splits: list[Split]) -> list[int]:
    """The tp degrees every module splits evenly under."""
    g = 0
    for s in all_splits:
        g = gcd(g, s.count)
    return [t for t in range(1, g + 1) if g % t == 0 and all(fits(s, t) for s in all_splits)] if g else [1]


def head_norms(model, colwise_parents: set[str], assigned) -> set[str]:
    """Per-head norms beside colwise projections (Qwen3's q_norm): apply_tp replicates them itself."""
    import torch

    found = set()
    for parent_name in colwise_parents:
        parent = model.get_submodule(parent_name) if parent_name else model
        head_dim = getattr(parent, "head_dim", None)
        for child_name, child in parent.named_children():
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            w = getattr(child, "weight", None)
            if (full not in assigned and isinstance(head_dim, int) and isinstance(w, torch.Tensor)
                    and w.dim() == 1 and w.numel() == head_dim):
                found.add(full)
    return found


def uncovered(model, assigned) -> tuple[str | None, str | None, str | None]:
    """(module, the colwise parent it sits in, or None when it is on the sequence-sharded stream)
    for the first whole weight apply_tp would refuse (its `_check_coverage`), else (None, None, None)."""
    head = model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    head_name = names.get(id(head))
    embed_name = names.get(id(model.get_input_embeddings()))
    colwise_parents = {n.rpartition(".")[0] for n, (s, _) in assigned.items() if s == "colwise" and n != head_name}
    seq = any(s == "sequence" for s, _ in assigned.values())
    covered = set(assigned) | head_norms(model, colwise_parents, assigned)
    for name, mod in model.named_modules():
        if name in covered or not any(True for _ in mod.parameters(recurse=False)):
            continue
        parent = next((p for p in sorted(colwise_parents) if not p or name == p or name.startswith(p + ".")), None)
        if parent is not None:
            return name, parent, "colwise"
        if seq and name not in (embed_name, head_name):
            return name, None, "sequence"
    return None, None, None
