"""`planc check`: rule passes over an elaborated plan (planc/elaborate.py), each in a module of its own.

Every rule has a name (shown as `error[name]`), a line in the RULES of the module that reports it
(planc/rules.py collects them all), a line in docs/rules.md and a test with a plan that breaks it.
Passes run in order and only read the plan; a pass that needs what an earlier one could not provide
(the model tree, the mesh) skips its rules rather than guessing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..diagnostics import Diagnostic, Span
from ..plan import Plan


@dataclass
class Context:
    plan: Plan
    world: int | None = None  # --world N
    diags: list[Diagnostic] = field(default_factory=list)
    degrees: dict[str, int] | None = None  # resolved mesh degrees (after the mesh pass)
    tree: object = None  # planc.model_tree.ModelTree (built by planc/elaborate.py)
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


def passes() -> tuple:
    """The rule passes, in the order they run."""
    from . import checkpoint, data, diffusion, kernels, loop, lora, mesh, model, parallel, sharding, train, vision

    return mesh, model, sharding, parallel, data, vision, diffusion, train, lora, loop, checkpoint, kernels


def run_checks(plan: Plan, world: int | None = None, skip_files: bool = False, tree=None) -> Context:
    """Every pass over an elaborated plan (planc/elaborate.py: `tree` is its model, named rule sets
    are expanded). The passes only read the plan; what they find goes to the Context."""
    ctx = Context(plan, world, tree=tree, skip_files=skip_files)
    for p in passes():
        p.check(ctx)
    return ctx
