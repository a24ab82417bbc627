"""Checks before launch for vision-language sources (for `planc check`): the first few records of
each source are read, their media opened and their conversations rendered, exactly as training
will; a source none of whose first records is usable is reported with the first reason and place."""
from __future__ import annotations

import itertools
import os
from typing import Sequence

from ..bad_records import BadRecords
from ..sources import Source, read_records
from .docs import VLDocMaker


def check_vl_sources(sources: Sequence[Source], processor, max_len: int, first: int = 5) -> list[str]:
    """Problems found: a source with no usable record among its first `first`, and each bad record
    among them (with its file and line)."""
    errors = []
    for s in sources:
        where = f"source {s.name!r} ({s.path})"
        if s.kind != "sft" or s.streaming:
            errors.append(f"{where}: vision-language data must be a map-style sft source (kind = sft, not streaming)")
            continue
        if not os.path.exists(s.path) and not any(ch in s.path for ch in "*?["):
            errors.append(f"{where}: path does not exist")
            continue
        try:
            head = list(itertools.islice(read_records(s), first))
        except Exception as e:  # unreadable: say what the reader said
            errors.append(f"{where}: cannot read: {type(e).__name__}: {e}")
            continue
        if not head:
            errors.append(f"{where}: no records")
            continue
        bad = BadRecords()
        maker = VLDocMaker(s, processor, max_len, bad)
        usable = [maker.make(r) is not None for r in head]
        if not any(usable):
            at, reason, detail = bad.records[0]
            errors.append(f"{where}: no usable conversation in the first {len(head)} records "
                          f"(first: {at}: {reason}{f' ({detail})' if detail else ''})")
            continue
        # the others still train; each bad one is named (training skips it, or stops on on_bad_record = fail)
        errors.extend(f"{where}: bad record at {at}: {reason}{f' ({detail})' if detail else ''}"
                      for at, reason, detail in bad.records)
    return errors
