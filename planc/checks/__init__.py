"""`planc check`: rule passes over a resolved plan, each in a module of its own.

Every rule has a name (shown as `error[name]`), a line in docs/rules.md and a test with a plan that
breaks it. Passes run in order; a pass that needs what an earlier one could not provide (the model
tree, the mesh) skips its rules rather than guessing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..diagnostics import Diagnostic, Span
from ..resolve import Plan


@dataclass
class Context:
    plan: Plan
    world: int | None = None  # --world N
    diags: list[Diagnostic] = field(default_factory=list)
    degrees: dict[str, int] | None = None  # resolved mesh degrees (after the mesh pass)
    tree: object = None  # planc.model_tree.ModelTree (after the model pass)
    matches: dict = field(default_factory=dict)  # (rule index, glob index) -> module names
    notes: list[str] = field(default_factory=list)  # summary lines contributed by passes
    skip_files: bool = False  # --skip-files: do not read data or tokenizer files
    data_estimate: str | None = None  # the mixture's tokens per step (data pass, when files are read)

    def error(self, rule: str, message: str, span: Span | None, help: str | None = None):
        self.diags.append(Diagnostic(rule, message, span, help, "error"))

    def warn(self, rule: str, message: str, span: Span | None, help: str | None = None):
        self.diags.append(Diagnostic(rule, message, span, help, "warning"))

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diags)

    # derived sizes used by several passes
    @property
    def dp(self) -> int:
        from ..layout import Layout

        return Layout.from_degrees(self.degrees or {}).dp

    def rule_modules(self, kind: str, style: str | None = None) -> list[tuple[object, list[str]]]:
        """[(rule, matched module names)] for the rules of one kind."""
        out = []
        for i, r in enumerate(self.plan.rules):
            if r.kind == kind and (style is None or r.style == style):
                names = []
                for j in range(len(r.globs)):
                    names += [n for n in self.matches.get((i, j), []) if n not in names]
                out.append((r, names))
        return out


def run_checks(plan: Plan, world: int | None = None, skip_files: bool = False) -> Context:
    from . import checkpoint, data, kernels, mesh, model, parallel, sharding, train

    ctx = Context(plan, world, skip_files=skip_files)
    for p in (mesh, model, sharding, parallel, data, train, checkpoint, kernels):
        p.check(ctx)
    return ctx


def all_rules() -> dict[str, str]:
    """Every rule name -> one line of what it guards (for docs and tests)."""
    from . import checkpoint, data, kernels, mesh, model, parallel, sharding, train

    rules = {
        "syntax": "the plan parses (strings, numbers, braces, lists)",
        "plan-file": "the plan file can be read",
        "plan-name": "`plan \"NAME\"` comes first; NAME can name a file and does not shadow an importable module",
        "unknown-block": "blocks are model, mesh, parallelize, data, train, checkpoint, kernels",
        "duplicate-block": "each block appears once",
        "missing-block": "model, data and train are present",
        "block-args": "a block takes a { body } and no arguments",
        "block-body": "a block has a { body }",
        "unknown-key": "keys and options are known names (with did-you-mean)",
        "duplicate-key": "a key is set once per block",
        "missing-key": "required keys are present",
        "unknown-statement": "statements are known in their block",
        "statement-args": "statements get the arguments they take",
        "source-name": "source names are simple and do not shadow data keys",
        "type": "values have the key's type",
        "range": "values are in the key's range",
        "unknown-value": "enum values are known (with did-you-mean)",
    }
    for p in (mesh, model, sharding, parallel, data, train, checkpoint, kernels):
        rules.update(p.RULES)
    return rules
