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
import importlib
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


def _blame(blame, message: str):
    """The span of the rule whose matched modules the error names (else the step's first rule)."""
    for span, modules in blame:
        if any(f"'{m}'" in message or f'"{m}"' in message for m in modules):
            return span
    return blame[0][0] if blame else None


class _Notes:
    """The script's `log` in a dry run: what it would log becomes a note of the report."""

    def __init__(self, notes: list[str]):
        self.notes = notes

    def info(self, message) -> None:
        self.notes.append(str(message))


def namespace(ir, info, notes: list[str]) -> dict:
    """The names the script's set-up statements use, bound as the generated script binds them:
    `cfg` from the IR's own settings (config.load, as the script's first line runs it)."""
    from runtime import config, dist, lora, model, optim

    settings = {s.key: s.value for s in ir.settings}
    return {"cfg": config.load(settings, argv=[], prog=ir.out_path), "info": info, "dist": dist, "models": model,
            "optim": optim, "lora": lora, "log": _Notes(notes)}


def evaluate(expr, ns: dict, calls: list | None = None):
    """The value of an IR expression in `ns`; every call made is appended to `calls`."""
    from .emit import render_expr
    from .ir import Call, Code, Items

    if isinstance(expr, Code):
        return eval(compile(expr.src, "<planc step>", "eval"), {"__builtins__": __builtins__}, ns)  # noqa: S307
    if isinstance(expr, Call):
        fn = getattr(ns[expr.via], expr.name) if expr.via else getattr(importlib.import_module(expr.module), expr.name)
        args = [evaluate(a, ns, calls) for a in expr.args]
        kwargs = {k: evaluate(v, ns, calls) for k, v in expr.kwargs}
        if calls is not None:
            calls.append(render_expr(expr))
        return fn(*args, **kwargs)
    if isinstance(expr, Items):
        items = [evaluate(item, ns, calls) for item, _ in expr.items]
        return (evaluate(expr.prefix, ns, calls) if expr.prefix else []) + items
    if isinstance(expr, (list, tuple)):
        return type(expr)(evaluate(x, ns, calls) for x in expr)
    return expr


def execute(ir, ns: dict, calls: list | None = None) -> None:
    """Run the script's set-up (mesh, model, kernels, every parallelize step, optimizer) in `ns`;
    a statement that raises is a StepFailed located at the plan line it comes from."""
    for what, stmts in ir.setup():
        step = next((s for s in ir.steps if s.stmts is stmts), None)
        for st in stmts:
            try:
                value = evaluate(st.call, ns, calls)
            except (Exception, SystemExit) as e:  # the runtime exits with a message on bad settings
                span = _blame(step.blame, str(e)) if step is not None else None
                raise StepFailed(what, span or st.span or (step.blame[0][0] if step and step.blame else None), e) from e
            if len(st.assign) == 1:
                ns[st.assign[0]] = value
            elif st.assign:
                ns.update(zip(st.assign, value))


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

    from .lower import lower

    ir = lower(checked, f"generated/{checked.plan.name}.py")
    notes: list[str] = []
    with fake_world(rank, checked.ctx.world):
        info = rdist.DistInfo(rank, checked.ctx.world, 0, torch.device("cpu"), "fake")
        ns = namespace(ir, info, notes)
        execute(ir, ns)
        model, optimizer = ns["model"], ns["optimizer"]
        init_optimizer_states(model, optimizer)
        specs = record_specs(model, optimizer)
    return specs, notes


def diagnostic(e: StepFailed) -> Diagnostic:
    """A located error for a runtime failure in the dry run."""
    return Diagnostic("dry-run", f"the runtime refuses `{e.what}` on {e.world} ranks: {_first_line(e.cause)}", e.span,
                      "this is what the generated script would raise at start-up; change this line "
                      "(or the mesh degrees) and check again")

