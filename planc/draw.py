"""The SVG picture of `planc explain --svg`: the ranks on their nodes, coloured by tp group and
outlined by fsdp group, and each rank class's memory as a stacked bar (hand-written SVG, no
dependencies)."""
from __future__ import annotations

from html import escape

from .estimate import fmt_bytes, fmt_ranks
from .estimate.memory import PARTS

COLOURS = {"params": "#4e79a7", "grads": "#f28e2b", "optim": "#e15759", "gathered": "#76b7b2",
           "reduce": "#59a14f", "activations": "#edc948", "logits": "#b07aa1"}
PALETTE = ["#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9", "#fce5cd", "#d0e0e3", "#ead1dc"]
MAX_CELLS = 1024


def svg(checked, rep) -> str:
    lay, gpn = rep.layout, rep.gpus_per_node
    cell, pad = (22, 40) if lay.world <= 256 else (12, 40)
    shown = min(lay.world, MAX_CELLS)
    per_row = gpn if gpn * cell <= 900 else max(1, 900 // cell)
    rows = -(-shown // per_row)
    grid_w = per_row * cell
    grid_h = rows * cell
    bar_top = pad + grid_h + 70
    classes = rep.memory.rows[:6]
    bar_h, bar_gap = 22, 30
    width = max(grid_w + 2 * pad + 260, 900)
    height = bar_top + len(classes) * bar_gap + 80
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{pad}" y="22" font-size="14">{escape(checked.plan.name)}: {lay.world} ranks, '
           f'{escape(_dims(checked))}, {gpn} GPUs per node</text>']
    # ranks: one row per node, coloured by tp group, fsdp index written when cells are big enough
    for rank in range(shown):
        c = lay.coords(rank)
        x = pad + (rank % per_row) * cell
        y = pad + (rank // per_row) * cell
        group = (c["dp_replicate"] * lay.size("fsdp") + c["fsdp"])
        fill = PALETTE[group % len(PALETTE)]
        out.append(f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{fill}" stroke="#666" '
                   f'stroke-width="0.5"><title>rank {rank}: ' + escape(", ".join(f"{k} {v}" for k, v in c.items())) +
                   '</title></rect>')
        if cell >= 20:
            out.append(f'<text x="{x + (cell - 2) / 2}" y="{y + cell / 2 + 2}" text-anchor="middle" '
                       f'font-size="8">{rank}</text>')
    for row in range(rows):  # node labels
        first = row * per_row
        out.append(f'<text x="{pad + grid_w + 6}" y="{pad + row * cell + cell / 2 + 3}" font-size="9">node '
                   f'{first // gpn}</text>')
    for t0 in range(0, shown, lay.tp):  # tp groups are contiguous: outline them
        for start in range(t0, min(t0 + lay.tp, shown), per_row):
            end = min(t0 + lay.tp, (start // per_row + 1) * per_row, shown)
            x = pad + (start % per_row) * cell - 1
            y = pad + (start // per_row) * cell - 1
            out.append(f'<rect x="{x}" y="{y}" width="{(end - start) * cell}" height="{cell}" fill="none" '
                       f'stroke="#222" stroke-width="1.5"/>')
    note = (f"cells: ranks (colour = data-parallel / fsdp index, outline = tp group of {lay.tp})"
            + (f"; first {shown} of {lay.world}" if shown < lay.world else ""))
    out.append(f'<text x="{pad}" y="{pad + grid_h + 16}">{escape(note)}</text>')
    # memory bars
    top = max([r.total for r in classes] + [rep.device_memory or 0]) or 1
    scale = (width - 2 * pad - 170) / top
    out.append(f'<text x="{pad}" y="{bar_top - 14}" font-size="13">memory per rank</text>')
    for i, r in enumerate(classes):
        y = bar_top + i * bar_gap
        out.append(f'<text x="{pad}" y="{y + 15}">{escape(fmt_ranks(r.ranks, 2)[:26])}</text>')
        x = pad + 170
        for part in PARTS:
            w = r.parts[part] * scale
            if w <= 0:
                continue
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{COLOURS[part]}">'
                       f'<title>{part}: {fmt_bytes(r.parts[part])}</title></rect>')
            x += w
        out.append(f'<text x="{x + 4:.1f}" y="{y + 15}">{fmt_bytes(r.total)}</text>')
    if rep.device_memory:
        x = pad + 170 + rep.device_memory * scale
        y0, y1 = bar_top - 6, bar_top + len(classes) * bar_gap
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="red" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x + 3:.1f}" y="{y0}" fill="red">{fmt_bytes(rep.device_memory)}</text>')
    ly = bar_top + len(classes) * bar_gap + 20
    for i, part in enumerate(PARTS):
        x = pad + i * 120
        out.append(f'<rect x="{x}" y="{ly}" width="12" height="12" fill="{COLOURS[part]}"/>')
        out.append(f'<text x="{x + 16}" y="{ly + 10}">{part}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _dims(checked) -> str:
    d = checked.ctx.degrees
    return " x ".join(f"{k} {v}" for k, v in d.items() if v > 1) or "1 process"
