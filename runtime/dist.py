"""Process-group start-up, the device mesh of a plan, and a clean shutdown.

`init` works under torchrun and as a plain ``python script.py`` (world 1). `build_mesh` lays the
plan's degrees out on one `DeviceMesh` with named dims ``(dp_replicate, fsdp, tp)``, where
``fsdp = dp_shard * sp`` (Ulysses ranks also shard parameters), and hands out the views each part
of the script needs. `finish` ends the run without the exit race described in its comment.

With PLANC_DETERMINISTIC=1 in the environment (`planc verify` and the tests set it, planc/launch.py),
`init` also turns on torch's deterministic algorithms, so a run's numbers repeat exactly.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .host_memory import keep_freed_memory
from .vocab import DEVICES

__all__ = ["DistInfo", "Mesh", "init", "build_mesh", "check_degrees", "finish"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on its node, its device, backend."""
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str


def init(device: str = "cpu") -> DistInfo:
    """Start the default process group: nccl for a cuda plan on a CUDA machine, gloo otherwise.

    Under torchrun the rendezvous comes from its environment; run as plain ``python script.py``
    the world is this one process, with an in-memory store (no port to pick or collide on).
    A CPU run also keeps freed host memory for reuse (runtime.host_memory: no page faults per step).
    """
    if device not in DEVICES:
        raise SystemExit(f"error: mesh.device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: the plan runs on cuda (mesh.device) but no CUDA device is visible; "
                         "run it with --mesh.device cpu")
    backend = "nccl" if device == "cuda" else "gloo"
    if os.environ.get("PLANC_DETERMINISTIC") == "1":
        torch.use_deterministic_algorithms(True)
    under_launcher = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if under_launcher else 0
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        keep_freed_memory()
    if not dist.is_initialized():
        if under_launcher:
            kwargs = {"device_id": dev} if device == "cuda" else {}
            dist.init_process_group(backend, **kwargs)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def check_degrees(world: int, **degrees: int) -> None:
    """Exit with a clear message unless every degree is >= 1 and their product is the world size."""
    for name, d in degrees.items():
        if not isinstance(d, int) or d < 1:
            raise SystemExit(f"error: mesh.{name} must be an int >= 1, got {d!r}")
    product = math.prod(degrees.values())
    if product != world:
        shown = " * ".join(f"{k}={v}" for k, v in degrees.items())
        raise SystemExit(
            f"error: the mesh needs {product} processes ({shown}) but {world} were launched; "
            f"launch with --nproc-per-node {product} or override the degrees (e.g. --mesh.dp_shard)")


@dataclass
class Mesh:
    """The views of one plan's DeviceMesh.

    - `fsdp`: what `fully_shard` takes: 1-D over dp_shard*sp, or 2-D (dp_replicate, fsdp) for HSDP.
    - `dp_rank`/`dp_size`: the data loader's split (dp_replicate*dp_shard; sp ranks read the same rows).
    - `loss`: the flat dp x sp mesh over which loss sums and token counts are all-reduced;
      `loss_group` is its process group. `replicate` is the same mesh: plain replication (DDP)
      all-reduces gradients over every data-parallel and sp rank.
    - `tp`, `sp`: 1-D sub-meshes (size 1 when unused).
    Expert parallelism is carved later from the ``fsdp`` dim (``root["fsdp"]._unflatten``), which is
    why dp_shard and sp sit in one dim of `root`.
    """
    root: DeviceMesh
    fsdp: DeviceMesh
    loss: DeviceMesh
    tp: DeviceMesh
    sp: DeviceMesh
    dp_rank: int
    dp_size: int
    degrees: dict = field(default_factory=dict)

    @property
    def replicate(self) -> DeviceMesh:
        """The 1-D mesh `apply_replicate` all-reduces gradients over (dp_replicate * dp_shard * sp)."""
        return self.loss

    @property
    def loss_group(self) -> dist.ProcessGroup:
        return self.loss.get_group()

    def grad_accum(self, global_batch: int, micro_batch: int) -> int:
        """Micro-batches per rank per step; exits unless the global batch splits evenly."""
        rows = micro_batch * self.dp_size
        if micro_batch < 1 or global_batch < 1 or global_batch % rows:
            raise SystemExit(
                f"error: train.global_batch ({global_batch}) must be a multiple of train.micro_batch "
                f"({micro_batch}) x data-parallel ranks ({self.dp_size}) = {rows}")
        return global_batch // rows


def build_mesh(info: DistInfo, *, dp_replicate: int = 1, dp_shard: int = 1, sp: int = 1, tp: int = 1) -> Mesh:
    """Lay the plan's degrees out on one DeviceMesh (tp innermost: it talks the most)."""
    check_degrees(info.world, dp_replicate=dp_replicate, dp_shard=dp_shard, sp=sp, tp=tp)
    root = init_device_mesh(info.device.type, (dp_replicate, dp_shard * sp, tp),
                            mesh_dim_names=("dp_replicate", "fsdp", "tp"))
    fsdp = root["dp_replicate", "fsdp"] if dp_replicate > 1 else root["fsdp"]
    # Keep the mesh `_flatten` returns: re-slicing a flattened name from the root is deprecated.
    loss = root["dp_replicate", "fsdp"]._flatten("dp_sp")
    # Ulysses ranks are the inner part of the fsdp dim, so sp peers hold neighbouring ranks.
    split = root["fsdp"]._unflatten(0, (dp_shard, sp), ("dp_shard", "sp"))
    sp_mesh = split["sp"]
    dp_rank = root["dp_replicate"].get_local_rank() * dp_shard + split["dp_shard"].get_local_rank()
    return Mesh(root=root, fsdp=fsdp, loss=loss, tp=root["tp"], sp=sp_mesh,
                dp_rank=dp_rank, dp_size=dp_replicate * dp_shard,
                degrees=dict(dp_replicate=dp_replicate, dp_shard=dp_shard, sp=sp, tp=tp))


def finish() -> None:
    """End the run: a barrier on every rank, then destroy all process groups explicitly.

    Why this order. A gloo rank that reads end-of-file on a connection marks it failed and fails
    every operation still pending on it ("Connection closed by peer"). So a rank must not close
    its sockets (destroy, or simply exit) while a peer may still have an operation outstanding
    with it: a peer that is still finishing a collective this rank has already completed, or one
    that has already posted its next operation. The barrier is the last operation of every rank,
    and a rank leaves gloo's (dissemination) barrier only after all its messages of that barrier
    were written and all it expects were received, so afterwards no rank has anything pending.
    Destroying explicitly, rather than leaving it to interpreter exit, joins gloo's worker
    threads while Python is still intact. (Checked with strace: destroy closes gloo sockets
    gracefully, without SO_LINGER resets, so bytes already written are still delivered.)
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
