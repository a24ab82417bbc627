"""Streaming sources: read lazily, split over ranks, shuffled through a buffer, resumable exactly.

Each data-parallel rank reads the records with `index % world == rank` (every rank scans the file
and keeps its share, as HF's `split_dataset_by_node` does for unsharded files; JSON Lines are
parsed only for the rank's own lines), holds up to `buffer_size` raw records, and emits a seeded
random one each time, replacing it with the next record read. Emitted records are checked and
tokenised in small blocks.

The shuffle depends only on the seeded generator and the number of records, never on their
content, so the state is small: records read, the indices of the records held in the buffer or
waiting as documents, and the generator state. Resuming re-reads (but does not re-tokenise) the
rank's share up to the saved position to refill the buffer; the rank's bad-record counts for the
source travel with the state, so the epoch's tally is whole after a resume. A document id packs
(epoch, record index, chunk) into one int.
"""
from __future__ import annotations

import itertools

import numpy as np

from .bad_records import BadRecords
from .sources import read_records

_REC, _CHUNK = 1 << 40, 1 << 16   # doc id = (epoch * _REC + record) * _CHUNK + chunk


def doc_id(epoch: int, record: int, chunk: int) -> int:
    return (epoch * _REC + record) * _CHUNK + chunk


def split_doc_id(d: int) -> tuple[int, int, int]:
    rest, chunk = divmod(d, _CHUNK)
    epoch, record = divmod(rest, _REC)
    return epoch, record, chunk


class StreamOrder:
    """Document stream of one streaming source on one rank (same interface as MapOrder)."""

    def __init__(self, source, maker, seed: int, source_index: int, rank: int = 0, world: int = 1,
                 buffer_size: int = 10000, shuffle: bool = True, block: int = 8):
        self.source, self.maker = source, maker
        self.seed, self.source_index, self.rank, self.world = seed, source_index, rank, world
        self.buffer_size = max(1, buffer_size if shuffle else 1)
        self.block = block
        self.docs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # made, not yet handed to a batch
        self._start_epoch(0)

    def _start_epoch(self, epoch: int, consumed: int = 0) -> None:
        self.epoch, self.consumed = epoch, consumed
        self.rng = np.random.default_rng([self.seed, self.source_index, self.rank, epoch])
        self.reader = itertools.islice(read_records(self.source, self.rank, self.world), consumed, None)
        self.buffer: list = []
        self.pending: list[int] = []  # doc ids made and waiting to be handed out, in order
        self.exhausted = False

    def _read(self):
        if self.exhausted:
            return None
        rec = next(self.reader, None)
        if rec is None:
            self.exhausted = True
        else:
            self.consumed += 1
        return rec

    def _draw(self):
        """One record out of the shuffle buffer (None when the epoch's records are all out)."""
        while len(self.buffer) < self.buffer_size and not self.exhausted:
            rec = self._read()
            if rec is not None:
                self.buffer.append(rec)
        if not self.buffer:
            return None
        j = int(self.rng.integers(len(self.buffer)))
        rec = self.buffer[j]
        nxt = self._read()
        if nxt is not None:
            self.buffer[j] = nxt
        else:
            self.buffer[j] = self.buffer[-1]
            self.buffer.pop()
        return rec

    def _make(self, records) -> list[int]:
        made = []
        for rec, docs in self.maker.make(records):
            for c, doc in enumerate(docs):
                d = doc_id(self.epoch, rec.index, c)
                self.docs[d] = doc
                made.append(d)
        return made

    def next(self):
        while not self.pending:
            records = [r for r in (self._draw() for _ in range(self.block)) if r is not None]
            if not records:
                self._start_epoch(self.epoch + 1)
                return None
            self.pending = self._make(records)
        d = self.pending.pop(0)
        return d, len(self.docs[d][0])

    def at_end(self) -> bool:
        """True when the next call to `next()` returns the end-of-epoch None."""
        return self.exhausted and not self.buffer and not self.pending

    def doc(self, d: int):
        return self.docs.pop(d)  # each document is batched exactly once

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "exhausted": self.exhausted,
                "buffer": [r.index for r in self.buffer], "pending": list(self.pending),
                "rng": self.rng.bit_generator.state,
                # this rank's bad-record counts for the source, so the end-of-epoch tally survives a resume
                "bad": self.maker.bad.state(self.source.name)}

    def load_state_dict(self, sd: dict, needed_docs=()) -> None:
        """Restore, re-making the documents in `needed_docs` (those the batcher still holds)."""
        self._start_epoch(int(sd["epoch"]), int(sd["consumed"]))
        self.exhausted = bool(sd["exhausted"])
        self.rng.bit_generator.state = sd["rng"]
        self.docs.clear()
        want_docs = set(sd["pending"]) | set(needed_docs)
        want = set(sd["buffer"]) | {split_doc_id(d)[1] for d in want_docs}
        found = {}
        if want:  # one pass over this rank's share up to the last record needed
            last = max(want)
            for rec in read_records(self.source, self.rank, self.world):
                if rec.index in want:
                    found[rec.index] = rec
                if rec.index >= last:
                    break
        missing = want - set(found)
        if missing:
            raise ValueError(f"source {self.source.name!r} changed since the checkpoint: records "
                             f"{sorted(missing)[:5]} are gone")
        self.buffer = [found[i] for i in sd["buffer"]]
        # Re-make the documents of the records still in flight, with their original epochs.
        by_epoch: dict[int, set[int]] = {}
        for d in want_docs:
            e, r, _ = split_doc_id(d)
            by_epoch.setdefault(e, set()).add(r)
        loud, self.maker.bad = self.maker.bad, BadRecords("skip")  # these were counted before the save
        try:
            for e, recs in by_epoch.items():
                for rec, docs in self.maker.make([found[r] for r in sorted(recs)]):
                    for c, doc in enumerate(docs):
                        if doc_id(e, rec.index, c) in want_docs:
                            self.docs[doc_id(e, rec.index, c)] = doc
        finally:
            self.maker.bad = loud
        self.pending = [int(d) for d in sd["pending"]]
        # "bad" is absent in checkpoints written before the counts were kept
        self.maker.bad.restore(self.source.name, sd.get("bad", []))
