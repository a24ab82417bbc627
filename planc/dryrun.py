"""`planc check --dry-run`: the plan's real parallel layout at any world size, in one CPU process.

The model is built on the meta device (no memory), the plan's DeviceMesh is created under a fake
process group of `world` ranks (every collective returns at once and moves nothing), and the very
runtime functions the generated script calls shard it: TP, EP, Ulysses, activation checkpointing,
FSDP2, then the optimizer, whose AdamW states are created by one real `step()` on meta tensors.
What comes out are the real DTensors: their global shapes, meshes and placements. From those,
DTensor's own shard arithmetic gives every rank's local shapes (its coordinate on each mesh read
from the DeviceMesh layout), so one build answers for all ranks; the ranks built for real are
checked against that arithmetic.

A `cuda` plan is dry-run on a `cpu` mesh: FSDP2 asks the CUDA runtime for the current device, which
a machine without a GPU cannot answer, and shard shapes do not depend on the device type.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from .diagnostics import Diagnostic

RULES = {
    "dry-run": "the runtime applies the plan without error on the fake process group (error at the rule it ran)",
}


@contextlib.contextmanager
def fake_world(rank: int, world: int):
    """A default process group of `world` ranks in which this process is `rank`; collectives return
    immediately and move no data. torch's fake backend is private API (torch.testing._internal):
    this is the one place planc touches it."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group already runs in this process; a dry run needs its own")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


class StepFailed(Exception):
    """The runtime raised while applying one plan step; `span` is the plan line that asked for it."""

    def __init__(self, what: str, span, cause: BaseException):
        super().__init__(f"{what}: {_first_line(cause)}")
        self.what, self.span, self.cause = what, span, cause
        self.world: int | None = None  # set by the dry run


def _first_line(e: BaseException) -> str:
    text = str(e) if not isinstance(e, SystemExit) else str(e.code)
    text = text.removeprefix("error: ")
    return (text.strip().splitlines() or [type(e).__name__])[0]


def _blame(rules, message: str, ctx):
    """The rule whose matched modules the error names (else the first rule of the step)."""
    for i, r in enumerate(ctx.plan.rules):
        if r not in rules:
            continue
        for j in range(len(r.globs)):
            if any(f"'{m}'" in message or f'"{m}"' in message for m in ctx.matches.get((i, j), [])):
                return r
    return rules[0]


@contextlib.contextmanager
def _step(what: str, span, rules=None, ctx=None):
    try:
        yield
    except (Exception, SystemExit) as e:  # the runtime exits with a message on bad settings
        if rules:
            span = _blame(rules, str(e), ctx).span
        raise StepFailed(what, span, e) from e


def _modules(model, rule) -> list[str]:
    from runtime.parallel.globs import match_modules

    names: list[str] = []
    for g in rule.globs:
        names += [n for n in match_modules(model, g.pattern) if n not in names]
    return names


