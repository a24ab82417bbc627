"""What `planc check` adds for a plan that composes: the estimates for its summary, the
`node-span` and `memory-budget` rules, and with --dry-run the fake-process-group build."""
from __future__ import annotations


def run(checked, *, dry_run: bool = False, device_memory: str | None = None, gpus_per_node: int | None = None):
    """The Report (its diagnostics appended to `checked.diagnostics`), or None when the plan does
    not compose. Without --dry-run or --device-memory an estimate that cannot be made is only
    noted (the check itself stands); with them it is an error of planc's."""
    from ..diagnostics import Diagnostic
    from . import TooLarge, report

    if not checked.ok:
        return None
    budget = None
    if device_memory is not None:
        from ..cli import _size

        budget = _size(device_memory)
    asked = dry_run or budget is not None
    try:
        rep = report(checked, dry_run=dry_run, device_memory=budget, gpus_per_node=gpus_per_node)
    except TooLarge as e:
        checked.ctx.notes.append(f"per-rank estimate unavailable: {e}")
        if asked:  # what was asked for (a budget, a dry run) cannot be answered: say so where the mesh is
            checked.diagnostics.append(Diagnostic(
                "memory-budget" if budget is not None else "dry-run", f"not checked: {e}",
                checked.plan.blocks.get("mesh", checked.plan.name_span), "check a smaller world"))
        return None
    except Exception as e:
        if asked:
            raise
        checked.ctx.notes.append(f"per-rank estimate unavailable: {type(e).__name__}: {e}")
        return None
    checked.diagnostics.extend(rep.diagnostics)
    return rep
