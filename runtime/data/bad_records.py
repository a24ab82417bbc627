"""Bad records: counted per source and reason, the first few reported with where they came from.

Policy `skip` (default) drops the record and counts it; `fail` raises at the first one. Either way
nothing disappears silently: `tally()` gives the counts, `summary()` the end-of-epoch line.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

from ..vocab import BAD_RECORD_POLICIES


class BadRecordError(ValueError):
    """A bad record under `on_bad_record = fail`."""


class BadRecords:
    def __init__(self, policy: str = "skip", report_first: int = 5, log: Callable[[str], None] | None = None):
        if policy not in BAD_RECORD_POLICIES:
            raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {policy!r}")
        self.policy = policy
        self.report_first = report_first
        self.log = log or (lambda msg: None)
        self.counts: Counter[tuple[str, str]] = Counter()  # (source, reason) -> count
        self.examples: list[str] = []
        self.records: list[tuple[str, str, str]] = []  # (where, reason, detail) of every skip

    def add(self, source: str, where: str, reason: str, detail: str = "") -> None:
        """Record one bad record; raises BadRecordError under the `fail` policy."""
        message = f"bad record in source {source!r} at {where}: {reason}" + (f" ({detail})" if detail else "")
        if self.policy == "fail":
            raise BadRecordError(message + "  [on_bad_record = fail]")
        self.counts[(source, reason)] += 1
        self.records.append((where, reason, detail))
        if len(self.examples) < self.report_first:
            self.examples.append(message)
            self.log("skipped " + message)

    def state(self, source: str) -> list[list]:
        """[[reason, count], ...] of one source: what a per-rank loader state carries across a resume."""
        return [[reason, n] for (s, reason), n in sorted(self.counts.items()) if s == source]

    def restore(self, source: str, state: list[list]) -> None:
        """Set one source's counts back to what `state` saved (examples are not kept)."""
        for reason, n in state:
            self.counts[(source, reason)] = int(n)

    def total(self, source: str | None = None) -> int:
        return sum(n for (s, _), n in self.counts.items() if source is None or s == source)

    def tally(self) -> dict[str, dict[str, int]]:
        """{source: {reason: count}}."""
        out: dict[str, dict[str, int]] = {}
        for (source, reason), n in sorted(self.counts.items()):
            out.setdefault(source, {})[reason] = n
        return out

    def summary(self) -> str:
        if not self.counts:
            return "bad records: none"
        parts = [f"{s}: " + ", ".join(f"{r} x{n}" for r, n in reasons.items()) for s, reasons in self.tally().items()]
        return f"bad records skipped ({self.total()}): " + "; ".join(parts)


def gather_tally(bad: BadRecords, group=None) -> dict[str, dict[str, int]]:
    """The tally summed over the ranks of `group` (a collective: call it on every rank).

    Needed with streaming sources, where each rank reads and counts its own share of records; with
    map-style sources every rank reads everything and the local tally is already the total."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return bad.tally()
    tallies = [None] * dist.get_world_size(group)
    dist.all_gather_object(tallies, bad.tally(), group=group)
    total: dict[str, dict[str, int]] = {}
    for t in tallies:
        for source, reasons in t.items():
            for reason, n in reasons.items():
                total.setdefault(source, {}).setdefault(reason, 0)
                total[source][reason] += n
    return total
