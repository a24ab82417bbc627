"""`planc explain PLAN --world N`: the mesh as rank groups, where the node boundaries fall, the
per-rank memory table and the per-step traffic table (text, --json, or an --svg picture)."""
from __future__ import annotations

import json

from .estimate import Report, TooLarge, fmt_bytes, fmt_ranks, report
from .estimate.memory import PARTS
from .layout import AXES

AXIS_NOTES = {
    "tp": "tensor parallel (innermost: talks every layer)",
    "sp": "Ulysses sequence parallel (all-to-all around attention)",
    "dp_shard": "FSDP shard (data parallel)",
    "fsdp": "FSDP2 sharding group (dp_shard x sp)",
    "dp_replicate": "HSDP replicas (all-reduce of shards)",
    "ep": "expert parallel (borrows fsdp ranks)",
    "ep_fsdp": "experts' FSDP group",
}
GRID_LIMIT = 64  # draw every rank up to this world size


def axes_of(rep: Report) -> list[str]:
    lay = rep.layout
    # without Ulysses the fsdp group is the dp_shard group: show it once, by the name traffic uses
    return [a for a in AXES if lay.size(a) > 1 and not (a == "dp_shard" and lay.sp == 1)
            and not (a == "ep_fsdp" and lay.ep == 1)]


