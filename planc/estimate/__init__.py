"""Before launch: per-rank memory, per-axis traffic and node placement of a checked plan, and the
rules built on them (`node-span`, `memory-budget`; `dry-run` lives in planc.dryrun).

`report(checked, ...)` is the one entry point `planc check` and `planc explain` use. Formulas and
their sources: docs/estimates.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..diagnostics import Diagnostic
from ..layout import Layout
from .comm import Collective, per_axis, traffic, workload
from .memory import MemoryEstimate, estimate_memory
from .shards import states_per_rank

# More than any one device holds: the largest accelerators carry 288 GB (B300, MI355X), so a rank
# that needs over 1 TiB fits none of them. Without --device-memory a plan above it is an error
# (`memory-ceiling`); a machine that really holds more says so with --device-memory, and then
# `memory-budget` alone decides.
CEILING = 2**40

RULES = {
    "node-span": "a tp or sp group stays inside one node (they talk every layer); warns otherwise",
    "memory-budget": "every rank's estimated memory fits --device-memory; the error names the line to change",
    "memory-ceiling": "without --device-memory, every rank's estimate stays under 1 TiB (more than any "
                      "accelerator holds); the error names the line to change",
}


WORLD_MAX = 2**18  # ranks the estimate lays out one by one (a few seconds); beyond, it is not made


class TooLarge(ValueError):
    """A world too large for the per-rank estimate (the plan itself may still compose)."""


def fmt_bytes(n: float) -> str:
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def fmt_ranks(ranks: list[int], limit: int = 6) -> str:
    """`0-7, 16-23` style, shortened."""
    runs, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            runs.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ", ".join(runs[:limit]) + (f", ... ({len(ranks)} ranks)" if len(runs) > limit else "")


@dataclass
class Report:
    layout: Layout
    memory: MemoryEstimate
    traffic: list[Collective]
    gpus_per_node: int
    device_memory: int | None = None
    dry: object = None  # planc.dryrun.DryRun when --dry-run
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def per_axis(self) -> dict:
        return per_axis(self.traffic)


def report(checked, *, dry_run: bool = False, device_memory: int | None = None,
           gpus_per_node: int | None = None, dry_rank: int = 0) -> Report:
    """Estimates (and with `dry_run`, the fake-process-group build) of a plan that composes.
    A runtime failure in the dry run becomes a located `dry-run` diagnostic."""
    from .. import dryrun as dr

    ctx = checked.ctx
    layout = Layout.from_degrees(ctx.degrees)
    if layout.world > WORLD_MAX:
        raise TooLarge(f"{layout.world} ranks are more than the {WORLD_MAX} the estimate lays out one by one")
    gpn = gpus_per_node or checked.plan["mesh.gpus_per_node"]
    analytic = states_per_rank(ctx)
    diags: list[Diagnostic] = []
    dry = None
    if dry_run:
        try:
            dry = dr.dry_run(checked, rank=dry_rank)
        except dr.StepFailed as e:
            diags.append(dr.diagnostic(e))
        if dry is not None and dry.per_rank != analytic:
            bad = next(r for r in range(layout.world) if dry.per_rank[r] != analytic[r])
            raise AssertionError(f"planc bug: the dry run's shards on rank {bad} ({dry.per_rank[bad]}) differ "
                                 f"from the analytic estimate ({analytic[bad]})")
    memory = estimate_memory(ctx, analytic)
    rep = Report(layout, memory, traffic(ctx), gpn, device_memory, dry, diags)
    rep.diagnostics += node_span(checked, layout, gpn)
    if device_memory is not None:
        rep.diagnostics += memory_budget(checked, memory, device_memory)
    else:
        rep.diagnostics += memory_budget(checked, memory, CEILING, rule="memory-ceiling")
    return rep


def node_span(checked, layout: Layout, gpus_per_node: int) -> list[Diagnostic]:
    plan = checked.plan
    out = []
    for axis, what in (("tp", "tensor-parallel"), ("sp", "Ulysses")):
        if layout.size(axis) <= 1:
            continue
        spans = layout.spans_nodes(axis, gpus_per_node)
        if spans:
            g = spans[0]
            nodes = sorted({r // gpus_per_node for r in g})
            out.append(Diagnostic(
                "node-span", f"{len(spans)} of {len(layout.groups(axis))} {axis} groups span nodes (ranks "
                f"{fmt_ranks(g)} sit on nodes {fmt_ranks(nodes)}, {gpus_per_node} GPU{'s' * (gpus_per_node != 1)} "
                f"per node); {what} traffic then crosses the network every layer", plan.span(f"mesh.{axis}"),
                f"keep {axis}{' * tp' if axis == 'sp' else ''} within one node: at most {gpus_per_node} and a "
                f"divisor of it", "warning"))
    return out


def memory_budget(checked, memory: MemoryEstimate, budget: int, rule: str = "memory-budget") -> list[Diagnostic]:
    """An error at the plan line whose change helps most when the worst rank does not fit `budget`
    (--device-memory; or, as `memory-ceiling`, more memory than any device has)."""
    worst = memory.worst
    if worst.total <= budget:
        return []
    plan, ctx = checked.plan, checked.ctx
    p = worst.parts
    groups = {"model states": p["params"] + p["grads"] + p["optim"], "FSDP buffers": p["gathered"] + p["reduce"],
              "activations": p["activations"], "logits": p["logits"]}
    biggest = max(groups, key=groups.get)
    ckpt_rules = [r for r in plan.rules if r.kind == "checkpoint"]
    fsdp_rules = [r for r in plan.rules if r.kind == "fsdp"]
    mb = plan["train.micro_batch"]
    over = worst.total - budget
    per_token = groups["activations"] + groups["logits"]
    # even one row (micro_batch = 1) does not fit next to everything else: the row is too long
    room = budget - (worst.total - per_token)
    row_too_long = 0 < room < per_token / max(mb, 1)
    dynamic = plan["data.pack"] == "dynamic"
    if biggest == "activations" and not ckpt_rules:
        span = plan.blocks.get("parallelize", plan.span("train.micro_batch"))
        help = 'checkpoint the decoder layers (`checkpoint "model.layers.*"`): each then keeps only its input'
    elif biggest in ("activations", "logits") and row_too_long:
        key = "data.tokens" if dynamic else "data.max_len"
        span = plan.span(key)
        sp = ctx.degrees["sp"]
        help = (f"one row of {plan[key]:,} tokens alone needs about {fmt_bytes(per_token / max(mb, 1))}: shorter "
                f"rows ({key.split('.')[1]}), or " + (f"a larger sp (now {sp})" if sp > 1 else "Ulysses (`sp`)")
                + " to split each row's tokens over more ranks")
    elif biggest in ("activations", "logits") and mb > 1:
        span = plan.span("train.micro_batch")
        need = max(1, int(mb * (1 - over / max(1.0, groups["activations"] + groups["logits"]))))
        help = f"activations and logits scale with micro_batch: try micro_batch = {need}"
    elif biggest == "logits" and ctx.degrees["tp"] > 1:
        span = next(r.span for r in plan.rules if r.kind == "tp")
        help = '`tp loss "lm_head"` keeps the logits sharded over the vocabulary'
    elif biggest in ("activations", "logits"):
        span = plan.span("data.max_len")
        sp = ctx.degrees["sp"]
        help = ("shorter rows, or " + (f"a larger sp (now {sp})" if sp > 1 else "Ulysses (`sp`)")
                + " to split each row's tokens over more ranks")
    elif biggest == "FSDP buffers" and fsdp_rules:
        span = fsdp_rules[0].span
        help = "smaller FSDP units (shard finer modules) hold less gathered at once"
    elif not fsdp_rules:
        span = plan.blocks.get("parallelize", plan.span("mesh.dp_shard"))
        help = 'shard the model states with `fsdp "model.layers.*"`'
    else:
        span = plan.span("mesh.dp_shard")
        help = "model states shrink with dp_shard * sp (and tp, ep): give the mesh more sharding ranks"
    if biggest == "logits" and plan.settings.get("kernels.fused_ce") is not None \
            and plan["kernels.fused_ce"] == "off":
        help += "; or `kernels { fused_ce = auto }`: the loss in chunks, never the full logits"
    parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in groups.items())
    who = ("rank " if len(worst.ranks) == 1 else "ranks ") + fmt_ranks(worst.ranks, 3)
    what = (f"the {fmt_bytes(budget)} device memory" if rule == "memory-budget" else
            f"{fmt_bytes(budget)}, more than any accelerator holds")
    if rule == "memory-ceiling":
        help += "; if a device of yours really holds this much, give it with --device-memory"
    return [Diagnostic(rule, f"{who} need{'s' * (len(worst.ranks) == 1)} about {fmt_bytes(worst.total)}, over "
                       f"{what} ({parts}); {biggest} weigh most", span, help)]


__all__ = ["RULES", "Report", "report", "fmt_bytes", "fmt_ranks", "workload"]
