"""Plain data-parallel replication, for plans that say `replicate` instead of `fsdp`.

Uses torch's FSDP-based composable `replicate`: parameters become replicated DTensors, so the
optimizer, gradient clipping, DCP checkpoints and HF export treat it like FSDP, and gradients are
summed across ranks like FSDP (see runtime.parallel.fsdp for why).
"""
from __future__ import annotations

from torch import nn
from torch.distributed._composable.replicate_with_fsdp import replicate
from torch.distributed.device_mesh import DeviceMesh

from runtime.parallel.fsdp import sum_gradients

__all__ = ["apply_replicate"]


def apply_replicate(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Replicate `model` over the 1-D data-parallel `mesh`; gradients are all-reduced by sum."""
    if mesh.ndim != 1:
        raise ValueError(f"replicate needs a 1-D data-parallel mesh, got {mesh}")
    replicate(model, mesh=mesh)
    sum_gradients(model)
    return model
