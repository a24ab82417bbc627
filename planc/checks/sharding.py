"""Sharding-unit rules: FSDP units nest bottom-up without splitting tied parameters; checkpoint
units are whole blocks; replication and FSDP are not mixed."""
from __future__ import annotations

RULES = {
    "fsdp-nesting": "FSDP units nest bottom-up: a unit keeps parameters of its own after its nested units",
    "fsdp-tied": "tied parameters (e.g. tied embeddings) are not split across FSDP units",
    "checkpoint-nesting": "checkpoint units do not nest (each is a whole block, checkpointed once)",
    "replicate-fsdp": "`replicate` (DDP) and `fsdp` are not used together; replicate needs dp_shard = 1",
    "dp-sync": "with more than one data-parallel rank, an fsdp or replicate rule keeps gradients in sync",
    "fsdp-options": "every `fsdp` rule gives the same options (one FSDP2 wrapping applies them to every unit)",
}


def check(ctx) -> None:
    if ctx.tree is None:
        return
    p = ctx.plan
    fsdp = ctx.rule_modules("fsdp")
    units = sorted({m for _, names in fsdp for m in names}, key=lambda n: -n.count("."))
    owner = _assign_params(ctx.tree, units)
    for rule, names in fsdp:
        for m in names:
            if m and not any(owner.get(q) == m for q in ctx.tree.params_under(m)):
                ctx.warn("fsdp-nesting", f"FSDP unit {m!r} holds no parameters of its own: its nested units take them all",
                         rule.span, "drop the outer glob, or the inner one, so each unit shards something")
                break
    for group in ctx.tree.tied:
        holders = {owner.get(q, "") for q in group}
        if len(holders) > 1:
            where = next((r.span for r, names in fsdp if set(names) & holders), None)
            ctx.error("fsdp-tied", f"tied parameters {', '.join(group)} would land in different FSDP units "
                      f"({', '.join(repr(h or '<root>') for h in sorted(holders))})", where,
                      "leave both modules to the root unit, or untie the embeddings in the config")
    if fsdp:
        first = {k: s.value for k, s in fsdp[0][0].options.items()}
        for rule, _ in fsdp[1:]:
            other = {k: s.value for k, s in rule.options.items()}
            if other != first:
                diff = next(k for k in first if first[k] != other.get(k))
                ctx.error("fsdp-options", f"this `fsdp` rule says {diff} = {other.get(diff)}, the one at line "
                          f"{fsdp[0][0].span.line} says {first[diff]}", rule.span,
                          "give every fsdp rule the same options (or put all the globs in one rule)")
                break
    ckpt = ctx.rule_modules("checkpoint")
    chosen = sorted({m for _, names in ckpt for m in names})
    for rule, names in ckpt:
        for m in names:
            outer = next((o for o in chosen if o != m and (o == "" or m.startswith(o + "."))), None)
            if outer is not None:
                ctx.error("checkpoint-nesting", f"checkpoint unit {m!r} sits inside checkpoint unit {outer!r}",
                          rule.span, "checkpoint whole blocks once: e.g. \"model.layers.*\" alone")
                break
    rep = [r for r in p.rules if r.kind == "replicate"]
    if rep:
        if fsdp:
            ctx.error("replicate-fsdp", "`replicate` (DDP) and `fsdp` cannot shard the same model",
                      rep[0].span, "keep fsdp (with dp_replicate for HSDP), or replicate alone")
        elif ctx.degrees and ctx.degrees["dp_shard"] > 1:
            ctx.error("replicate-fsdp", f"`replicate` keeps whole copies, but dp_shard is {ctx.degrees['dp_shard']}",
                      rep[0].span, "set dp_replicate to the data-parallel size and dp_shard = 1, or use fsdp")
    d = ctx.degrees
    if d and d["dp_replicate"] * d["dp_shard"] * d["sp"] > 1 and not fsdp and not rep:
        ctx.error("dp-sync", f"{d['dp_replicate'] * d['dp_shard'] * d['sp']} data-parallel ranks, but no rule "
                  "reduces their gradients: each would train its own model", p.blocks.get("parallelize") or p.span("mesh.dp_shard"),
                  'add `fsdp "model.layers.*"` (or `replicate` with dp_replicate)')
    ctx.notes.append(f"fsdp units: {len([u for u in units if u])} + root" if fsdp else "fsdp: none")


def _assign_params(tree, units: list[str]) -> dict[str, str]:
    """param name -> the FSDP unit that shards it (deepest matching unit; the root takes the rest)."""
    owner: dict[str, str] = {}
    for unit in units:  # deepest first
        for q in tree.params_under(unit):
            owner.setdefault(q, unit)
    for q in tree.param_numel:
        owner.setdefault(q, "")
    return owner
