"""Plan file -> checked plan: parse, resolve, elaborate, run the rule passes; then the estimate
rules. `check_plan` is the one call behind `planc check` and `planc compile`."""
from __future__ import annotations

from dataclasses import dataclass

from .checks import Context, run_checks
from .diagnostics import Diagnostic, PlanError
from .elaborate import elaborate
from .estimate import TooLarge, report
from .parse import parse_file
from .plan import Plan
from .resolve import resolve


@dataclass
class Checked:
    source: str | None
    diagnostics: list[Diagnostic]
    plan: Plan | None = None  # elaborated: named rule sets expanded
    ctx: Context | None = None
    report: object = None  # planc.estimate.Report, from check_plan (None when no estimate was made)

    @property
    def ok(self) -> bool:
        return self.plan is not None and not any(d.severity == "error" for d in self.diagnostics)


def check_file(path: str, world: int | None = None, skip_files: bool = False) -> Checked:
    """Parse, resolve, elaborate and check a plan. `skip_files` skips the rules that read data and
    tokenizer files (for plans checked away from the cluster whose storage holds them)."""
    try:
        doc = parse_file(path)
    except PlanError as e:
        return Checked(e.source, e.diagnostics)  # the text the diagnostics point into (None if unreadable)
    plan, diags = resolve(doc)
    if any(d.severity == "error" for d in diags):
        return Checked(doc.source, diags, None)
    plan, tree, more = elaborate(plan)
    ctx = run_checks(plan, world, skip_files, tree)
    return Checked(doc.source, diags + more + ctx.diags, plan, ctx)


def check_plan(path: str, world: int | None = None, *, skip_files: bool = False, device_memory: int | None = None,
               gpus_per_node: int | None = None, dry_run: bool = False) -> Checked:
    """Everything cheap that proves a plan before anything is written or launched: `check_file`,
    then for a plan that composes its per-rank estimates and their rules (`node-span`; with
    `device_memory` (bytes), `memory-budget`). `planc check` and `planc compile` both call this,
    so a plan one accepts the other accepts. `dry_run` adds the fake-process-group build
    (`planc check --dry-run`): not cheap, so compile does not offer it.

    Without `dry_run` or `device_memory` an estimate that cannot be made is only noted (the check
    itself stands); with them it is an error of planc's."""
    checked = check_file(path, world, skip_files)
    if not checked.ok:
        return checked
    asked = dry_run or device_memory is not None
    try:
        rep = report(checked, dry_run=dry_run, device_memory=device_memory, gpus_per_node=gpus_per_node)
    except TooLarge as e:
        checked.ctx.notes.append(f"per-rank estimate unavailable: {e}")
        if asked:  # what was asked for (a budget, a dry run) cannot be answered: say so where the mesh is
            checked.diagnostics.append(Diagnostic(
                "memory-budget" if device_memory is not None else "dry-run", f"not checked: {e}",
                checked.plan.blocks.get("mesh", checked.plan.name_span), "check a smaller world"))
        return checked
    except Exception as e:
        if asked:
            raise
        checked.ctx.notes.append(f"per-rank estimate unavailable: {type(e).__name__}: {e}")
        return checked
    checked.diagnostics.extend(rep.diagnostics)
    checked.report = rep
    return checked
