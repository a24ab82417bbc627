"""Training rules: batch arithmetic, warm-up, and dtypes that make sense on the plan's device."""
from __future__ import annotations

RULES = {
    "batch-divisible": "global_batch % (micro_batch * dp) == 0, so every rank runs whole micro-batches",
    "warmup": "warm-up is shorter than the run",
    "cpu-dtype": "a CPU plan trains in fp32 (bf16 is ~18x slower on this kind of CPU)",
    "mixed-precision": "mixed_precision needs FSDP units to apply it",
    "moe-aux-loss": "moe_aux_loss weighs an MoE router's load-balancing loss: a warning when the model has none",
    "train-parts": "`freeze` leaves parameters to train; no parameter gets two `lr` rates (an `lr` on frozen "
                   "parameters is a warning)",
}


def _parts(ctx) -> None:
    """freeze / lr: the parameters under the modules each rule's globs match (runtime.parts' test)."""
    from ..model_tree import match

    rules = [r for r in ctx.plan.rules if r.kind in ("freeze", "lr")]
    if not rules or ctx.tree is None:
        return
    params = list(ctx.tree.param_numel)

    def owned(rule) -> set[str]:
        return {q for g in rule.globs for m in match(ctx.tree, g.pattern) for q in ctx.tree.params_under(m)}

    frozen: set[str] = set()
    for r in (r for r in rules if r.kind == "freeze"):
        frozen |= owned(r)
    if params and frozen >= set(params):
        last = [r for r in rules if r.kind == "freeze"][-1]
        ctx.error("train-parts", f"`freeze` covers all {len(params)} parameters of the model: nothing is left to "
                  "train", last.span, "freeze a part (e.g. the vision tower), or train with LoRA")
        return
    rated: dict[str, object] = {}
    for r in (r for r in rules if r.kind == "lr"):
        mine = owned(r)
        clash = next((rated[n] for n in sorted(mine) if n in rated), None)
        if clash is not None:
            ctx.error("train-parts", f"these parameters already have a rate from the `lr` rule at line "
                      f"{clash.span.line}", r.span, "give each part one `lr` rule (globs that do not overlap)")
            return
        rated.update((n, r) for n in mine)
        if mine and mine <= frozen:
            ctx.warn("train-parts", "every parameter this `lr` rule matches is frozen: the rate has no effect",
                     r.span, "drop the `lr` rule or the `freeze`")


def check(ctx) -> None:
    p = ctx.plan
    _parts(ctx)
    aux = p.settings.get("train.moe_aux_loss")
    if aux is not None and aux.written and ctx.tree is not None:
        from ..model_tree import num_experts

        if not (num_experts(ctx.tree.text_config) and hasattr(ctx.tree.text_config, "router_aux_loss_coef")):  # as lower.py
            ctx.warn("moe-aux-loss", f"moe_aux_loss has no effect: {ctx.tree.model_type} has no MoE router with a "
                     "load-balancing loss", p.span("train.moe_aux_loss"), "drop it")
    if p["train.global_batch"] is None or p["train.micro_batch"] is None:
        return
    gb, mb = p["train.global_batch"], p["train.micro_batch"]
    if ctx.degrees is not None:
        dp = ctx.dp
        if gb % (mb * dp):
            near = sorted({max(mb * dp, gb // (mb * dp) * mb * dp), -(-gb // (mb * dp)) * mb * dp})
            ctx.error("batch-divisible", f"global_batch ({gb}) is not a multiple of micro_batch ({mb}) * dp ({dp}) = {mb * dp}",
                      p.span("train.global_batch"),
                      "use global_batch = " + " or ".join(map(str, near)) +
                      (f", or micro_batch = {gb // dp}" if gb % dp == 0 and gb // dp else ""))
        else:
            ctx.notes.append(f"dp {dp} x micro_batch {mb} x grad_accum {gb // (mb * dp)} = global_batch {gb}")
    steps, warmup = p["train.steps"], p.settings.get("train.warmup")
    if steps and warmup is not None and warmup.value and warmup.value >= steps:
        ctx.warn("warmup", f"warm-up ({warmup.value} steps) is not shorter than the run ({steps} steps)",
                 p.span("train.warmup"), f"use warmup < {steps}")
    if p["mesh.device"] == "cpu":
        for key in ("model.dtype", "train.param_dtype"):
            if p[key] in ("bf16", "fp16"):
                ctx.warn("cpu-dtype", f"{key.split('.')[1]} = {p[key]} on a CPU plan: CPUs without bf16 "
                         "instructions run it ~18x slower than fp32", p.span(key), "use fp32 on CPU")
    mixed = p["train.param_dtype"] != "fp32" or p["train.reduce_dtype"] != "fp32"
    if mixed and not any(r.kind == "fsdp" for r in p.rules):
        ctx.warn("mixed-precision", "mixed_precision is applied by FSDP2, and the plan has no fsdp rule",
                 p.span("train.param_dtype"), 'add `fsdp "model.layers.*"` to parallelize')
