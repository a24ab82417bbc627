"""Between resolve and the checks, the plan meets its model: the config is built into its module
tree (on the meta device), and the named rule sets of planc/tp_sets.py (`tp plan = megatron`,
`tp plan = megatron_sp`, `ep plan = model`) become ordinary rules on the plan's line. Every rule
check then applies to them, the checks only read the plan, and the generated script spells each
style out with its modules.

`elaborate(plan)` returns a new Plan (the resolved one is left as it was), the model tree (None
when the config does not build) and the diagnostics of this step.
"""
from __future__ import annotations

import dataclasses

from .diagnostics import Diagnostic
from .model_tree import ModelLoadError, ModelTree, load_tree, match
from .plan import Glob, Plan, Rule, Setting
from .tp_sets import FAMILIES, NAMED, ep_globs, tp_set

RULES = {
    "model-config": "the model config is a local HF config that transformers can build (meta device)",
    "remote-code": "a model directory that ships its own modeling code is built only with trust_remote_code = true",
}


def elaborate(plan: Plan) -> tuple[Plan, ModelTree | None, list[Diagnostic]]:
    if plan["model.config"] is None:
        return plan, None, []
    try:
        tree = load_tree(plan["model.config"], plan["model.attention"], plan["model.trust_remote_code"])
    except ModelLoadError as e:
        return plan, None, [Diagnostic(e.rule, str(e), plan.value_span("model.config"), e.help)]
    rules, diags = expand_named_sets(plan.rules, tree)
    return dataclasses.replace(plan, rules=rules), tree, diags


def expand_named_sets(rules: list[Rule], tree: ModelTree) -> tuple[list[Rule], list[Diagnostic]]:
    """The rules with each named set replaced by the rules it stands for (globs at the set's name);
    a set that does not apply to this model is dropped with an error."""
    out, diags = [], []
    for r in rules:
        plan = r.options.get("plan")
        name = plan.value if plan is not None else None
        if r.kind == "tp" and name in NAMED:
            if tree.text_config.model_type not in FAMILIES:
                diags.append(Diagnostic(
                    "tp-rules", f"`tp plan = {name}` knows the module names of {', '.join(FAMILIES)}, not of "
                    f"{tree.model_type}", plan.span, "write the tp rules out, or use `tp plan = model`"))
                continue
            for style, globs in tp_set(name, lambda g: bool(match(tree, g)), tree.language):
                out.append(Rule("tp", style, [Glob(g, plan.span) for g in globs], {"plan": Setting(None)}, r.span))
            continue
        if r.kind == "ep" and name == "model":
            globs = ep_globs(tree.config, tree.language)
            if not globs:
                diags.append(Diagnostic(
                    "ep-experts", f"{tree.model_type}'s config has no base_model_ep_plan naming its experts",
                    plan.span, 'name the experts modules: `ep "model.layers.*.mlp.experts"`'))
                continue
            r = Rule("ep", None, r.globs + [Glob(g, plan.span) for g in globs], {"plan": Setting(None)}, r.span)
        out.append(r)
    return out, diags
