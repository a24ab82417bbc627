"""`torch.compile` of the modules a plan's `compile` globs name.

Each matched module is compiled in place (`nn.Module.compile`), so its name, parameters and
state-dict keys stay the same: FSDP globs, DCP keys and the HF export do not notice. Compilation
itself happens at the first forward. Apply it after activation checkpointing and before FSDP, so
FSDP's hooks stay outside the compiled graph (torchtitan's order).
"""
from __future__ import annotations

from torch import nn

from runtime.parallel.globs import match_modules

__all__ = ["apply_compile"]


def apply_compile(model: nn.Module, patterns) -> list[str]:
    """Compile every module the globs match (outermost only: a compiled module's children are in
    its graph already). Returns the names compiled."""
    names: list[str] = []
    for pattern in patterns:
        found = match_modules(model, pattern)
        if not found:
            raise ValueError(f"compile glob {pattern!r} matches no module of {type(model).__name__}")
        names += [n for n in found if n not in names]
    outer = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    for name in outer:
        model.get_submodule(name).compile()
    return outer