def parallelize(model, mesh, checked) -> list[str]:
    """Apply the plan's `parallelize` rules to `model` over `mesh` (a runtime.dist.Mesh) with the
    runtime functions the generated script calls, in the compiler's order (planc.lower.ORDER).
    Returns notes on what was not applied; raises StepFailed located at the responsible rule."""
    from runtime.model import DTYPES
    from runtime.parallel.checkpointing import apply_activation_checkpointing
    from runtime.parallel.ddp import apply_replicate
    from runtime.parallel.ep import apply_ep, shard_experts
    from runtime.parallel.fsdp import apply_fsdp
    from runtime.parallel.mesh_ep import ep_meshes
    from runtime.parallel.tp import apply_tp, tp_rules_from_config
    from runtime.parallel.ulysses import apply_ulysses

    from .lower import ORDER

    plan, ctx = checked.plan, checked.ctx
    d = ctx.degrees
    by_kind = {k: [r for r in plan.rules if r.kind == k] for k in ORDER}
    notes: list[str] = []
    ep_fsdp = None
    for kind in ORDER:
        rules = by_kind[kind]
        if not rules:
            continue
        if kind == "tp":
            with _step("tp", rules[0].span, rules, ctx):
                tp_rules = []
                for r in rules:
                    if r.options.get("plan") is not None and r.options["plan"].value == "model":
                        from_cfg, _ = tp_rules_from_config(model)
                        tp_rules += from_cfg
                    if r.globs:
                        tp_rules.append((r.style, _modules(model, r)))
                apply_tp(model, mesh.tp, _merge(tp_rules))
        elif kind == "ep":
            with _step("ep", rules[0].span, rules, ctx):
                ep_mesh, ep_fsdp = ep_meshes(mesh.root, d["ep"])
                apply_ep(model, ep_mesh, [m for r in rules for m in _modules(model, r)])
        elif kind == "sp":
            with _step("sp ulysses", rules[0].span, rules, ctx):
                apply_ulysses(model, mesh.sp, [m for r in rules for m in _modules(model, r)])
        elif kind == "checkpoint":
            for r in rules:
                with _step("checkpoint", r.span):
                    apply_activation_checkpointing(model, [g.pattern for g in r.globs])
        elif kind == "compile":
            notes.append("compile rules are not applied in a dry run (they do not change shard sizes)")
        elif kind == "fsdp":
            opts = {k: s.value for k, s in rules[0].options.items()}
            if any({k: s.value for k, s in r.options.items()} != opts for r in rules[1:]):
                notes.append(f"fsdp rules disagree on options; the dry run used line {rules[0].span.line}'s")
            param_dtype = DTYPES[plan["train.param_dtype"]]
            reduce_dtype = DTYPES[plan["train.reduce_dtype"]]
            with _step("fsdp", rules[0].span, rules, ctx):
                if ep_fsdp is not None:
                    from torch.distributed.fsdp import MixedPrecisionPolicy

                    shard_experts(model, ep_fsdp, mp_policy=MixedPrecisionPolicy(
                        param_dtype=param_dtype, reduce_dtype=reduce_dtype),
                        reshard_after_forward=bool(opts.get("reshard_after_forward", True)))
                apply_fsdp(model, mesh.fsdp, [g.pattern for r in rules for g in r.globs],
                           reshard_after_forward=bool(opts.get("reshard_after_forward", True)),
                           param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                           offload=bool(opts.get("offload", False)))
        elif kind == "replicate":
            with _step("replicate", rules[0].span):
                apply_replicate(model, mesh.root["dp_replicate"])
    return notes


def _merge(rules):
    """[(style, names)] with one entry per style, in first-seen order (apply_tp's input)."""
    out: dict[str, list[str]] = {}
    for style, names in rules:
        out.setdefault(style, [])
        out[style] += [n for n in names if n not in out[style]]
    return list(out.items())


# -- what the dry run records -------------------------------------------------------------------

@dataclass
class TensorSpec:
    """One tensor kind of one parameter (param, grad, or an optimizer state) as sharded."""

    name: str  # parameter name, e.g. model.layers.0.mlp.up_proj.weight
    kind: str  # param | grad | exp_avg | exp_avg_sq | ...
    shape: tuple  # global shape
    itemsize: int
    mesh: object = None  # DeviceMesh, or None for a plain (whole) tensor
    placements: tuple = ()
    local_shape: tuple | None = None  # on the rank that was built


@dataclass
class DryRun:
    world: int
    rank: int  # the rank that was built
    seconds: float
    specs: list[TensorSpec]
    per_rank: list[dict]  # rank -> {"param": bytes, "grad": bytes, "optim": bytes}
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"

    def classes(self) -> list[tuple[dict, list[int]]]:
        """Distinct per-rank byte counts with the ranks that have them (most ranks first)."""
        groups: dict[tuple, list[int]] = {}
        for r, b in enumerate(self.per_rank):
            groups.setdefault((b["param"], b["grad"], b["optim"]), []).append(r)
        out = [({"param": k[0], "grad": k[1], "optim": k[2]}, ranks) for k, ranks in groups.items()]
        return sorted(out, key=lambda kv: (-len(kv[1]), kv[1][0]))


def mesh_groups(mesh) -> list[list[int]]:
    """Every instance of `mesh`'s shape across the world, as rank lists (row-major over its dims),
    read from the DeviceMesh's own layout."""
    full = mesh._layout.remap_to_tensor(mesh._rank_map)  # (groups, *mesh.shape) of global ranks
    return full.reshape(full.shape[0], -1).tolist()


