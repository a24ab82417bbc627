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
    """Replicate `model` over the data-parallel `mesh`; gradients are all-reduced by sum.

    A 2-D mesh (a plan's ``mesh.fsdp`` with dp_replicate > 1: (dp_replicate, fsdp)) is flattened
    first: every rank of it holds a whole copy, and all of them sum their gradients."""
    if mesh.ndim > 1:
        mesh = mesh._flatten("_".join(mesh.mesh_dim_names or ("dp",)))
    replicate(model, mesh=mesh)
    sum_gradients(model)
    return model
