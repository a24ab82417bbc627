"""Document order within a source, and the weighted interleaving of several sources.

A map-style source visits its documents in a seeded permutation per epoch. A mixture draws the next
document from the source with the fewest tokens drawn per unit of weight (weights are shares of
tokens, not of documents). This is deterministic and needs no random state. Each pick moves a
source's tokens-per-weight by at most max_len / share, so all sources stay within that of each
other, which bounds every source's deviation from its exact share at every point:
|tokens_i - share_i * tokens_total| <= max_len / min(shares)   (share_i = w_i / sum(w)).
"""
from __future__ import annotations

import numpy as np


class MapOrder:
    """Seeded per-epoch order over the documents of a map-style source (a DocStore).

    `next()` returns (doc_id, length), or None once at the end of each epoch; the call after that
    starts the next epoch."""

    def __init__(self, store, seed: int, source_index: int, shuffle: bool = True):
        self.store, self.lengths = store, store.lengths()
        self.seed, self.source_index, self.shuffle = seed, source_index, shuffle
        self.epoch, self.pos = 0, 0
        self._order_epoch, self._order = None, None

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = len(self.lengths)
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.source_index, epoch]).permutation(n)
            else:
                order = np.arange(n)
            self._order, self._order_epoch = order, epoch
        return self._order

    def next(self):
        order = self.order(self.epoch)
        if self.pos >= len(order):
            self.epoch, self.pos = self.epoch + 1, 0
            return None
        doc = int(order[self.pos])
        self.pos += 1
        return doc, int(self.lengths[doc])

    def doc(self, d: int):
        return self.store.ids[d], self.store.labels[d]

    def at_end(self) -> bool:
        """True when the next call to `next()` returns the end-of-epoch None."""
        return self.pos >= len(self.order(self.epoch))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, sd: dict, needed_docs=()) -> None:
        self.epoch, self.pos = int(sd["epoch"]), int(sd["pos"])


class Mixture:
    """Weighted interleaving of document streams by tokens drawn.

    `next()` returns (source_index, doc_id, length). With `exact_epochs` (a single source) it
    returns None at the source's epoch end, so the batcher can finish the epoch cleanly; otherwise
    epochs of each source roll over on their own."""

    def __init__(self, streams: list, weights: list[float], exact_epochs: bool = False):
        if len(streams) != len(weights) or not streams:
            raise ValueError("a mixture needs one weight per source and at least one source")
        if exact_epochs and len(streams) != 1:
            raise ValueError("exact epochs are defined for a single source only")
        self.streams, self.exact_epochs = streams, exact_epochs
        total = float(sum(weights))
        self.shares = [w / total for w in weights]
        self.drawn = [0] * len(streams)  # tokens drawn per source
        self.epochs_ended = [0] * len(streams)

    def next(self):
        i = min(range(len(self.streams)), key=lambda k: (self.drawn[k] / self.shares[k], k))
        item = self.streams[i].next()
        if item is None:
            self.epochs_ended[i] += 1
            if self.exact_epochs:
                return None
            item = self.streams[i].next()
            if item is None:
                raise ValueError(f"source {i} yields no documents")
        doc, length = item
        self.drawn[i] += length
        return i, doc, length

    def at_epoch_end(self) -> bool:
        """With exact epochs: the single source has no documents left in this epoch."""
        return self.exact_epochs and self.streams[0].at_end()

    def state_dict(self) -> dict:
        return {"drawn": list(self.drawn), "epochs_ended": list(self.epochs_ended),
                "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, sd: dict, needed_docs: dict[int, list[int]] | None = None) -> None:
        """Restore; `needed_docs[i]` are source i's documents still held by the batcher."""
        if len(sd["streams"]) != len(self.streams):
            raise ValueError(f"data state has {len(sd['streams'])} sources, the plan has {len(self.streams)}")
        self.drawn = [int(x) for x in sd["drawn"]]
        self.epochs_ended = [int(x) for x in sd["epochs_ended"]]
        for i, (s, st) in enumerate(zip(self.streams, sd["streams"])):
            s.load_state_dict(st, (needed_docs or {}).get(i, ()))
