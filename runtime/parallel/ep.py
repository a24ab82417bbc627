"""Expert parallelism for transformers-5 MoE blocks.

In transformers 5 an MoE block's experts are one module with fused 3-D parameters,
``gate_up_proj (E, 2I, H)`` and ``down_proj (E, H, I)``, called as
``experts(hidden (T, H), top_k_index (T, K), top_k_weights (T, K))`` after the router; the class
dispatches on ``config._experts_implementation`` through ``ALL_EXPERTS_FUNCTIONS``. `apply_ep`
shards both parameters on dim 0 over the `ep` mesh (Shard(0) DTensors, so DCP sees whole
tensors) and switches the model to the ``"ep"`` implementation registered here, which:

1. sorts this rank's (token, expert) pairs by expert, so each destination rank gets one block;
2. swaps per-rank counts, then the tokens, with an all-to-all of uneven splits (autograd-aware);
3. runs its local experts on what it received, sorted by local expert, as grouped GEMMs
   (`runtime.kernels.moe.expert_mlp_sorted`: Triton or torch, as the plan's kernels block says);
4. sends the results back the same way, un-sorts, weights them and sums over the top-k.

The router, its top-k and the load-balancing loss are the model's own code, untouched; a
Qwen2-MoE shared expert is an ordinary MLP beside the experts and stays out of EP.

Experts are then FSDP-sharded over the ranks left over (`shard_experts` on the `ep_fsdp` mesh of
`mesh_ep.ep_meshes`), the rest of the model over dp_shard*sp, so parameters live on different
meshes: clip with `runtime.optim.clip_grad_norm`, which reduces each gradient over its own mesh.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from runtime.kernels.moe import expert_mlp_sorted
from runtime.parallel.fsdp import sum_gradients

__all__ = ["EP_IMPLEMENTATION", "experts_modules", "apply_ep", "ep_experts_forward", "shard_experts"]

EP_IMPLEMENTATION = "ep"


def experts_modules(model: nn.Module) -> list[str]:
    """Names of the fused-experts modules (3-D gate_up_proj and down_proj) in `model`."""
    found = []
    for name, mod in model.named_modules():
        up, down = getattr(mod, "gate_up_proj", None), getattr(mod, "down_proj", None)
        if isinstance(up, torch.Tensor) and isinstance(down, torch.Tensor) and up.dim() == 3 and down.dim() == 3:
            found.append(name)
    return found


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if isinstance(p, DTensor) else p


def ep_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                       top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``"ep"`` experts implementation (see the module docstring for the four steps)."""
    group = getattr(self, "ep_group", None)
    if group is None:
        raise RuntimeError(f"{type(self).__name__} runs the 'ep' experts implementation without an ep "
                           f"group; call apply_ep(model, ep_mesh) first")
    ep = dist.get_world_size(group)
    w_up, w_down = _local(self.gate_up_proj), _local(self.down_proj)
    local_experts = w_up.shape[0]
    num_experts = local_experts * ep
    tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[-1]

    # 1. (token, k) pairs grouped by global expert id == grouped by destination rank.
    flat_ids = top_k_index.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    send = hidden_states[order // top_k]
    counts = torch.bincount(flat_ids, minlength=num_experts)

    # 2. Each rank learns how many rows it gets per (source rank, local expert), then gets them.
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts, group=group)
    send_splits = counts.view(ep, local_experts).sum(1).tolist()
    recv_splits = recv_counts.view(ep, local_experts).sum(1).tolist()
    received = funcol.all_to_all_single(send.contiguous(), recv_splits, send_splits, group)

    # 3. Received rows come per source rank; regroup them per local expert and compute.
    local_ids = torch.arange(local_experts, device=counts.device).repeat(ep).repeat_interleave(recv_counts)
    by_expert = torch.argsort(local_ids, stable=True)
    # One grouped GEMM per projection over all local experts: the plan's `kernels { moe }` choice,
    # else the torch path with the model's own gate function.
    group_sizes = recv_counts.view(ep, local_experts).sum(0)
    impl = getattr(self, "_planc_moe", None)
    computed = expert_mlp_sorted(self, received[by_expert], group_sizes, impl or "torch", weights=(w_up, w_down),
                                 fused_gate=impl is not None)[torch.argsort(by_expert)]

    # 4. Back to the ranks the rows came from, back to (token, k) order, weighted sum over k.
    returned = funcol.all_to_all_single(computed.contiguous(), send_splits, recv_splits, group)
    per_pair = returned[torch.argsort(order)].view(tokens, top_k, hidden)
    out = (per_pair * top_k_weights.unsqueeze(-1).to(per_pair.dtype)).sum(dim=1)
    return out.to(hidden_states.dtype)


