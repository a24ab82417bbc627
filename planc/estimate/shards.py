"""Every parameter's sharding, read from the plan alone (no torch.distributed), and each rank's
local shard sizes: the analytic side of `planc check --dry-run`, which must agree with it exactly.

A parameter is cut in the order the runtime cuts it: tensor parallelism first (colwise: dim 0,
rowwise: dim 1, vocab / loss: dim 0; sequence norms and per-head norms stay whole), then expert
parallelism (the experts dim 0 over `ep`), then FSDP2 (dim 0 of what is left, over `fsdp` =
dp_shard * sp, or over `ep_fsdp` for experts). Each cut is torch.chunk's: chunks of ceil(n / k),
so the last ranks may hold less, or nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..checks.lora import lora_targets
from ..layout import Layout

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class ParamLayout:
    name: str
    shape: tuple
    cuts: list[tuple[int, str]] = field(default_factory=list)  # (tensor dim, axis), in order
    unit: str | None = None  # the FSDP unit that shards it ("" = root), None without FSDP
    style: str | None = None  # its tp style, if any
    expert: bool = False  # expert-parallel
    frozen: bool = False  # a `freeze` rule's: no gradient and no optimizer state


def chunk(n: int, k: int, i: int) -> int:
    """Size of chunk i of torch.chunk(range(n), k) (0 when there is no such chunk)."""
    if k == 1:
        return n
    c = -(-n // k)
    return max(0, min(c, n - i * c))


def local_shape(p: ParamLayout, coords: dict, layout: Layout) -> tuple:
    shape = list(p.shape)
    for dim, axis in p.cuts:
        shape[dim] = chunk(shape[dim], layout.size(axis), coords[axis])
    return tuple(shape)


def padded_unsharded(p: ParamLayout, layout: Layout) -> int:
    """Elements of the parameter as FSDP2 all-gathers it: its TP/EP-local shape with dim 0
    padded to a multiple of the FSDP degree (what the all-gather buffer holds)."""
    coords = {a: 0 for a in ("fsdp", "ep_fsdp", "tp", "ep")}
    shape = list(p.shape)
    for dim, axis in p.cuts:
        if axis in ("fsdp", "ep_fsdp"):
            k = layout.size(axis)
            shape[dim] = -(-shape[dim] // k) * k
        else:
            shape[dim] = chunk(shape[dim], layout.size(axis), coords[axis])
    n = 1
    for x in shape:
        n *= x
    return n


def tp_styles(ctx) -> dict[str, str]:
    """{module name: tp style} as the runtime applies them (including `tp plan = model` and the
    per-head norms apply_tp finds by itself, style "head_norm")."""
    styles: dict[str, str] = {}
    if ctx.degrees["tp"] <= 1 and not any(r.kind == "tp" for r in ctx.plan.rules):
        return styles
    for rule, names in ctx.rule_modules("tp"):
        plan_opt = rule.options.get("plan")
        if plan_opt is not None and plan_opt.value == "model":
            from runtime.parallel.tp import tp_rules_from_config

            for style, mods in tp_rules_from_config(ctx.tree.model)[0]:
                for m in mods:
                    styles.setdefault(m, style)
        for m in names:
            styles.setdefault(m, rule.style)
    tree = ctx.tree
    head_dim = _head_dim(tree.text_config)
    parents = {m.rpartition(".")[0] for m, s in styles.items() if s == "colwise"}
    for parent in parents:
        for m in tree.modules:
            if m.rpartition(".")[0] != parent or m in styles:
                continue
            ps = tree.direct_params.get(m, [])
            if head_dim and any(q.endswith(".weight") and tree.param_shape[q] == (head_dim,) for q in ps):
                styles[m] = "head_norm"
    return styles


def _head_dim(cfg):
    hd = getattr(cfg, "head_dim", None)
    if hd:
        return hd
    heads = getattr(cfg, "num_attention_heads", None)
    return cfg.hidden_size // heads if heads else None


def _tp_cut(style: str | None, pname: str) -> int | None:
    if style in ("colwise", "loss", "vocab"):
        return 0
    if style == "rowwise":
        return 1 if pname == "weight" else None
    return None


def fsdp_units(ctx) -> list[str]:
    """FSDP unit modules the plan's fsdp globs name, deepest first (runtime.parallel.fsdp.units)."""
    names: list[str] = []
    for _, mods in ctx.rule_modules("fsdp"):
        names += [m for m in mods if m not in names]
    order = {n: i for i, n in enumerate(ctx.tree.modules)}
    return sorted(names, key=lambda n: (-n.count("."), order[n]))


