"""Activation checkpointing of the modules a plan's `checkpoint` globs name.

Uses torch's composable, non-reentrant `checkpoint`: it works through forward hooks and leaves
module names unchanged, so FSDP globs, DCP keys and the HF export see the same names as without it.
It must be applied before FSDP (FSDP's own hooks then run inside the recomputation).
"""
from __future__ import annotations

from torch import nn
from torch.distributed._composable import checkpoint

from runtime.parallel.globs import match_modules

__all__ = ["apply_activation_checkpointing"]


def apply_activation_checkpointing(model: nn.Module, patterns) -> list[str]:
    """Checkpoint every module the globs match (outermost only: a checkpoint inside another
    recomputes twice for nothing). Returns the names checkpointed."""
    names: list[str] = []
    for pattern in patterns:
        found = match_modules(model, pattern)
        if not found:
            raise ValueError(f"checkpoint glob {pattern!r} matches no module of {type(model).__name__}")
        names += [n for n in found if n not in names]
    outer = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    for name in outer:
        checkpoint(model.get_submodule(name))
    return outer
