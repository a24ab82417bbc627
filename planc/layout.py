"""One layout model: a plan's mesh degrees and everything derived from them, without torch.

The mesh dimensions, the world size, the process groups each parallelism talks in, the rank order,
the one-line description and the `dp_shard=2,tp=2` text of a layout are defined here once; the
checks, lowering, estimates, explain and verify all use this module. (The runtime builds the real
DeviceMesh in runtime/dist.py: a generated script imports only `runtime`.)

The rank order is runtime/dist.py's: one DeviceMesh ``(dp_replicate, fsdp, tp)`` with tp innermost,
where ``fsdp = dp_shard * sp`` splits as ``(dp_shard, sp)`` (sp inner), and expert parallelism
splits the same fsdp dim as ``(ep_fsdp, ep)`` (ep inner; runtime/parallel/mesh_ep.py). So

    rank = (r * dp_shard * sp + f) * tp + t,   f = d * sp + s = e_f * ep + e

`tests/test_dryrun.py` checks these groups against the DeviceMesh the runtime really builds.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import astuple, dataclass

DIMS = ("dp_replicate", "dp_shard", "sp", "tp", "ep")  # the degrees a plan's mesh block sets
WORLD_DIMS = ("dp_replicate", "dp_shard", "sp", "tp")  # world = their product; ep borrows dp_shard * sp
MODEL_DIMS = ("tp", "sp", "ep")  # the dims that constrain the model's shapes
# the process groups of a layout, innermost first (the order `planc explain` shows them in)
AXES = ("tp", "sp", "dp_shard", "fsdp", "dp_replicate", "ep", "ep_fsdp")


@dataclass(frozen=True)
class Layout:
    dp_replicate: int = 1
    dp_shard: int = 1
    sp: int = 1
    tp: int = 1
    ep: int = 1

    @classmethod
    def from_degrees(cls, degrees: dict) -> "Layout":
        """From a {dim: degree} dict; unnamed dims are 1."""
        return cls(*(int(degrees.get(k, 1)) for k in DIMS))

    def degrees(self) -> dict[str, int]:
        return dict(zip(DIMS, astuple(self)))

    # --- sizes -----------------------------------------------------------------------------------

    @property
    def world(self) -> int:
        return math.prod(getattr(self, k) for k in WORLD_DIMS)

    @property
    def dp(self) -> int:
        """Data-parallel ranks: each reads its own rows (sp and tp ranks of one dp rank read the same)."""
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp(self) -> int:
        """The ranks FSDP2 shards parameters over: dp_shard * sp (Ulysses ranks shard them too)."""
        return self.dp_shard * self.sp

    @property
    def ep_fsdp(self) -> int:
        """The ranks that hold the same experts, which FSDP shards them over: fsdp / ep."""
        return self.fsdp // self.ep

    def size(self, axis: str) -> int:
        """The size of each group along `axis` (an entry of AXES, or "world")."""
        if axis not in AXES and axis != "world":
            raise KeyError(f"unknown mesh axis {axis!r}; known: {', '.join(AXES)}, world")
        return getattr(self, axis)

    def problem(self) -> str | None:
        """Why these degrees cannot form a mesh, or None."""
        bad = [k for k, v in self.degrees().items() if v < 1]
        if bad:
            return f"{bad[0]} must be >= 1"
        if self.fsdp % self.ep:
            return f"ep={self.ep} must divide dp_shard * sp = {self.fsdp}"
        return None

    # --- where each rank sits -------------------------------------------------------------------

    def coords(self, rank: int) -> dict[str, int]:
        """The rank's index along every axis."""
        t = rank % self.tp
        f = (rank // self.tp) % self.fsdp
        r = rank // (self.tp * self.fsdp)
        return {"dp_replicate": r, "fsdp": f, "dp_shard": f // self.sp, "sp": f % self.sp, "tp": t,
                "ep": f % self.ep, "ep_fsdp": f // self.ep}

    def rank(self, r: int = 0, f: int = 0, t: int = 0) -> int:
        return (r * self.fsdp + f) * self.tp + t

    def groups(self, axis: str) -> list[list[int]]:
        """The groups of ranks that talk along `axis` (each group in axis order), sorted."""
        out: dict[tuple, list[tuple[int, int]]] = {}
        for rank in range(self.world):
            c = self.coords(rank)
            key = tuple(v for k, v in sorted(c.items()) if k not in _COVERS[axis])
            out.setdefault(key, []).append((c[axis], rank))
        return sorted([[rank for _, rank in sorted(members)] for members in out.values()])

    def spans_nodes(self, axis: str, gpus_per_node: int) -> list[list[int]]:
        """Groups along `axis` whose ranks sit on more than one node."""
        return [g for g in self.groups(axis) if len({r // gpus_per_node for r in g}) > 1]

    # --- words -----------------------------------------------------------------------------------

    def describe(self, kinds) -> str:
        """'FSDP2 x TP=2': what runs in this layout for a plan whose parallelize rules are of `kinds`
        (FSDP2 or HSDP only where FSDP shards over more than one rank, DDP only with replicas)."""
        parts = []
        if "fsdp" in kinds and self.dp_replicate > 1:
            parts.append("HSDP")
        elif "fsdp" in kinds and self.fsdp > 1:
            parts.append("FSDP2")
        elif "replicate" in kinds and self.dp_replicate > 1:
            parts.append("DDP")
        parts += [f"{k.upper()}={getattr(self, k)}" for k in MODEL_DIMS if getattr(self, k) > 1]
        return " x ".join(parts) or "no parallelism"

    def text(self) -> str:
        """'dp_shard=2 tp=2': the degrees that are not 1 (dp_shard=1 for one process)."""
        return " ".join(f"{k}={v}" for k, v in self.degrees().items() if v != 1) or "dp_shard=1"

    @classmethod
    def parse(cls, text: str) -> "Layout":
        """'dp_shard=2,tp=2' (commas or spaces; unnamed dims are 1). ValueError says what is wrong."""
        d = {}
        for part in filter(None, re.split(r"[,\s]+", text.strip())):
            key, eq, value = part.partition("=")
            if not eq or key not in DIMS:
                raise ValueError(f"{text!r}: give degrees as DIM=N with DIM among {', '.join(DIMS)}")
            try:
                d[key] = int(value)
            except ValueError:
                raise ValueError(f"{text!r}: {key} must be an integer, got {value!r}") from None
            if d[key] < 1:
                raise ValueError(f"{text!r}: {key} must be >= 1")
        return cls.from_degrees(d)

    # --- smaller layouts -------------------------------------------------------------------------

    def sub_layouts(self):
        """Every layout whose degrees divide this one's and that forms a mesh (ep | dp_shard * sp)."""
        for combo in itertools.product(*(_divisors(v) for v in astuple(self))):
            d = Layout(*combo)
            if d.problem() is None:
                yield d

    def sub_layout(self, max_procs: int) -> "Layout | None":
        """This layout if it fits `max_procs` processes, else the preferred sub-layout that does
        (see `_preference`); None if nothing fits."""
        if self.world <= max_procs:
            return self
        fits = [d for d in self.sub_layouts() if d.world <= max_procs]
        return max(fits, key=self._preference, default=None)

    def _preference(self, d: "Layout") -> tuple:
        """Higher is better: keep every kind of model parallelism this layout has (tp, sp, ep), then
        its kinds of data parallelism (dp_shard, dp_replicate, the experts' own FSDP), then more
        ranks, then larger model-parallel degrees, then dp_shard before dp_replicate."""
        kept_model = sum(getattr(self, k) > 1 and getattr(d, k) > 1 for k in MODEL_DIMS)
        kept_dp = sum(getattr(self, k) > 1 and getattr(d, k) > 1 for k in ("dp_shard", "dp_replicate"))
        kept_dp += self.ep > 1 and self.ep_fsdp > 1 and d.ep_fsdp > 1
        return kept_model, kept_dp, d.world, math.prod(getattr(d, k) for k in MODEL_DIMS), d.dp_shard


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


# axes whose index varies inside one group of the key axis (the rest identify the group)
_COVERS = {
    "dp_replicate": {"dp_replicate"},
    "fsdp": {"fsdp", "dp_shard", "sp", "ep", "ep_fsdp"},
    "dp_shard": {"dp_shard", "fsdp", "ep", "ep_fsdp"},
    "sp": {"sp", "fsdp", "ep", "ep_fsdp"},
    "tp": {"tp"},
    "ep": {"ep", "fsdp", "dp_shard", "sp"},
    "ep_fsdp": {"ep_fsdp", "fsdp", "dp_shard", "sp"},
}
