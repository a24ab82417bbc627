"""Activation offloading: keep the tensors autograd saves inside chosen modules in host memory.

    apply_activation_offload(model, ["model.layers.*"])   # with or without `checkpoint` on them

During the forward of each matched module a `torch.autograd.graph.saved_tensors_hooks` pair is
active: a saved tensor is copied to host memory (pinned, asynchronously, on CUDA) and brought back
to its device when backward needs it. Parameters (and views of them, such as the transposed
weight a matmul saves) stay where they are: they are resident anyway, and under FSDP2 they are
re-gathered for backward. Tensors under `min_bytes` stay too (a copy costs more than they hold).
A storage saved several times in one module's forward (the input of q, k and v; views of one
buffer, such as the gate and up halves of a fused projection) is copied once, and each saved tensor
comes back with its own sizes, strides and offset into it: backward computes on the same layouts,
so its results are bit-identical to running without offloading.

With activation checkpointing on the same modules (either order of application): checkpointing
keeps only each block's inputs and recomputes the rest in backward; offloading then moves those
inputs to the host. For that, the offload hooks must be the OUTER ones: torch's non-reentrant
checkpoint saves a block's inputs before it installs its own saved-tensor hooks, so they pass
through ours, and everything saved inside the block is taken by checkpoint's hooks (never stored).
Offload inside checkpoint would do the opposite: its hooks would take every tensor first and
checkpointing would save nothing. So the offload's forward pre-hook is prepended (runs before
checkpoint's) and its forward hook appended (runs after checkpoint's). During backward the
recomputation runs the module's hooks again; there the offload hooks stay off (the recomputed
tensors live only until their gradient is taken).

It composes with FSDP2 (its all-gathered weights are Parameters, so not copied), EP and Ulysses
(plain per-rank tensors) and TP. Under TP, what autograd saves inside a TP-sharded layer is a
DTensor (the layer's input, replicated or sequence-sharded); those stay on the device (counted in
`kept_bytes`), everything saved as a plain tensor (norms, attention, activations between the
sharded layers) is offloaded.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed._functional_collectives import AsyncCollectiveTensor
from torch.distributed.tensor import DTensor

from runtime.parallel.globs import match_modules

__all__ = ["OffloadStats", "apply_activation_offload", "offload_hooks"]


@dataclass
class OffloadStats:
    """Bytes of saved tensors copied to the host, kept on the device (small ones), and the count
    of parameter tensors left alone, since the last `reset()`."""
    moved_bytes: int = 0
    kept_bytes: int = 0
    params_skipped: int = 0

    def reset(self) -> None:
        self.moved_bytes = self.kept_bytes = self.params_skipped = 0


def _is_param(t: torch.Tensor) -> bool:
    return isinstance(t, nn.Parameter) or isinstance(getattr(t, "_base", None), nn.Parameter)


def _param_storages(module: nn.Module) -> set:
    """Storages of the module's parameters as they are now (local shards of DTensors, FSDP2's
    gathered weights during its forward): a tensor in one of them is a weight, not an activation
    (e.g. an expert weight EP reads through `to_local()`)."""
    ptrs = set()
    for p in module.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        if local.device.type != "meta":
            ptrs.add(local.untyped_storage().data_ptr())
    return ptrs


def offload_hooks(min_bytes: int = 1 << 16, pin_memory: bool | None = None, stats: OffloadStats | None = None,
                  module: nn.Module | None = None):
    """A fresh `saved_tensors_hooks` context that copies saved tensors to the host (one region:
    its cache of already-copied tensors lives as long as the context object). With `module`,
    tensors that live in its parameters' storage stay too."""
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    copied: dict = {}  # storage address -> (weakref to its base tensor, host copy, whole storage?)

    def pack(t: torch.Tensor):
        if _is_param(t) or (module is not None and type(t) is torch.Tensor
                            and t.untyped_storage().data_ptr() in _param_storages(module)):
            if stats is not None:
                stats.params_skipped += 1
            return t
        if isinstance(t, AsyncCollectiveTensor):  # a collective's result (TP, Ulysses): its plain tensor
            t = t.wait()
        if type(t) is not torch.Tensor:  # DTensor (its placements would have to travel too), other subclasses
            if stats is not None:
                local = t.to_local() if isinstance(t, DTensor) else t
                stats.kept_bytes += local.numel() * local.element_size()
            return t
        size = t.numel() * t.element_size()
        if size < min_bytes:
            if stats is not None:
                stats.kept_bytes += size
            return t
        storage = t.untyped_storage()
        base = t._base if t._base is not None else t
        view = (tuple(t.size()), tuple(t.stride()), t.storage_offset())
        # views of one buffer share one copy of it; a small view of a big buffer is copied alone
        whole = storage.nbytes() <= 2 * size and storage.nbytes() % t.element_size() == 0
        key = (storage.data_ptr(), t.dtype, t._version) + (() if whole else view)
        hit = copied.get(key)
        if hit is None or hit[0]() is not base:  # not yet copied in this region (or a reused address)
            flat = t.new_empty(0).set_(storage, 0, (storage.nbytes() // t.element_size(),), (1,)) if whole else t
            host = torch.empty_like(flat, device="cpu", pin_memory=pin and t.is_cuda)
            host.copy_(flat, non_blocking=pin and t.is_cuda)
            hit = copied[key] = (weakref.ref(base), host)
            if stats is not None:
                stats.moved_bytes += host.numel() * host.element_size()
        return (t.device, hit[1], view if whole else None)

    def unpack(packed):
        if isinstance(packed, tuple):
            device, host, view = packed
            back = host.to(device, non_blocking=host.is_pinned())
            return back if view is None else back.as_strided(*view)  # the saved layout, exactly
        return packed

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def apply_activation_offload(model: nn.Module, patterns, *, min_bytes: int = 1 << 16,
                             pin_memory: bool | None = None, stats: OffloadStats | None = None) -> list[str]:
    """Offload the saved activations of every module the globs match (outermost matches only).
    Returns the names. Apply at any point before the first forward; see the module docstring
    for the order relative to activation checkpointing."""
    names: list[str] = []
    for pattern in patterns:
        found = match_modules(model, pattern)
        if not found:
            raise ValueError(f"offload glob {pattern!r} matches no module of {type(model).__name__}")
        names += [n for n in found if n not in names]
    outer = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    for name in outer:
        module = model.get_submodule(name)
        active: list = []  # contexts entered by this module's pre-hook (None when skipped)

        def pre(mod, args, active=active):
            ctx = None
            if torch.is_grad_enabled() and not _in_backward():
                ctx = offload_hooks(min_bytes, pin_memory, stats, mod)
                ctx.__enter__()
            active.append(ctx)

        def post(mod, args, output, active=active):
            ctx = active.pop() if active else None
            if ctx is not None:
                ctx.__exit__(None, None, None)

        module.register_forward_pre_hook(pre, prepend=True)
        module.register_forward_hook(post, always_call=True)
    return outer
