"""Carve the expert-parallel meshes out of the plan's mesh.

Experts borrow ranks from the FSDP dim (dp_shard * sp): that dim is split into
``(ep_fsdp, ep)`` with ep innermost, so the ranks that swap tokens are neighbours. Expert weights
are sharded over `ep` by `apply_ep` and FSDP-sharded over `ep_fsdp` (with the dp_replicate dim
in front for HSDP); everything else stays FSDP-sharded over the whole fsdp dim.
"""
from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh

__all__ = ["ep_meshes"]


def ep_meshes(root: DeviceMesh, ep: int, *, fsdp_dim: str = "fsdp",
              replicate_dim: str = "dp_replicate") -> tuple[DeviceMesh, DeviceMesh]:
    """(ep_mesh, experts_fsdp_mesh) from `root`, which has a `fsdp_dim` of size dp_shard*sp.

    experts_fsdp_mesh is 1-D (ep_fsdp) or, when `replicate_dim` has size > 1, 2-D
    (dp_replicate, ep_fsdp) for HSDP. Both share `root`, as FSDP2 requires for 2-D sharding.
    """
    names = root.mesh_dim_names or ()
    if fsdp_dim not in names:
        raise ValueError(f"the mesh has no {fsdp_dim!r} dim to carve ep from (dims: {names})")
    borrow = root[fsdp_dim].size()
    if ep < 1 or borrow % ep:
        raise ValueError(f"ep={ep} must divide dp_shard*sp={borrow} (experts borrow those ranks)")
    split = root[fsdp_dim]._unflatten(0, (borrow // ep, ep), ("ep_fsdp", "ep"))
    ep_mesh, ep_fsdp = split["ep"], split["ep_fsdp"]
    if replicate_dim in names and root[replicate_dim].size() > 1:
        ep_fsdp = DeviceMesh._concatenate([root[replicate_dim], ep_fsdp])
    return ep_mesh, ep_fsdp
