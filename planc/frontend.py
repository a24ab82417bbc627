"""Plan file -> checked plan: parse, resolve, run the rule passes. One call for every command."""
from __future__ import annotations

from dataclasses import dataclass

from .checks import Context, run_checks
from .diagnostics import Diagnostic, PlanError
from .parse import parse_file
from .resolve import Plan, resolve


@dataclass
class Checked:
    source: str | None
    diagnostics: list[Diagnostic]
    plan: Plan | None = None
    ctx: Context | None = None

    @property
    def ok(self) -> bool:
        return self.plan is not None and not any(d.severity == "error" for d in self.diagnostics)


def check_file(path: str, world: int | None = None, skip_files: bool = False) -> Checked:
    """Parse, resolve and check a plan. `skip_files` skips the rules that read data and tokenizer
    files (for plans checked away from the cluster whose storage holds them)."""
    try:
        doc = parse_file(path)
    except PlanError as e:
        return Checked(e.source, e.diagnostics)  # the text the diagnostics point into (None if unreadable)
    plan, diags = resolve(doc)
    if any(d.severity == "error" for d in diags):
        return Checked(doc.source, diags, None)
    ctx = run_checks(plan, world, skip_files)
    return Checked(doc.source, diags + ctx.diags, plan, ctx)
