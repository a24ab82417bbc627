"""The short summary `planc check` prints for a plan that composes."""
from __future__ import annotations

from .diagnostics import elide, printable, shorten


def shown(text) -> str:
    """Plan text in the summary: long strings elided, invisible characters escaped."""
    return printable(elide(str(text)))


def _fmt_count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _units(names: list[str]) -> str:
    if not names:
        return "none"
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} .. {names[-1]} ({len(names)})"


def batch_line(plan, dp: int) -> str | None:
    """What one optimizer step holds. Fixed rows (pack none/greedy): global_batch rows of max_len
    tokens. Dynamic batching: global_batch micro-batches, each one row of up to `tokens` tokens
    (documents of at most max_len packed into it), so a step holds up to global_batch * tokens."""
    gb, mb = plan["train.global_batch"], plan["train.micro_batch"]
    if not (gb and mb and gb % (mb * dp) == 0):
        return None
    accum = gb // (mb * dp)
    max_len = plan["data.max_len"]
    if plan["data.pack"] != "dynamic":
        each = " (one document each, padded)" if plan["data.pack"] == "none" else ""
        return (f"dp {dp} x micro_batch {mb} x grad_accum {accum} = global_batch {gb} rows of {max_len} tokens"
                f"{each} ({gb * max_len:,} tokens per step)")
    tokens, ramp = plan["data.tokens"], plan["data.warmup_steps"]
    line = (f"dp {dp} x grad_accum {accum} = global_batch {gb} micro-batches, each one row of up to {tokens:,} "
            f"tokens (documents of <= {max_len} tokens packed to the budget): up to {gb * tokens:,} tokens per step")
    if ramp:
        line += f"; the budget grows from {max_len} to {tokens:,} over the first {ramp} steps"
    return line


def summary_lines(checked, rep=None) -> list[str]:
    """`rep`: the planc.estimate Report (exact per-rank shards, memory and traffic estimates).
    Any long run of text (a plan string, a source name in the data estimate) is elided."""
    return [printable(shorten(line)) for line in _lines(checked, rep)]


def _lines(checked, rep=None) -> list[str]:
    plan, ctx = checked.plan, checked.ctx
    lines = [f'plan "{plan.name}" ({shown(plan.file)}) composes']
    if ctx.tree is not None:
        lines.append(f"  model       {ctx.tree.model_type}, {_fmt_count(ctx.tree.n_params)} parameters "
                     f"({shown(plan['model.config'])}, {plan['model.dtype']})")
    if ctx.degrees is not None:
        d = ctx.degrees
        dims = [f"{k} {v}" for k, v in d.items() if v != 1] or ["1 process"]
        lines.append(f"  mesh        world {ctx.world} = {' x '.join(dims)}  [{plan['mesh.device']}]")
        line = batch_line(plan, ctx.dp)
        if line:
            lines.append(f"  batch       {line}")
    if ctx.tree is not None:
        for kind, label in (("fsdp", "fsdp"), ("checkpoint", "checkpoint"), ("tp", "tp"), ("sp", "sp"),
                            ("ep", "ep"), ("compile", "compile"), ("offload", "offload"), ("lora", "lora")):
            mods = [m for _, names in ctx.rule_modules(kind) for m in names]
            if mods:
                suffix = " + root" if kind == "fsdp" else ""
                lines.append(f"  {label:<11} {_units(mods)}{suffix}")
        if rep is not None:
            lines += _estimate_lines(rep)
        for note in ctx.notes:
            if note.startswith("per-rank estimate unavailable"):
                lines.append(f"  per rank    {note[len('per-rank '):]}")
    if plan.sources:
        srcs = ", ".join(f"{shown(s.name)} ({s['kind']}, weight {s['weight']:g})" for s in plan.sources)
        lines.append(f"  data        {srcs}; pack = {plan['data.pack']}")
        if ctx.data_estimate:
            lines += ["              " + line for line in ctx.data_estimate.splitlines()]
    lines += [f"  steps       {note}" for note in ctx.notes if note.startswith("epochs = ")]  # checks/loop.py
    if plan.val_sources:
        every, batches = plan["validation.every"], plan["validation.batches"]
        lines.append(f"  validation  {', '.join(shown(s.name) for s in plan.val_sources)}: "
                     + (f"every {every} steps and " if every else "") + "at the end, "
                     + (f"{batches} batches" if batches else "one whole pass"))
    if "checkpoint" in plan.blocks:
        every = plan["checkpoint.every"] or plan["train.steps"]
        lines.append(f"  checkpoint  {shown(plan['checkpoint.dir'])} {f'every {every} steps' if every else 'at the end'}, keep {plan['checkpoint.keep']}, "
                     f"export {plan['checkpoint.export']}")
    for note in ctx.notes:  # planc/checks/diffusion.py: the objective, and a trusted model's own code
        for label in ("objective", "remote code"):
            if note.startswith(f"{label}: "):
                lines.append(f"  {label:<11} {note[len(label) + 2:]}")
    for note in ctx.notes:  # what a static check cannot know (a dry run, or the run, tells)
        if note.startswith("not checked: "):
            lines.append(f"  not checked {note[len('not checked: '):]}")
    return lines


def _estimate_lines(rep) -> list[str]:
    """Exact shard bytes per rank class, the estimated total, traffic per axis, the dry run."""
    from .estimate import fmt_bytes, fmt_ranks

    lines = []
    rows = rep.memory.rows
    for i, r in enumerate(rows[:3]):
        p = r.parts
        label = "per rank" if i == 0 else ""
        lines.append(f"  {label:<11} ranks {fmt_ranks(r.ranks, 2)}: params {fmt_bytes(p['params'])} + grads "
                     f"{fmt_bytes(p['grads'])} + AdamW {fmt_bytes(p['optim'])} (exact); total ~{fmt_bytes(r.total)} "
                     f"with activations {fmt_bytes(p['activations'])}, logits {fmt_bytes(p['logits'])}, FSDP "
                     f"buffers {fmt_bytes(p['gathered'] + p['reduce'])}")
    if len(rows) > 3:
        lines.append(f"  {'':<11} ... {len(rows) - 3} more rank classes (`planc explain` lists them)")
    if rep.device_memory:
        worst = rep.memory.worst
        lines.append(f"  {'':<11} worst rank {fmt_bytes(worst.total)} of {fmt_bytes(rep.device_memory)} device memory")
    axes = rep.per_axis
    if axes:
        lines.append("  traffic     per step and rank: " + ", ".join(
            f"{a} {fmt_bytes(s['bytes'])}" for a, s in sorted(axes.items(), key=lambda kv: -kv[1]["bytes"])))
    if rep.dry is not None:
        d = rep.dry
        lines.append(f"  dry run     {d.world} ranks on a fake process group in {d.seconds:.1f} s: every rank's "
                     f"shards equal the estimate ({len(d.classes())} distinct)")
        for n in d.notes:
            lines.append(f"  {'':<11} note: {n}")
    return lines
