"""Which global rank sits where on a plan's mesh, without torch.

The order is runtime/dist.py's: one DeviceMesh ``(dp_replicate, fsdp, tp)`` with tp innermost,
where ``fsdp = dp_shard * sp`` splits as ``(dp_shard, sp)`` (sp inner), and expert parallelism
splits the same fsdp dim as ``(ep_fsdp, ep)`` (ep inner; runtime/parallel/mesh_ep.py). So

    rank = (r * dp_shard * sp + f) * tp + t,   f = d * sp + s = e_f * ep + e

`tests/test_dryrun.py` checks these groups against the DeviceMesh the runtime really builds.
"""
from __future__ import annotations

from dataclasses import dataclass

AXES = ("dp_replicate", "fsdp", "dp_shard", "sp", "tp", "ep", "ep_fsdp")


@dataclass(frozen=True)
class Layout:
    dp_replicate: int = 1
    dp_shard: int = 1
    sp: int = 1
    tp: int = 1
    ep: int = 1

    @classmethod
    def from_degrees(cls, degrees: dict) -> "Layout":
        return cls(*(int(degrees.get(k, 1)) for k in ("dp_replicate", "dp_shard", "sp", "tp", "ep")))

    @property
    def world(self) -> int:
        return self.dp_replicate * self.dp_shard * self.sp * self.tp

    def size(self, axis: str) -> int:
        fsdp = self.dp_shard * self.sp
        return {"dp_replicate": self.dp_replicate, "fsdp": fsdp, "dp_shard": self.dp_shard, "sp": self.sp,
                "tp": self.tp, "ep": self.ep, "ep_fsdp": fsdp // self.ep, "world": self.world}[axis]

    def coords(self, rank: int) -> dict[str, int]:
        """The rank's index along every axis."""
        t = rank % self.tp
        f = (rank // self.tp) % (self.dp_shard * self.sp)
        r = rank // (self.tp * self.dp_shard * self.sp)
        return {"dp_replicate": r, "fsdp": f, "dp_shard": f // self.sp, "sp": f % self.sp, "tp": t,
                "ep": f % self.ep, "ep_fsdp": f // self.ep}

    def rank(self, r: int = 0, f: int = 0, t: int = 0) -> int:
        return (r * self.dp_shard * self.sp + f) * self.tp + t

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
