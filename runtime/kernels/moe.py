"""MoE experts as grouped GEMMs: tokens sorted by expert, one product over all experts per projection.

`grouped_mm(x_sorted, weights, group_sizes)` is the plain building block (expert parallelism calls
it on the tokens it received); `expert_mlp_sorted` is a whole expert MLP on sorted tokens; and
`experts_forward` is an experts implementation for transformers 5 (`config._experts_implementation`,
registered in `ALL_EXPERTS_FUNCTIONS` under `EXPERTS_IMPLEMENTATIONS`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .backend import check_impl, triton_module
from .swiglu import ACTIVATIONS, act_and_mul

# kernel backend -> name registered in transformers' ExpertsInterface
EXPERTS_IMPLEMENTATIONS = {"torch": "planc_grouped_torch", "triton": "planc_grouped_triton"}


def _check_groups(x_sorted, weights, group_sizes):
    if x_sorted.dim() != 2 or weights.dim() != 3 or group_sizes.dim() != 1:
        raise ValueError(f"grouped_mm wants x (S, K), weights (E, K, N), group_sizes (E,); got "
                         f"{tuple(x_sorted.shape)}, {tuple(weights.shape)}, {tuple(group_sizes.shape)}")
    if weights.shape[1] != x_sorted.shape[1] or group_sizes.shape[0] != weights.shape[0]:
        raise ValueError(f"grouped_mm shapes disagree: x {tuple(x_sorted.shape)}, weights "
                         f"{tuple(weights.shape)}, {group_sizes.shape[0]} groups")
    if group_sizes.is_floating_point():
        raise ValueError("group_sizes must be an integer tensor")


def grouped_mm_reference(x_sorted, weights, group_sizes):
    """One torch.mm per group; rows past the last group are zero. Differentiable by autograd."""
    pieces, start = [], 0
    for e, size in enumerate(group_sizes.tolist()):
        # F.linear on the (out, in) view: for HF's (E, out, in) experts this is F.linear on each
        # expert's own weight, forward and backward, as a per-expert loop computes it.
        pieces.append(F.linear(x_sorted[start:start + size], weights[e].mT))
        start += size
    if start > x_sorted.shape[0]:
        raise ValueError(f"group sizes add up to {start} rows but x has {x_sorted.shape[0]}")
    pieces.append(x_sorted.new_zeros(x_sorted.shape[0] - start, weights.shape[2]))
    return torch.cat(pieces)


class _TritonGroupedMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, group_sizes):
        k = triton_module("grouped_mm")
        ctx.save_for_backward(x, w, group_sizes)
        return k.grouped_mm(x, w, group_sizes)

    @staticmethod
    def backward(ctx, dy):
        x, w, group_sizes = ctx.saved_tensors
        k = triton_module("grouped_mm")
        dx = k.grouped_mm(dy, w.transpose(1, 2), group_sizes) if ctx.needs_input_grad[0] else None
        dw = k.grouped_wgrad(x, dy, group_sizes, w) if ctx.needs_input_grad[1] else None
        return dx, dw, None


def grouped_mm(x_sorted, weights, group_sizes, impl: str = "torch"):
    """y[rows of group e] = x_sorted[rows of group e] @ weights[e].

    x_sorted (S, K) with rows sorted by group, weights (E, K, N) (pass `param.transpose(1, 2)` for
    HF's (E, out, in) layout; any strides), group_sizes (E,) integer counts. Rows after the last
    group (e.g. expert-parallel sentinels) come out as zeros. impl "torch", "triton" or "auto".
    """
    _check_groups(x_sorted, weights, group_sizes)
    if x_sorted.dtype != weights.dtype:
        x_sorted = x_sorted.to(weights.dtype)
    impl = check_impl(impl, x_sorted, weights)
    if impl == "triton":
        if int(group_sizes.sum()) > x_sorted.shape[0]:
            raise ValueError(f"group sizes add up to {int(group_sizes.sum())} rows but x has {x_sorted.shape[0]}")
        return _TritonGroupedMM.apply(x_sorted, weights, group_sizes)
    return grouped_mm_reference(x_sorted, weights, group_sizes)


def _as_kn(experts, w):
    """An experts weight as (E, in, out) for grouped_mm, whatever layout the module stores."""
    return w if getattr(experts, "is_transposed", False) else w.transpose(1, 2)


def _gate(experts, h, impl):
    """The gated activation on the up projection's output, by our kernel where it is the standard one."""
    from transformers.integrations.moe import _default_apply_gate

    activation = ACTIVATIONS.get(getattr(experts.config, "hidden_act", None))
    standard = (getattr(type(experts), "_apply_gate", _default_apply_gate) is _default_apply_gate
                and getattr(experts, "is_concatenated", True))
    if activation is None or not standard:
        return experts._apply_gate(h)
    inter = h.shape[-1] // 2
    return act_and_mul(h[..., :inter], h[..., inter:], activation, impl)


def expert_mlp_sorted(experts, x_sorted, group_sizes, impl: str = "torch", weights=None, fused_gate: bool = True):
    """The experts' MLP on tokens already sorted by (local) expert: up (and gate), act, down.

    `experts` is a transformers 5 experts module (gate_up_proj / up_proj, down_proj, optional
    biases, activation). `weights` = (up, down) replaces its parameters, in the module's own
    layout: expert parallelism passes the local shards of its DTensors. Rows after the last group
    (sentinels) give zeros. Routing weights are not applied. fused_gate=False keeps the module's
    own gate function (`_apply_gate`), as a model without a `kernels { moe }` choice computes it.
    """
    has_gate = getattr(experts, "has_gate", True)
    up_name = "gate_up_proj" if has_gate else "up_proj"
    w_up, w_down = weights if weights is not None else (getattr(experts, up_name), experts.down_proj)
    n_experts = w_down.shape[0]
    sentinel = None
    expert_ids = None
    if getattr(experts, "has_bias", False):
        expert_ids = torch.repeat_interleave(torch.arange(n_experts, device=x_sorted.device),
                                             group_sizes.to(x_sorted.device))
        n_tail = x_sorted.shape[0] - expert_ids.shape[0]
        expert_ids = torch.cat([expert_ids, expert_ids.new_zeros(n_tail)])
        sentinel = torch.arange(x_sorted.shape[0], device=x_sorted.device) >= x_sorted.shape[0] - n_tail
    h = grouped_mm(x_sorted, _as_kn(experts, w_up), group_sizes, impl)
    if expert_ids is not None:
        h = h + getattr(experts, f"{up_name}_bias")[expert_ids]
    if not has_gate:
        h = experts.act_fn(h)
    else:
        h = _gate(experts, h, impl) if fused_gate else experts._apply_gate(h)
    out = grouped_mm(h, _as_kn(experts, w_down), group_sizes, impl)
    if expert_ids is not None:
        out = (out + experts.down_proj_bias[expert_ids]).masked_fill(sentinel[:, None], 0.0)
    if getattr(experts, "has_post_expert_norm", False):
        out = experts.post_expert_norm(out)
    return out


def experts_forward(self, hidden_states, top_k_index, top_k_weights, impl: str = "torch"):
    """An experts forward for `ALL_EXPERTS_FUNCTIONS`: sort (token, slot) pairs by expert, run the
    grouped MLP, weight by the router, and sum each token's top-k slots (in that order, no atomics).
    Expert ids >= num_experts (EP sentinels) contribute nothing."""
    n_tokens, top_k = top_k_index.shape
    n_experts = self.down_proj.shape[0]
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    group_sizes = torch.bincount(flat, minlength=n_experts)[:n_experts]
    out = expert_mlp_sorted(self, hidden_states[order // top_k], group_sizes, impl)
    weights = top_k_weights.reshape(-1)[order]
    if bool((flat >= n_experts).any()):
        weights = weights.masked_fill(flat[order] >= n_experts, 0.0)
    weighted = out * weights.unsqueeze(-1)
    unsorted = weighted[torch.argsort(order)]
    return unsorted.view(n_tokens, top_k, -1).sum(1).to(hidden_states.dtype)


@functools.cache
def register_experts_implementations() -> dict:
    """Register the grouped experts forwards with transformers (once); returns backend -> name."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    for backend, name in EXPERTS_IMPLEMENTATIONS.items():
        ALL_EXPERTS_FUNCTIONS.register(name, functools.partial(experts_forward, impl=backend))
    return dict(EXPERTS_IMPLEMENTATIONS)