def _coordinates(mesh, world: int) -> dict[int, tuple]:
    """Every global rank's coordinate on `mesh` (or on the same-shaped mesh it belongs to),
    read from the DeviceMesh's own layout."""
    sizes = tuple(mesh.shape)
    coords: dict[int, tuple] = {}
    for group in mesh_groups(mesh):
        for flat, rank in enumerate(group):
            c, rest = [], flat
            for s in reversed(sizes):
                c.append(rest % s)
                rest //= s
            coords[rank] = tuple(reversed(c))
    return coords


def _cuts(spec: TensorSpec) -> list[tuple[int, int]]:
    """(tensor dim, mesh dim) in the order the shards are cut. A `_StridedShard` (what FSDP2 puts on
    a dim that TP or EP already sharded) is cut after the plain shards of the same tensor dim:
    its split_factor says that many shards came first."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    plain, strided = [], []
    for mesh_dim, pl in enumerate(spec.placements):
        if isinstance(pl, _StridedShard):
            strided.append((pl.dim, mesh_dim, pl.split_factor))
        elif isinstance(pl, Shard):
            plain.append((pl.dim, mesh_dim))
    cuts = list(plain)
    for dim, mesh_dim, factor in strided:
        before = [md for d, md in plain if d == dim and md > mesh_dim]
        expect = 1
        for md in before:
            expect *= spec.mesh.shape[md]
        if expect != factor:
            raise AssertionError(f"dry run: cannot read {spec.placements} of {spec.name} (split factor "
                                 f"{factor}, later shards {expect})")
        cuts.append((dim, mesh_dim))
    return cuts


def local_numel(shape, mesh_shape, cuts, coord) -> int:
    """Elements of the local shard at mesh coordinate `coord` (DTensor's torch.chunk arithmetic)."""
    from torch.distributed.tensor import Shard

    sizes = list(shape)
    for dim, mesh_dim in cuts:
        sizes[dim], _ = Shard.local_shard_size_and_offset(sizes[dim], mesh_shape[mesh_dim], coord[mesh_dim])
    n = 1
    for x in sizes:
        n *= x
    return n


def per_rank_bytes(specs: list[TensorSpec], world: int) -> list[dict]:
    """{"param", "grad", "optim"} bytes of every rank's local shards, from the recorded specs."""
    import math

    out = [{"param": 0, "grad": 0, "optim": 0} for _ in range(world)]
    groups: dict[tuple, list] = {}  # same shape, mesh and placements -> bytes per element by slot
    for spec in specs:
        slot = spec.kind if spec.kind in ("param", "grad") else "optim"
        key = (spec.shape, id(spec.mesh), repr(spec.placements))
        entry = groups.setdefault(key, [spec, {"param": 0, "grad": 0, "optim": 0}])
        entry[1][slot] += spec.itemsize
    coords_of: dict[int, dict] = {}
    for spec, per_slot in groups.values():
        if spec.mesh is None:
            n = math.prod(spec.shape)
            for b in out:
                for slot, size in per_slot.items():
                    b[slot] += n * size
            continue
        if id(spec.mesh) not in coords_of:
            coords_of[id(spec.mesh)] = _coordinates(spec.mesh, world)
        coords, cuts, mesh_shape = coords_of[id(spec.mesh)], _cuts(spec), tuple(spec.mesh.shape)
        cache: dict[tuple, int] = {}
        for rank in range(world):
            c = coords[rank]
            if c not in cache:
                cache[c] = local_numel(spec.shape, mesh_shape, cuts, c)
            for slot, size in per_slot.items():
                out[rank][slot] += cache[c] * size
    return out


def _spec(name: str, kind: str, t) -> TensorSpec:
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        return TensorSpec(name, kind, tuple(t.shape), t.dtype.itemsize, t.device_mesh, tuple(t.placements),
                          tuple(t.to_local().shape))
    return TensorSpec(name, kind, tuple(t.shape), t.dtype.itemsize, None, (), tuple(t.shape))


def record_specs(model, optimizer) -> list[TensorSpec]:
    """Specs of every parameter, its gradient and its optimizer states (AdamW's 0-d `step`
    counters live on the host and are left out)."""
    specs = []
    for name, p in model.named_parameters():
        specs.append(_spec(name, "param", p))
        if p.grad is not None:
            specs.append(_spec(name, "grad", p.grad))
        for k, v in optimizer.state.get(p, {}).items():
            if hasattr(v, "dim") and v.dim() > 0:
                specs.append(_spec(name, k, v))
    return specs


def build_optimizer(model, plan):
    """The optimizer the generated script builds (runtime.optim.build_optimizer with the plan's
    settings)."""
    from runtime.optim import build_optimizer as build

    return build(model, lr=plan["train.lr"], weight_decay=plan["train.weight_decay"],
                 betas=plan["train.betas"], eps=plan["train.eps"])


def init_optimizer_states(model, optimizer) -> None:
    """Create the optimizer's states the way training does: one `step()` with gradients laid out
    like their parameters (FSDP2's reduce-scatter output has the parameter's sharding)."""
    import torch

    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()


def dry_run(checked, rank: int = 0, check_ranks=()) -> DryRun:
    """Build `checked`'s plan for `rank` of its world on a fake process group; raises StepFailed.

    `check_ranks`: further ranks to build for real and compare with the spec arithmetic (a
    mismatch raises AssertionError: a planc bug, not a plan error)."""
    t0 = time.perf_counter()
    world = checked.ctx.world
    specs, notes = _build_once(checked, rank)
    per_rank = per_rank_bytes(specs, world)
    for other in check_ranks:
        other_specs, _ = _build_once(checked, other)
        _compare_local(other_specs, per_rank_bytes(other_specs, world), other)
    _compare_local(specs, per_rank, rank)
    device = checked.plan["mesh.device"]
    if device != "cpu":
        notes.append(f"the plan runs on {device}; the dry run's mesh is on cpu (shard shapes do not "
                     "depend on the device)")
    return DryRun(world, rank, time.perf_counter() - t0, specs, per_rank, notes, device)


def _compare_local(specs, per_rank, rank) -> None:
    """The rank that was built: its real local shards must equal the arithmetic for its rank."""
    import math

    real = {"param": 0, "grad": 0, "optim": 0}
    for s in specs:
        real[s.kind if s.kind in ("param", "grad") else "optim"] += math.prod(s.local_shape) * s.itemsize
    if real != per_rank[rank]:
        raise AssertionError(f"dry run: rank {rank}'s real shards {real} differ from DTensor's shard "
                             f"arithmetic {per_rank[rank]}")


def _build_once(checked, rank: int):
    """(specs, notes) of `rank`'s build; StepFailed carries the world size for its message."""
    try:
        return _build(checked, rank)
    except StepFailed as e:
        e.world = checked.ctx.world
        raise


def _build(checked, rank: int):
    import torch

    from runtime import dist as rdist
    from runtime import model as rmodel

    plan, ctx = checked.plan, checked.ctx
    d = ctx.degrees
    with fake_world(rank, ctx.world):
        info = rdist.DistInfo(rank, ctx.world, 0, torch.device("cpu"), "fake")
        with _step("mesh", plan.blocks.get("mesh", plan.name_span)):
            mesh = rdist.build_mesh(info, dp_replicate=d["dp_replicate"], dp_shard=d["dp_shard"], sp=d["sp"],
                                    tp=d["tp"])
        with _step("model", plan.value_span("model.config")):
            model = rmodel.build_meta(plan["model.config"], dtype=plan["model.dtype"],
                                      attention=plan["model.attention"])
        notes = parallelize(model, mesh, checked)
        with _step("optimizer", plan.span("train.optimizer")):
            optimizer = build_optimizer(model, plan)
            init_optimizer_states(model, optimizer)
        specs = record_specs(model, optimizer)
    return specs, notes


def diagnostic(e: StepFailed) -> Diagnostic:
    """A located error for a runtime failure in the dry run."""
    return Diagnostic("dry-run", f"the runtime refuses `{e.what}` on {e.world} ranks: {_first_line(e.cause)}", e.span,
                      "this is what the generated script would raise at start-up; change this line "
                      "(or the mesh degrees) and check again")

