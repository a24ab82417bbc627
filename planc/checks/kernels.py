"""Kernel rules: what runs where. Triton kernels need CUDA; on a CPU plan the torch path runs.
flash_attention_2 needs CUDA and the flash-attn package, which only the training machines can show."""
from __future__ import annotations

from ..schema import KERNELS

RULES = {
    "kernel-device": "Triton kernels need CUDA: on a CPU plan the torch fallback runs instead",
    "kernel-model": "a kernel is available for the model's family",
    "kernel-tp": "the fused linear + cross-entropy needs a whole lm_head (not a vocab-sharded `tp loss` one)",
    "attention-device": "attention = flash_attention_2 needs CUDA (an error on a CPU plan) and the flash-attn "
                        "package where the script runs (a warning: only a dry run there can tell)",
}


def check(ctx) -> None:
    p = ctx.plan
    if p["model.attention"] == "flash_attention_2":
        span = p.span("model.attention")
        if any(d.rule == "sp-attention" for d in ctx.diags):
            pass  # Ulysses refuses it already: one error for one setting
        elif p["mesh.device"] == "cpu":
            ctx.error("attention-device", "flash_attention_2 runs on CUDA only, and this plan runs on the CPU",
                      span, "use attention = sdpa")
        else:
            ctx.warn("attention-device", "not checked: flash_attention_2 needs the flash-attn package on the "
                     "machines that run the script; transformers refuses to build the model without it",
                     span, "run `planc check --dry-run` on such a machine (it builds the model), or use sdpa")
    if "kernels" not in p.blocks:
        return
    for op in KERNELS.keys:
        choice = p[f"kernels.{op}"]
        if choice == "off":
            continue
        span = p.span(f"kernels.{op}")
        if choice == "triton" and p["mesh.device"] == "cpu":
            ctx.warn("kernel-device", f"{op} = triton needs CUDA; this plan runs on the CPU, so the torch "
                     f"fallback of {op} runs instead", span, f"write `{op} = auto` to say so, or run on cuda")
        if op == "fused_ce":
            loss_rule = next((r for r in p.rules if r.kind == "tp" and r.style == "loss"), None)
            if loss_rule is not None:
                ctx.error("kernel-tp", "fused_ce computes the loss from a whole lm_head, but a `tp loss` rule "
                          "shards it over the vocabulary", span, "drop one: `fused_ce = off`, or the `tp loss` rule")
        if ctx.tree is not None:
            ok = _available(op, ctx.tree.model_type)
            if ok is False:
                ctx.error("kernel-model", f"no {op} kernel for {ctx.tree.model_type} models", span,
                          f"set `{op} = off`")


def _available(op: str, model_type: str):
    try:
        from runtime.kernels import available
    except ImportError:
        return None
    return available(op, model_type)
