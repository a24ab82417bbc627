"""LoRA and activation-offload rules: the `lora` line of `train` adapts nn.Linear modules of the
real model in a layout runtime/lora.py supports; `offload` rules name whole modules whose saved
activations may live in host memory.

The layout refusals are runtime.lora.check_layout's own (the generated script calls it too), asked
one target glob at a time so that each refusal stands at the glob that causes it.
"""
from __future__ import annotations

import re

RULES = {
    "lora-target": "every lora glob matches nn.Linear modules (peft adapts those; a block or an experts module is not one)",
    "lora-layout": "LoRA runs where runtime/lora.py supports it: a text model, no tensor parallelism (tp = 1), "
                   "no target inside the experts ep shards",
}


def lora_rule(plan):
    return next((r for r in plan.rules if r.kind == "lora"), None)


def check(ctx) -> None:
    p = ctx.plan
    rule = lora_rule(p)
    if rule is None or ctx.tree is None:
        return
    from runtime.lora import LoraSpec, check_layout

    if ctx.tree.kind != "text":
        ctx.error("lora-layout", f"lora is built for text models; {ctx.tree.model_type} is a vision-language model "
                  "(its export merges the adapters into a causal LM)", rule.span,
                  "drop the `lora` line, or `freeze` the parts that should not train")
        return
    if ctx.degrees is not None and ctx.degrees.get("tp", 1) > 1:
        try:
            check_layout(LoraSpec(rank=1, alpha=1.0, targets=("x",)), {"tp": ctx.degrees["tp"]})
        except ValueError as e:
            ctx.error("lora-layout", str(e), rule.span,
                      f"use mesh.tp = 1 (now {ctx.degrees['tp']}) for a LoRA run and shard with dp_shard")
    experts = [m for _, mods in ctx.rule_modules("ep") for m in mods]
    for j, g in enumerate(rule.globs):
        try:
            check_layout(LoraSpec(rank=1, alpha=1.0, targets=(g.pattern,)), {}, expert_modules=experts)
        except ValueError as e:
            ctx.error("lora-layout", str(e), g.span, "adapt the attention projections (or a dense MLP) instead")
            continue
        i = p.rules.index(rule)
        inside = [(n, e) for n in ctx.matches.get((i, j), []) for e in experts if n == e or n.startswith(e + ".")]
        if inside:  # a glob with wildcards that the runtime's text comparison cannot see: its matches
            n, e = inside[0]
            ctx.error("lora-layout", f"lora target {g.pattern!r} matches {n!r}, inside the experts module {e!r} "
                      "that ep shards: peft adapts nn.Linear modules, not the fused expert weights",
                      g.span, "adapt the attention projections (or a dense MLP) instead")
            continue
        _linear(ctx, rule, j, g)


def _linear(ctx, rule, j: int, g) -> None:
    """The glob's matches (model.py matched them) hold at least one nn.Linear."""
    from torch import nn

    i = ctx.plan.rules.index(rule)
    names = ctx.matches.get((i, j))
    if not names:  # unmatched (glob-unmatched) or malformed (glob-syntax): reported already
        return
    model = ctx.tree.model
    linear = [n for n in names if isinstance(model.get_submodule(n), nn.Linear)]
    if linear:
        return
    kinds = sorted({ctx.tree.module_types[n] for n in names})
    inner = sorted({re.sub(r"(?<=\.)\d+(?=\.|$)", "*", m) for n in names for m in ctx.tree.modules
                    if m.startswith(n + ".") and isinstance(model.get_submodule(m), nn.Linear)})
    hint = ("the nn.Linear modules inside: " + ", ".join(f'"{x}"' for x in inner[:6])
            + (" ..." if len(inner) > 6 else "")) if inner else "name nn.Linear modules (projections)"
    ctx.error("lora-target", f"{g.pattern!r} matches {len(names)} module{'s' * (len(names) != 1)} "
              f"({', '.join(kinds)}) and no nn.Linear: peft adapts linear layers", g.span, hint)


def lora_targets(ctx) -> tuple[int, list[str]]:
    """(rank, the nn.Linear modules the lora globs adapt) as runtime.lora.apply_lora resolves
    them; (0, []) for a plan without LoRA. The estimate adds their adapters."""
    from torch import nn

    rule = lora_rule(ctx.plan)
    if rule is None:
        return 0, []
    model = ctx.tree.model
    names: list[str] = []
    for _, mods in [x for x in ctx.rule_modules("lora")]:
        names += [n for n in mods if n not in names and isinstance(model.get_submodule(n), nn.Linear)]
    return int(rule.options["rank"].value), names
