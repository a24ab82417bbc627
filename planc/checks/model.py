"""Model rules: the config loads, the model builds on the meta device, every glob matches."""
from __future__ import annotations

import difflib
import re

from .. import paths
from ..diagnostics import elide
from ..model_tree import ModelLoadError, config_dir, load_tree, match

RULES = {
    "model-config": "the model config is a local HF config that transformers can build (meta device)",
    "model-weights": "a `weights` directory holds *.safetensors",
    "glob-unmatched": "every module glob matches at least one module of the real model",
    "glob-syntax": "globs are well formed (balanced braces, no empty parts)",
}


def check(ctx) -> None:
    p = ctx.plan
    if p["model.config"] is None:
        return
    try:
        ctx.tree = load_tree(p["model.config"], p["model.attention"])
    except ModelLoadError as e:
        ctx.error("model-config", str(e), p.value_span("model.config"), e.help)
        return
    weights = p["model.weights"]
    if weights is not None:
        fix = "point `weights` at an HF directory with safetensors files, or drop it to train from scratch"
        try:
            d = config_dir(weights)
            if not paths.is_dir(d) or not paths.has_match(d, "*.safetensors"):
                ctx.error("model-weights", f"{weights} holds no *.safetensors", p.value_span("model.weights"), fix)
        except paths.PathError as e:
            ctx.error("model-weights", f"cannot use {elide(weights)} as weights: {e}", p.value_span("model.weights"),
                      fix)
    _expand_named_sets(ctx)
    for i, rule in enumerate(p.rules):
        for j, g in enumerate(rule.globs):
            problem = _glob_problem(g.pattern)
            if problem:
                ctx.error("glob-syntax", f"bad module glob {g.pattern!r}: {problem}", g.span,
                          "globs use `*` (one name part), `**` (any parts), `{a,b}` and `?`")
                continue
            try:
                names = match(ctx.tree, g.pattern)
            except ValueError as e:  # the runtime's own refusal (runtime.parallel.globs.GlobError)
                ctx.error("glob-syntax", f"bad module glob {g.pattern!r}: {e}", g.span,
                          "globs use `*` (one name part), `**` (any parts), `{a,b}` and `?`")
                continue
            ctx.matches[(i, j)] = names
            if not names:
                ctx.error("glob-unmatched", f"{g.pattern!r} matches no module of {ctx.tree.model_type}", g.span,
                          _nearest_glob(g.pattern, ctx.tree.modules))


def _expand_named_sets(ctx) -> None:
    """`tp plan = megatron[_sp]` and `ep plan = model` become ordinary rules on the plan's line."""
    from ..resolve import Glob, Rule, Setting
    from ..tp_sets import FAMILIES, NAMED, ep_globs, tp_set

    p, tree = ctx.plan, ctx.tree
    rules = []
    for r in p.rules:
        plan = r.options.get("plan")
        name = plan.value if plan is not None else None
        if r.kind == "tp" and name in NAMED:
            if tree.model_type not in FAMILIES:
                ctx.error("tp-rules", f"`tp plan = {name}` knows the module names of {', '.join(FAMILIES)}, "
                          f"not of {tree.model_type}", plan.span, "write the tp rules out, or use `tp plan = model`")
                continue
            for style, globs in tp_set(name, lambda g: bool(match(tree, g))):
                rules.append(Rule("tp", style, [Glob(g, plan.span) for g in globs],
                                  {"plan": Setting(None)}, r.span))
            continue
        if r.kind == "ep" and name == "model":
            globs = ep_globs(tree.config)
            if not globs:
                ctx.error("ep-experts", f"{tree.model_type}'s config has no base_model_ep_plan naming its experts",
                          plan.span, 'name the experts modules: `ep "model.layers.*.mlp.experts"`')
                continue
            r = Rule("ep", None, r.globs + [Glob(g, plan.span) for g in globs], {"plan": Setting(None)}, r.span)
        rules.append(r)
    p.rules[:] = rules


def _glob_problem(pattern: str) -> str | None:
    if not pattern.strip():
        return "it is empty"
    depth = 0
    for ch in pattern:
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0 or depth > 1:
            return "unbalanced or nested braces"
    if depth:
        return "a `{` is not closed"
    if pattern.startswith(".") or pattern.endswith(".") or ".." in pattern:
        return "empty name part"
    return None


def _nearest_glob(pattern: str, modules: list[str]) -> str:
    """Suggest a glob in the shape of the real names: layer numbers folded into `*`."""
    shapes = sorted({re.sub(r"(?<=\.)\d+(?=\.|$)", "*", m) for m in modules if m})
    near = difflib.get_close_matches(pattern, shapes, n=2, cutoff=0.5)
    if near:
        return "did you mean " + " or ".join(f'"{n}"' for n in near) + "?"
    tops = sorted({s.split(".")[0] + ("." + s.split(".")[1] if "." in s else "") for s in shapes})[:8]
    return "module names start with: " + ", ".join(tops)
