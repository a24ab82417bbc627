"""Model parts by module glob: freezing, and a learning rate per part (a vision tower frozen, its
projector at a tenth of the language model's rate...).

`freeze(model, patterns)` turns off gradients for every parameter under the matched modules; call
it before sharding (FSDP2 keeps each parameter's requires_grad), so the optimizer never holds them
and FSDP never reduces gradients for them. `lr_groups(model, lr, weight_decay, parts)` makes the
optimizer's parameter groups: each trainable parameter takes the rate of the first part whose
modules hold it (else `lr`), and as in runtime.optim, 1-D parameters get no weight decay. The LR
schedule scales every group's rate by the same factor, so the ratios stay.
"""
from __future__ import annotations

from torch import nn

from runtime.parallel.globs import match_modules

__all__ = ["freeze", "lr_groups"]


def _owners(model: nn.Module, pattern: str, what: str) -> list[str]:
    found = match_modules(model, pattern)
    if not found:
        raise ValueError(f"{what} glob {pattern!r} matches no module of {type(model).__name__}")
    return found


def _under(name: str, modules: list[str]) -> bool:
    return any(m == "" or name.startswith(m + ".") for m in modules)


def freeze(model: nn.Module, patterns) -> list[str]:
    """Freeze every parameter of the modules the globs match; returns the frozen parameter names."""
    modules = [m for p in patterns for m in _owners(model, p, "freeze")]
    frozen = []
    for name, param in model.named_parameters():
        if _under(name, modules):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def lr_groups(model: nn.Module, lr: float, weight_decay: float, parts=()) -> list[dict]:
    """AdamW parameter groups: the rest at `lr` first, then per part (glob, lr); each split into
    decayed (>= 2-D) and not decayed (1-D) parameters. Empty groups are left out."""
    owners = [(_owners(model, glob, "lr"), float(part_lr)) for glob, part_lr in parts]
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        rate = next((r for modules, r in owners if _under(name, modules)), float(lr))
        groups.setdefault((rate, param.ndim >= 2), []).append(param)
    # the base rate's groups first: a log line reads the first group's rate as "the" learning rate
    order = sorted(groups, key=lambda k: k[0] != float(lr))
    return [{"params": groups[(rate, decay)], "lr": rate, "weight_decay": weight_decay if decay else 0.0}
            for rate, decay in order]
