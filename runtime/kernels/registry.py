"""Swapping kernels into HF models: one registry keyed by operation and model family.

Each family names the HF classes an operation replaces. The swap keeps every module, parameter
and name (checkpoints, TP plans and FSDP see the same tree):
- rmsnorm, swiglu: the module's class becomes a subclass whose forward calls the kernel;
- rotary: the family's module-level `apply_rotary_pos_emb` becomes a dispatcher that runs the
  kernel only inside attention modules that opted in (forward hooks), HF's function elsewhere;
- moe: transformers' own experts interface (`config._experts_implementation`);
- fused_ce: nothing in the model changes; the loss is computed by `fused_lm_loss_sum`.
Call `apply_kernels` on the built model before tensor parallelism, FSDP and torch.compile.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass

import torch

from ..vocab import KERNEL_BACKENDS, KERNEL_OPS
from .backend import resolve
from .moe import EXPERTS_IMPLEMENTATIONS, register_experts_implementations
from .rmsnorm import norm_module_forward
from .rotary import apply_rotary
from .swiglu import ACTIVATIONS, mlp_module_forward


@dataclass(frozen=True)
class Family:
    """Where a model family keeps the pieces the kernels replace (class names in `modeling`)."""
    modeling: str
    norms: tuple[str, ...]
    mlps: tuple[str, ...]
    attentions: tuple[str, ...]
    experts: tuple[str, ...] = ()
    norm_offset: float = 0.0
    norm_casting: str = "llama"
    norm_eps: str = "variance_epsilon"
    plain_logits: bool = True  # the causal LM returns lm_head's output unchanged (fused_ce)


def _hf(name: str, prefix: str, moe: bool = False, **kw) -> Family:
    return Family(f"transformers.models.{name}.modeling_{name}", (f"{prefix}RMSNorm",), (f"{prefix}MLP",),
                  (f"{prefix}Attention",), (f"{prefix}Experts",) if moe else (), **kw)


FAMILIES = {
    "llama": _hf("llama", "Llama"),
    "mistral": _hf("mistral", "Mistral"),
    "qwen2": _hf("qwen2", "Qwen2"),
    "qwen3": _hf("qwen3", "Qwen3"),
    "qwen2_moe": _hf("qwen2_moe", "Qwen2Moe", moe=True),
    "qwen3_moe": _hf("qwen3_moe", "Qwen3Moe", moe=True),
    # Gemma stores w - 1 and keeps the whole norm in fp32 before casting back.
    "gemma": _hf("gemma", "Gemma", norm_offset=1.0, norm_casting="gemma", norm_eps="eps"),
}


def _check_op(op: str) -> None:
    if op not in KERNEL_OPS:
        raise ValueError(f"unknown kernel op {op!r}; known: {', '.join(KERNEL_OPS)}")


def available(op: str, model_type: str) -> bool:
    """Whether `op` can be swapped into models of this HF `model_type` (config.model_type)."""
    _check_op(op)
    fam = FAMILIES.get(model_type)
    if fam is None:
        return False
    return bool({"rmsnorm": fam.norms, "swiglu": fam.mlps, "rotary": fam.attentions,
                 "fused_ce": fam.plain_logits, "moe": fam.experts}[op])


def _classes(fam: Family, names):
    modeling = importlib.import_module(fam.modeling)
    return tuple(getattr(modeling, n) for n in names)


def _modules(model, fam: Family, names, op: str, allow_none: bool = False):
    classes = _classes(fam, names)
    found = [m for m in model.modules() if isinstance(m, classes)]
    if not found and not allow_none:
        raise ValueError(f"kernel {op}: no {'/'.join(names)} module in {type(model).__name__}")
    for m in found:
        if type(m).__name__.startswith("FSDP") or hasattr(m, "_fsdp_param_group"):
            raise RuntimeError(f"kernel {op}: apply kernels before FSDP (fully_shard), not after")
    return found


_SWAPPED: dict = {}


def _swap_forward(module, forward, op: str) -> None:
    """Give `module` a subclass of its class whose forward is `forward` (same name, params, attrs)."""
    cls = type(module)
    if getattr(cls, "_planc_op", None) == op:
        return  # swapped before: the per-module settings are updated by the caller
    new = _SWAPPED.get((cls, op))
    if new is None:
        def extra_repr(self, _base=cls.extra_repr):
            base = _base(self)
            note = f"kernel={op}:{getattr(self, '_planc_' + op)[0]}"
            return f"{base}, {note}" if base else note

        new = type(cls.__name__, (cls,), {"forward": forward, "extra_repr": extra_repr, "_planc_op": op,
                                         "__module__": cls.__module__, "__doc__": cls.__doc__})
        _SWAPPED[(cls, op)] = new
    module.__class__ = new


def _apply_rmsnorm(model, fam, impl):
    for m in _modules(model, fam, fam.norms, "rmsnorm"):
        m._planc_rmsnorm = (impl, fam.norm_offset, fam.norm_casting, fam.norm_eps)
        _swap_forward(m, norm_module_forward, "rmsnorm")


def _apply_swiglu(model, fam, impl, with_moe=False):
    # An all-MoE model may have no dense MLP: fine when the moe kernel runs the experts' act-and-mul.
    for m in _modules(model, fam, fam.mlps, "swiglu", allow_none=with_moe):
        act = getattr(getattr(m, "config", model.config), "hidden_act", None)
        if act not in ACTIVATIONS:
            raise ValueError(f"kernel swiglu: activation {act!r} of {type(m).__name__} has no fused kernel; "
                             f"supported: {', '.join(ACTIVATIONS)}")
        m._planc_swiglu = (impl, ACTIVATIONS[act])
        _swap_forward(m, mlp_module_forward, "swiglu")


# Rotary: which implementation the attention module now running asked for (None: HF's own).
_ROTARY = threading.local()


def _rotary_active():
    stack = getattr(_ROTARY, "stack", None)
    return stack[-1] if stack else None


def _push_rotary(module, args):
    if not hasattr(_ROTARY, "stack"):
        _ROTARY.stack = []
    _ROTARY.stack.append(module._planc_rotary)


def _pop_rotary(module, args, output):
    _ROTARY.stack.pop()


def _install_rotary_dispatch(modeling) -> None:
    current = modeling.apply_rotary_pos_emb
    if getattr(current, "_planc_original", None) is not None:
        return
    original = current

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        impl = _rotary_active()
        if impl is None:
            return original(q, k, cos, sin, unsqueeze_dim)
        return apply_rotary(q, k, cos, sin, unsqueeze_dim, impl)

    apply_rotary_pos_emb._planc_original = original
    apply_rotary_pos_emb.__doc__ = original.__doc__
    modeling.apply_rotary_pos_emb = apply_rotary_pos_emb


def _apply_rotary(model, fam, impl):
    modeling = importlib.import_module(fam.modeling)
    _install_rotary_dispatch(modeling)
    for m in _modules(model, fam, fam.attentions, "rotary"):
        m._planc_rotary = impl
        if not hasattr(m, "_planc_rotary_hooks"):
            m._planc_rotary_hooks = (m.register_forward_pre_hook(_push_rotary),
                                     m.register_forward_hook(_pop_rotary, always_call=True))


def _apply_fused_ce(model, fam, impl):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"kernel fused_ce: {type(model).__name__} has no output head (use a *ForCausalLM model)")
    model._planc_fused_ce = impl  # read by fused_lm_loss_sum


def _apply_moe(model, fam, impl):
    register_experts_implementations()
    name = EXPERTS_IMPLEMENTATIONS[impl]
    experts = _modules(model, fam, fam.experts, "moe")
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(name)
    for m in experts:
        m.config._experts_implementation = name
        m._planc_moe = impl  # for expert parallelism's local compute (expert_mlp_sorted)


_APPLY = {"rmsnorm": _apply_rmsnorm, "rotary": _apply_rotary,
          "fused_ce": _apply_fused_ce, "moe": _apply_moe}


def apply_kernels(model, choices: dict, device) -> dict:
    """Swap the chosen kernels into `model`; returns {op: "triton" | "torch"} as actually used.

    choices maps ops of KERNEL_OPS to "triton", "torch" or "auto" (Triton on CUDA, torch
    elsewhere). "triton" where it cannot run falls back to torch with a warning, and the result
    says so. An op the model's family does not support is an error.
    """
    for op, backend in choices.items():
        _check_op(op)
        if backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel {op}: unknown backend {backend!r}; "
                             f"choose one of {', '.join(KERNEL_BACKENDS)}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    fam = FAMILIES.get(model_type)
    if choices and fam is None:
        raise ValueError(f"no kernels registered for model type {model_type!r}; "
                         f"known: {', '.join(sorted(FAMILIES))}")
    chosen = {}
    for op, backend in choices.items():
        if not available(op, model_type):
            raise ValueError(f"kernel {op} is not available for model type {model_type!r}")
        impl = resolve(op, backend, torch.device(device))
        if op == "swiglu":
            _apply_swiglu(model, fam, impl, with_moe="moe" in choices)
        else:
            _APPLY[op](model, fam, impl)
        chosen[op] = impl
    return chosen
