"""AdamW with weight-decay groups, learning-rate schedules, and gradient clipping for sharded grads.

Weight decay applies to every parameter with two or more dimensions (linear weights and the
embedding/head matrices) and not to 1-D ones (norm scales, biases): decaying a norm's scale pulls
it towards zero, which only fights the normalisation.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR

from .vocab import SCHEDULES

__all__ = ["param_groups", "build_optimizer", "lr_factor", "build_schedule", "clip_grad_norm"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: >=2-D parameters with `weight_decay`, the rest (norms, biases) without."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _foreach_ok(params) -> bool | None:
    """None (torch decides) when all parameters are plain tensors or all DTensors on one mesh;
    False otherwise: foreach kernels cannot mix plain tensors and DTensors (e.g. TP leaves some
    parameters plain) or DTensors of different meshes."""
    meshes = {p.device_mesh if isinstance(p, DTensor) else None for p in params}
    return None if len(meshes) <= 1 else False


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95),
                    eps: float = 1e-8, parts=()) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters (call after sharding: it holds the shards).
    `parts`: (module glob, lr) pairs giving parts of the model their own rate (runtime.parts)."""
    if parts:
        from runtime.parts import lr_groups

        groups = lr_groups(model, lr, weight_decay, parts)
    else:
        groups = param_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    if len(betas) != 2:
        raise ValueError(f"train.betas must hold two numbers, got {betas!r}")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(float(b) for b in betas), eps=eps,
                             foreach=_foreach_ok(params))


def lr_factor(step: int, *, kind: str, steps: int, warmup: int = 0, min_lr: float = 0.0) -> float:
    """Multiplier of the peak lr for the optimizer step that follows `step` completed steps.

    Warmup rises linearly to 1.0 on step index ``warmup - 1``; then `constant` stays at 1,
    `linear` and `cosine` fall from 1 towards `min_lr` (a fraction of the peak), which they would
    reach at index `steps` (one past the last step).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    shape = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + (1.0 - min_lr) * shape


def build_schedule(optimizer: torch.optim.Optimizer, *, kind: str, steps: int, warmup: int = 0,
                   min_lr: float = 0.0) -> LambdaLR:
    """A LambdaLR following `lr_factor`; its state (the step count) goes into checkpoints."""
    if warmup < 0 or not 0.0 <= min_lr <= 1.0:
        raise ValueError(f"need warmup >= 0 and 0 <= min_lr <= 1, got warmup={warmup}, min_lr={min_lr}")
    lr_factor(0, kind=kind, steps=steps)  # validates `kind` before the first step needs it
    return LambdaLR(optimizer, lambda s: lr_factor(s, kind=kind, steps=steps, warmup=warmup, min_lr=min_lr))


@torch.no_grad()
def clip_grad_norm(parameters, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Global gradient norm over all ranks' shards (float64), and clip to `max_norm` (0 = only measure).

    The 2-norm takes one all-reduce over the world, whatever the meshes: each rank adds the squares
    of its local gradient shards, each divided by the number of ranks that hold the same shard (a
    DTensor's shard is held by world / (product of its mesh's sharded dims) ranks; a plain tensor by
    every rank: data-parallel replicas have equal gradients by the time they are clipped). Other
    norms, and gradients left Partial, go through DTensor per (mesh, placements) group instead.

    Norms are accumulated in float64. torch's fp32 norm kernel on CPU sums naively and is off by
    ~1e-5 relative on a 100k-element gradient, more than the parity this runtime is held to; so
    on one process the result equals `torch.nn.utils.clip_grad_norm_` only up to that error, and
    is closer to the exact norm. The clipping coefficient is torch's formula.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0, dtype=torch.float64)
    grads = [p.grad for p in params]
    partial = any(isinstance(g, DTensor) and any(pl.is_partial() for pl in g.placements) for g in grads)
    if norm_type == 2.0 and not partial and dist.is_available() and dist.is_initialized():
        total = _two_norm_one_reduce(grads)
    else:
        total = _norm_by_groups(grads, norm_type)
    if max_norm > 0:
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g = g.to_local() if isinstance(g, DTensor) else g
            g.mul_(coef.to(device=g.device, dtype=g.dtype))
    return total


def _two_norm_one_reduce(grads) -> torch.Tensor:
    world = dist.get_world_size()
    device = (grads[0].to_local() if isinstance(grads[0], DTensor) else grads[0]).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        if isinstance(g, DTensor):
            # any non-replicated dim cuts the tensor (Shard, and FSDP-over-TP's _StridedShard)
            shards = math.prod(g.device_mesh.size(i) for i, pl in enumerate(g.placements) if not pl.is_replicate())
            local, copies = g.to_local(), world // shards
        else:
            local, copies = g, world
        total += torch.linalg.vector_norm(local, 2, dtype=torch.float64).to(device).square() / copies
    dist.all_reduce(total)
    return total.sqrt()


def _norm_by_groups(grads, norm_type: float) -> torch.Tensor:
    """DTensor computes each (mesh, placements) group's norm, reducing over exactly the mesh dims
    the group is sharded on; the groups are then combined. Plain tensors count as they are."""
    groups: dict = {}
    for g in grads:
        key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else None
        groups.setdefault(key, []).append(g)
    norms = []
    for members in groups.values():
        per_tensor = [torch.linalg.vector_norm(g, norm_type, dtype=torch.float64) for g in members]
        n = torch.linalg.vector_norm(torch.stack(per_tensor), norm_type)
        norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), norm_type)
