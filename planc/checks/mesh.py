"""Mesh rules: degrees, `auto`, their product against the world size, what is not built yet."""
from __future__ import annotations

from math import prod

from ..layout import WORLD_DIMS as MESH_DIMS
from ..layout import Layout

RULES = {
    "mesh-auto": "at most one degree is `auto`, and it needs a world size to be derived from",
    "mesh-product": "dp_replicate * dp_shard * sp * tp equals the world size",
    "mesh-unsupported": "pipeline and context parallelism are refused (not built yet)",
    "ep-divides": "ep divides dp_shard * sp, the ranks experts borrow",
}


def check(ctx) -> None:
    p = ctx.plan
    for dim, what in (("pp", "pipeline parallelism"), ("cp", "context parallelism")):
        if p[f"mesh.{dim}"] != 1:
            ctx.error("mesh-unsupported", f"{what} (`{dim}`) is not built yet", p.span(f"mesh.{dim}"),
                      "use sp (Ulysses) for long sequences and tp/fsdp for size" if dim == "cp" else
                      "spread the model with fsdp, tp and ep instead; pipeline parallelism is planned")
    autos = [d for d in MESH_DIMS if p[f"mesh.{d}"] == "auto"]
    declared = p["mesh.world"]
    world = ctx.world
    if world is not None and declared is not None and world != declared:
        ctx.error("mesh-product", f"the plan declares world = {declared}, but --world is {world}",
                  p.span("mesh.world"), f"set `world = {world}` or check with --world {declared}")
        return
    world = world or declared
    if len(autos) > 1:
        ctx.error("mesh-auto", f"only one degree may be `auto`, not {', '.join(autos)}",
                  p.span(f"mesh.{autos[1]}"), "give the others numbers")
        return
    fixed = {d: p[f"mesh.{d}"] for d in MESH_DIMS if d not in autos}
    if autos:
        if world is None:
            ctx.error("mesh-auto", f"`{autos[0]} = auto` needs the world size",
                      p.span(f"mesh.{autos[0]}"), "run `planc check --world N`, or add `world = N` to mesh")
            return
        rest = prod(fixed.values())
        if world % rest:
            ctx.error("mesh-product", f"{_formula(fixed)} = {rest} does not divide the world size {world}, "
                      f"so `{autos[0]}` cannot be derived", p.span(f"mesh.{autos[0]}"),
                      _divisor_help(fixed, world, p))
            return
        fixed[autos[0]] = world // rest
        ctx.notes.append(f"{autos[0]} = auto -> {fixed[autos[0]]}")
    layout = Layout.from_degrees(dict(fixed, ep=p["mesh.ep"]))
    product = layout.world
    if world is not None and product != world:
        written = [d for d in MESH_DIMS if p.settings[f"mesh.{d}"].written] or ["dp_shard"]
        span = p.span(f"mesh.{written[0]}")
        if len(written) > 1:
            first, last = p.span(f"mesh.{written[0]}"), p.span(f"mesh.{written[-1]}")
            if first and last and first.line == last.line:
                span = type(first)(first.file, first.line, first.col, last.end_line, last.end_col)
        ctx.error("mesh-product", f"{_formula(fixed, written)} = {product}, but the world size is {world}",
                  span, _divisor_help(fixed, world, p) + f" (or run with --world {product})")
        return
    ctx.degrees = layout.degrees()
    ctx.world = layout.world
    ep, borrow = layout.ep, layout.fsdp
    if ep > 1 and borrow % ep:
        ctx.error("ep-divides", f"ep({ep}) must divide dp_shard * sp = {borrow}: experts borrow those ranks",
                  p.span("mesh.ep"), "choose ep among " + ", ".join(str(d) for d in _divisors(borrow) if d > 1)
                  if borrow > 1 else "raise dp_shard (or sp) to at least ep")


def _formula(degrees: dict, only=None) -> str:
    """`dp_shard(2) * tp(3)`: the degrees given (an `auto` one is not among them)."""
    names = [d for d in MESH_DIMS if d in degrees and ((only is None and degrees[d] != 1) or (only and d in only))]
    names = names or [d for d in ("dp_shard", *MESH_DIMS) if d in degrees][:1]
    return " * ".join(f"{d}({degrees[d]})" for d in names)


def _divisors(n: int) -> list[int]:
    """The divisors of n (all of them up to n = 10**10; n may be as large as 2**63: no loop to n)."""
    small = [d for d in range(1, min(n, 10**5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _divisor_help(fixed: dict, world: int, plan) -> str:
    """Name one degree change that makes the product equal the world size."""
    options = []
    for d in MESH_DIMS:
        if d not in fixed:  # the `auto` degree: it is derived, not chosen
            continue
        others = prod(v for k, v in fixed.items() if k != d)
        if others and world % others == 0 and world // others != fixed[d]:
            options.append(f"{d} = {world // others}")
    written = [d for d in MESH_DIMS if plan.settings[f"mesh.{d}"].written]
    options.sort(key=lambda o: o.split(" ")[0] not in written)
    if options:
        return "use " + " or ".join(options[:3])
    return f"pick degrees whose product is {world}: its divisors are {', '.join(map(str, _divisors(world)))}"
