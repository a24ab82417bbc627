"""Model rules: the weights are there, every glob matches a module of the real model (the tree
planc/elaborate.py built, with the named rule sets already expanded)."""
from __future__ import annotations

import difflib
import re

from .. import paths
from ..diagnostics import elide
from ..model_tree import config_dir, match

RULES = {
    "model-weights": "a `weights` directory holds *.safetensors",
    "glob-unmatched": "every module glob matches at least one module of the real model",
    "glob-syntax": "globs are well formed (balanced braces, no empty parts)",
}


def check(ctx) -> None:
    p = ctx.plan
    if ctx.tree is None:  # no config, or it did not build (model-config)
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
                          _language_hint(ctx.tree, g.pattern) or _nearest_glob(g.pattern, ctx.tree.modules))


def _language_hint(tree, pattern: str) -> str | None:
    """A text model's glob in a vision-language plan: where its modules are in this model."""
    if tree.language == "model" or not pattern.startswith("model."):
        return None
    moved = tree.language + pattern[len("model"):]
    try:
        found = match(tree, moved)
    except ValueError:
        return None
    if found:
        return (f"the language model of {tree.model_type} is `{tree.language}`: write {moved!r} "
                f"({len(found)} module{'s' * (len(found) != 1)})")
    return None


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