def param_layouts(ctx) -> list[ParamLayout]:
    """Every distinct parameter (a tied weight once) with its cuts and FSDP unit."""
    tree, plan = ctx.tree, ctx.plan
    styles = tp_styles(ctx)
    experts = {m for _, mods in ctx.rule_modules("ep") for m in mods} if ctx.degrees["ep"] > 1 else set()
    fsdp = any(r.kind == "fsdp" for r in plan.rules)
    units = fsdp_units(ctx) if fsdp else []
    tied_extra = {q for group in tree.tied for q in group[1:]}
    frozen = [m for _, mods in ctx.rule_modules("freeze") for m in mods]
    rank, adapted = lora_targets(ctx)  # LoRA: every base parameter frozen, adapters beside the targets
    out = []
    for module in tree.modules:
        if module in adapted:
            out += _adapters(module, tree.param_shape[f"{module}.weight"], rank, fsdp and next(
                (u for u in units if module.startswith(u + ".")), ""))
        for q in tree.direct_params.get(module, []):
            if q in tied_extra:
                continue
            pname = q.rpartition(".")[2]
            p = ParamLayout(q, tuple(tree.param_shape[q]), style=styles.get(module),
                            frozen=bool(adapted) or q in tree.never_used or any(q.startswith(m + ".") for m in frozen))
            dim = _tp_cut(p.style, pname)
            if dim is not None:
                p.cuts.append((dim, "tp"))
            if module in experts and len(p.shape) == 3:
                p.cuts.append((0, "ep"))
                p.expert = True
            if fsdp:
                if p.expert:
                    p.unit = module  # runtime.parallel.ep.shard_experts: each experts module is a unit
                    p.cuts.append((0, "ep_fsdp"))
                else:
                    p.unit = next((u for u in units if q.startswith(u + ".")), "")
                    p.cuts.append((0, "fsdp"))
            out.append(p)
    return out


def _adapters(module: str, weight: tuple, rank: int, unit) -> list[ParamLayout]:
    """peft's lora_A (rank x in) and lora_B (out x rank) of one adapted nn.Linear, sharded by
    FSDP2 on dim 0 in the unit of their layer (`unit` False: no FSDP)."""
    out_f, in_f = weight
    out = []
    for ab, shape in (("A", (rank, in_f)), ("B", (out_f, rank))):
        p = ParamLayout(f"{module}.lora_{ab}.default.weight", shape)
        if unit is not False:
            p.unit = unit
            p.cuts.append((0, "fsdp"))
        out.append(p)
    return out


def states_per_rank(ctx, params: list[ParamLayout] | None = None) -> list[dict]:
    """{"param", "grad", "optim"} bytes of every rank's local shards: parameters and gradients
    in the master dtype (model.dtype), AdamW's exp_avg and exp_avg_sq likewise (frozen parameters
    have neither gradients nor optimizer states)."""
    params = param_layouts(ctx) if params is None else params
    layout = Layout.from_degrees(ctx.degrees)
    itemsize = BYTES[ctx.plan["model.dtype"]]
    groups: dict[tuple, int] = {}
    for p in params:
        key = (p.shape, tuple(p.cuts), p.frozen)
        groups[key] = groups.get(key, 0) + 1
    out = []
    cache: dict[tuple, int] = {}
    for rank in range(layout.world):
        c = layout.coords(rank)
        n = trained = 0
        for (shape, cuts, frozen), count in groups.items():
            key = (shape, cuts, tuple(c[a] for _, a in cuts))
            if key not in cache:
                cache[key] = _numel(local_shape(ParamLayout("", shape, list(cuts)), c, layout))
            n += cache[key] * count
            trained += 0 if frozen else cache[key] * count
        out.append({"param": n * itemsize, "grad": trained * itemsize, "optim": 2 * trained * itemsize})
    return out


def _numel(shape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def unit_sizes(ctx, params: list[ParamLayout] | None = None) -> dict[str, dict]:
    """{unit: {"numel": padded elements all-gathered, "axis": fsdp|ep_fsdp, "params": count}}."""
    params = param_layouts(ctx) if params is None else params
    layout = Layout.from_degrees(ctx.degrees)
    units: dict[str, dict] = {}
    for p in params:
        if p.unit is None:
            continue
        u = units.setdefault(p.unit, {"numel": 0, "axis": "ep_fsdp" if p.expert else "fsdp", "params": 0})
        u["numel"] += padded_unsharded(p, layout)
        u["params"] += 1
    return units