ALL_EXPERTS_FUNCTIONS.register(EP_IMPLEMENTATION, ep_experts_forward)


def apply_ep(model: nn.Module, ep_mesh: DeviceMesh, modules: list[str] | None = None) -> nn.Module:
    """Shard the experts of `modules` (default: every fused-experts module) over `ep_mesh`.

    Call before FSDP (`shard_experts` on the ep_fsdp mesh first, then the layers). All ranks must
    hold the same full expert weights (same seed), or the model is still on the meta device.
    """
    ep = ep_mesh.size()
    found = experts_modules(model)
    modules = found if modules is None else list(modules)
    if not found:
        raise ValueError("ep: the model has no fused MoE experts module (3-D gate_up_proj/down_proj)")
    missing = sorted(set(found) - set(modules))
    if missing:  # the experts implementation is one switch for the whole model
        raise ValueError(f"ep must cover every experts module; not covered: {missing[:3]}")
    for name in modules:  # check everything before changing anything
        if name not in found:
            raise ValueError(f"ep: {name!r} is not a fused MoE experts module")
        mod = model.get_submodule(name)
        unusual = getattr(mod, "has_bias", False) or getattr(mod, "is_transposed", False)
        if unusual or not getattr(mod, "has_gate", True):
            raise ValueError(f"ep: {name!r} has biased, transposed or ungated experts, which this EP does not handle")
        num = mod.gate_up_proj.shape[0]
        if num % ep:
            raise ValueError(f"ep={ep} must divide the number of experts ({num}) of {name!r}")
    for name in modules:
        mod = model.get_submodule(name)
        for pname in ("gate_up_proj", "down_proj"):
            p = getattr(mod, pname)
            # src_data_rank=None: every rank cuts its own block from the identical full tensor.
            dt = distribute_tensor(p.data, ep_mesh, [Shard(0)], src_data_rank=None)
            setattr(mod, pname, nn.Parameter(dt, requires_grad=p.requires_grad))
        mod.ep_group = ep_mesh.get_group()
    model.set_experts_implementation(EP_IMPLEMENTATION)
    return model


def shard_experts(model: nn.Module, ep_fsdp_mesh: DeviceMesh, modules: list[str] | None = None, *,
                  param_dtype=None, reduce_dtype=None, offload: bool = False, **fsdp_kwargs) -> None:
    """FSDP-shard each experts module over `ep_fsdp_mesh` (after `apply_ep`, before the layers'
    `fully_shard`, which then leaves these parameters alone). Gradients are summed, like the rest
    of the model (runtime.parallel.fsdp): each expert's gradient already holds every rank's tokens.

    Give the same `param_dtype`/`reduce_dtype`/`offload` as the rest of the model (apply_fsdp):
    experts are their own FSDP unit, so without them they would keep fp32 weights while bf16
    activations reach them."""
    if "mp_policy" in fsdp_kwargs and (param_dtype is not None or reduce_dtype is not None):
        raise ValueError("shard_experts: give either mp_policy or param_dtype/reduce_dtype, not both")
    fsdp_kwargs.setdefault("mp_policy", MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype))
    if offload:
        fsdp_kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for name in experts_modules(model) if modules is None else modules:
        mod = model.get_submodule(name)
        if not isinstance(mod.gate_up_proj, DTensor):
            raise ValueError(f"shard_experts: {name!r} is not expert-parallel yet; call apply_ep first")
        fully_shard(mod, mesh=ep_fsdp_mesh, **fsdp_kwargs)
        sum_gradients(mod)
