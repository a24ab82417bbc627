"""Checkpoint rules: the cadence fits the run and the directory can hold checkpoints."""
from __future__ import annotations

from pathlib import Path

from .. import paths
from ..diagnostics import elide

RULES = {
    "checkpoint-every": "checkpoint.every <= train.steps",
    "checkpoint-dir": "checkpoint.dir is a directory (or can become one)",
}


def check(ctx) -> None:
    p = ctx.plan
    if "checkpoint" not in p.blocks:
        return
    every, steps = p["checkpoint.every"], p["train.steps"]
    if every is not None and steps is not None and every > steps:
        ctx.error("checkpoint-every", f"checkpoint every {every} steps, but the run has {steps}",
                  p.span("checkpoint.every"), f"use every <= {steps} (the last step is always saved)")
    d = p["checkpoint.dir"]
    if d is not None:
        path = Path(d)
        try:
            blocker = next((q for q in [path, *path.parents] if paths.exists(q) and not paths.is_dir(q)), None)
        except paths.PathError as e:
            ctx.error("checkpoint-dir", f"{elide(d)} cannot be a directory: {e}", p.value_span("checkpoint.dir"),
                      "choose another directory")
            return
        if blocker is not None:
            ctx.error("checkpoint-dir", f"{blocker} is a file, so {d} cannot be a directory",
                      p.value_span("checkpoint.dir"), "choose another directory")
