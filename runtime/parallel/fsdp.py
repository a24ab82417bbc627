"""FSDP2 (`fully_shard`) over the modules a plan's `fsdp` globs name, then the root.

Units are wrapped deepest first so each parameter belongs to the innermost matching unit; the root
takes whatever is left (embeddings, final norm, head). A 2-D mesh (dp_replicate, fsdp) gives HSDP.

Gradients are SUMMED across ranks, not averaged: the loss of each rank is already divided by the
global number of target tokens of the step (runtime.loss), so the sum over ranks is exactly the
single-process gradient for any rank count. Averaging instead would need the loss multiplied by
the data-parallel size, which is exact only for powers of two.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from runtime.parallel.globs import match_modules

__all__ = ["units", "apply_fsdp", "sum_gradients"]


def units(model: nn.Module, patterns) -> list[str]:
    """Names of the modules the globs match, deepest first (ties in module order).

    Every glob must match something: a glob that matches nothing is a plan error, not a no-op.
    """
    names: list[str] = []
    for pattern in patterns:
        found = match_modules(model, pattern)
        if not found:
            raise ValueError(f"fsdp glob {pattern!r} matches no module of {type(model).__name__}")
        names += [n for n in found if n not in names]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(names, key=lambda n: (-n.count("."), order[n]))


def sum_gradients(module: nn.Module) -> None:
    """Make every FSDP/replicate unit under `module` reduce gradients by plain sum."""
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            # a 1.0 factor alone becomes PREMUL_SUM, which gloo lacks; force a plain SUM
            m.set_force_sum_reduction_for_comms(True)


def _nothing_to_do(model: nn.Module, mesh: DeviceMesh, param_dtype, offload: bool) -> bool:
    """True on a world of one process when FSDP would only copy: nothing to shard or reduce, and
    no compute-dtype cast or offload asked for. Its hooks still cost ~5% of a demo step there
    (each unit "all-gathered" by a copy per forward and recomputation, DTensor dispatch in
    AdamW; bench/train_overhead.py). (The reduce dtype only matters to a cross-rank sum.)"""
    one_process = mesh.size() == 1 and (not dist.is_initialized() or dist.get_world_size() == 1)
    same_dtype = param_dtype is None or all(p.dtype == param_dtype for p in model.parameters())
    return one_process and same_dtype and not offload


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, patterns, *, reshard_after_forward: bool = True,
               param_dtype=None, reduce_dtype=None, offload: bool = False) -> list[str]:
    """Shard each matched module, then the root; returns the unit names (deepest first).

    `param_dtype`/`reduce_dtype` form the MixedPrecisionPolicy (None keeps the parameter dtype).
    `offload` keeps shards and optimizer state in CPU memory (pin_memory only where CUDA exists).
    A run of one process without a dtype cast or offload is left unwrapped (see `_nothing_to_do`).
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    off = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
    names = units(model, patterns)
    if _nothing_to_do(model, mesh, param_dtype, offload):
        return names
    for name in names:
        fully_shard(model.get_submodule(name), mesh=mesh, reshard_after_forward=reshard_after_forward,
                    mp_policy=mp, offload_policy=off)
    # The root's parameters are needed again right at the start of backward (the head), so it
    # stays unsharded after forward.
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=mp, offload_policy=off)
    sum_gradients(model)
    return names