def to_json(checked, rep: Report) -> dict:
    lay, gpn = rep.layout, rep.gpus_per_node
    axes = {}
    for a in axes_of(rep):
        groups = lay.groups(a)
        axes[a] = {"size": lay.size(a), "groups": groups, "spans_nodes": len(lay.spans_nodes(a, gpn))}
    mem = [{"ranks": r.ranks, **{k: int(v) for k, v in r.parts.items()}, "total": int(r.total)}
           for r in rep.memory.rows]
    out = {
        "plan": checked.plan.name, "world": lay.world, "degrees": checked.ctx.degrees, "gpus_per_node": gpn,
        "nodes": -(-lay.world // gpn), "axes": axes, "memory": mem,
        "activation_terms_one_layer": {k: int(v) for k, v in rep.memory.activation_terms.items()},
        "device_memory": rep.device_memory,
        "traffic": [{"axis": c.axis, "op": c.op, "what": c.what, "calls": c.calls, "bytes": c.bytes,
                     "group": c.group, "total": c.total, "wire": int(c.wire), "expected": c.expected}
                    for c in rep.traffic],
        "per_axis": {a: {k: int(v) for k, v in s.items()} for a, s in rep.per_axis.items()},
        "notes": rep.memory.notes,
        "diagnostics": [d.to_json() for d in rep.diagnostics],
    }
    if rep.dry is not None:
        out["dry_run"] = {"seconds": round(rep.dry.seconds, 2), "rank_built": rep.dry.rank, "notes": rep.dry.notes}
    return out


def text(checked, rep: Report) -> list[str]:
    lay, gpn, d = rep.layout, rep.gpus_per_node, checked.ctx.degrees
    dims = " x ".join(f"{k} {v}" for k, v in d.items() if v > 1 and k != "ep") or "1 process"
    ep = f", ep {d['ep']} (borrowed from fsdp)" if d["ep"] > 1 else ""
    nodes = -(-lay.world // gpn)
    lines = [f'plan "{checked.plan.name}": {lay.world} ranks = {dims}{ep}; {nodes} node{"s" * (nodes != 1)} '
             f"of {gpn} GPUs", "",
             "mesh (runtime/dist.py order: dp_replicate, fsdp = dp_shard x sp, tp; ep splits fsdp as ep_fsdp x ep)"]
    lines.append(f"  {'axis':<13}{'size':>5}{'groups':>8}  {'first group':<28}{'spans nodes':<13}meaning")
    for a in axes_of(rep):
        groups = lay.groups(a)
        spans = lay.spans_nodes(a, gpn)
        span_txt = f"{len(spans)} groups" if spans else "no"
        lines.append(f"  {a:<13}{lay.size(a):>5}{len(groups):>8}  {fmt_ranks(groups[0], 3):<28}{span_txt:<13}"
                     f"{AXIS_NOTES[a]}")
    lines += [""] + grid(rep)
    lines += ["", "memory per rank (model states exact; the rest estimated, docs/estimates.md)"]
    head = f"  {'ranks':<22}" + "".join(f"{p:>13}" for p in PARTS) + f"{'total':>13}"
    lines.append(head)
    for r in rep.memory.rows[:8]:
        lines.append(f"  {fmt_ranks(r.ranks, 2):<22}" + "".join(f"{fmt_bytes(r.parts[p]):>13}" for p in PARTS)
                     + f"{fmt_bytes(r.total):>13}")
    if len(rep.memory.rows) > 8:
        lines.append(f"  ... {len(rep.memory.rows) - 8} more rank classes (--json lists all)")
    if rep.device_memory:
        worst = rep.memory.worst
        verdict = "fits" if worst.total <= rep.device_memory else "DOES NOT FIT"
        lines.append(f"  worst rank {fmt_bytes(worst.total)} of {fmt_bytes(rep.device_memory)}: {verdict}")
    for n in rep.memory.notes:
        lines.append(f"  note: {n}")
    lines += ["", f"traffic per step per rank ({_workload_text(checked)})"]
    lines.append(f"  {'axis':<13}{'op':<16}{'what':<38}{'calls':>7}{'per call':>13}{'per step':>13}{'wire':>13}")
    for c in sorted(rep.traffic, key=lambda c: (c.axis, -c.total)):
        mark = " ~" if c.expected else ""
        lines.append(f"  {c.axis:<13}{c.op:<16}{c.what[:37]:<38}{c.calls:>7}{fmt_bytes(c.bytes):>13}"
                     f"{fmt_bytes(c.total):>13}{fmt_bytes(c.wire):>13}{mark}")
    lines.append("  per axis: " + "; ".join(f"{a} {fmt_bytes(s['bytes'])} ({fmt_bytes(s['wire'])} on the wire)"
                                            for a, s in sorted(rep.per_axis.items())))
    if any(c.expected for c in rep.traffic):
        lines.append("  ~ depends on routing: the figure assumes tokens spread evenly over experts")
    return lines


def _workload_text(checked) -> str:
    from .estimate import workload

    w = workload(checked.ctx)
    return (f"{w.micro_batches} micro-batch{'es' * (w.micro_batches != 1)} of {w.rows:g} x {w.seq} tokens, "
            f"compute {w.compute} B, reduce {w.reduce} B per element")


def grid(rep: Report) -> list[str]:
    """The ranks laid out: one row per (dp_replicate, fsdp index), tp across; node breaks marked."""
    lay, gpn = rep.layout, rep.gpus_per_node
    F = lay.size("fsdp")
    rows = lay.dp_replicate * F
    shown = rows if lay.world <= GRID_LIMIT else max(1, min(rows, GRID_LIMIT // max(1, lay.tp)))
    width = len(str(lay.world - 1))
    out = [f"rank grid: row = (dp_replicate, dp_shard, sp), column = tp rank"
           + (f"; first {shown} of {rows} rows" if shown < rows else "")]
    for row in range(shown):
        r, f = divmod(row, F)
        c = lay.coords(lay.rank(r, f, 0))
        label = f"r{r} d{c['dp_shard']} s{c['sp']}" + (f" e{c['ep']}" if lay.ep > 1 else "")
        cells = []
        for t in range(lay.tp):
            rank = lay.rank(r, f, t)
            cells.append(f"{rank:>{width}}")
        node = lay.rank(r, f, 0) // gpn
        out.append(f"  {label:<16}| " + " ".join(cells) + f"   node {node}")
    return out


def explain(checked, *, gpus_per_node=None, device_memory=None, as_json=False, dry_run=False) -> tuple[str, Report]:
    """The text (or JSON) of `planc explain` for a plan that composes, and the Report it shows
    (its diagnostics are the caller's to print; planc.draw.svg draws the same Report)."""
    rep = report(checked, dry_run=dry_run, device_memory=device_memory, gpus_per_node=gpus_per_node)
    if as_json:
        return json.dumps(to_json(checked, rep), indent=1), rep
    return "\n".join(text(checked, rep)), rep
