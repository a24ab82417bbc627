"""Step planning: which documents go into which bin (row or micro-batch) of each optimizer step.

Every step has the same number of bins, decided in one place and then dealt out to ranks, so all
data-parallel ranks always run the same number of micro-batches (collectives never hang):

- `none`: one document per row of `max_len`, padded.
- `greedy`: rows of `max_len` tokens filled with whole documents (best fit).
- `dynamic`: bins of a token budget (`tokens`, optionally ramped up from `max_len` over
  `warmup_steps`), each one micro-batch of shape (1, <= budget).

With `budgets` (vision-language data: vision patches, audio frames), every bin also holds at most
that much of each of its documents' costs (`streams[...].costs(doc)`, one per budget; None: no limit).

Documents are drawn into a look-ahead window (`lookahead` x the step's capacity in tokens) and
placed longest-first into the fullest bin with room; what fits nowhere waits for the next step
(documents that have waited twice go first). With `exact_epochs`, the end of the source's epoch is
a hard boundary: the window is drained, the last step(s) of the epoch may hold empty bins (all
padding, no targets), and the next epoch starts on a fresh step. So over one epoch every document
is delivered exactly once.
"""
from __future__ import annotations

from typing import Sequence

from ..vocab import PACKS
from .packing import fit_bins, fit_bins_nd


class StepPlanner:
    def __init__(self, mixture, pack: str, n_bins: int, max_len: int, tokens: int | None = None,
                 warmup_steps: int = 0, lookahead: float = 4.0, budgets: Sequence[int | None] = ()):
        if pack not in PACKS:
            raise ValueError(f"pack must be one of {PACKS}, got {pack!r}")
        if n_bins < 1:
            raise ValueError(f"a step needs at least one bin, got {n_bins}")
        if pack == "dynamic":
            if tokens is None or tokens < max_len:
                raise ValueError(f"dynamic batching needs a token budget >= max_len ({max_len}), got {tokens}")
        self.mixture, self.pack, self.n_bins, self.max_len = mixture, pack, n_bins, max_len
        self.tokens, self.warmup_steps, self.lookahead = tokens, warmup_steps, lookahead
        # More budgets per bin (vision patches, audio frames): each stream then has `costs(doc)`,
        # one cost per budget; the budgets that limit anything are the ones fitted.
        self.budgets = tuple(budgets)
        self.limited = [j for j, b in enumerate(self.budgets) if b is not None]
        self.step = 0           # steps planned so far
        self.epoch = 0          # epochs completed (exact_epochs only)
        self.draining = False   # the current epoch's documents are all in the window
        self.window: list[list[int]] = []  # [source, doc, length, age] in arrival order
        self.docs_this_epoch = 0

    def capacity(self, step: int) -> int:
        """Tokens per bin at a step."""
        if self.pack != "dynamic":
            return self.max_len
        if self.warmup_steps <= 0 or step >= self.warmup_steps:
            return self.tokens
        return self.max_len + (self.tokens - self.max_len) * step // self.warmup_steps

    def _wants_more(self, capacity: int) -> bool:
        if self.pack == "none":
            return len(self.window) < self.n_bins
        return self._window_tokens < self.lookahead * self.n_bins * capacity

    def _refill(self, capacity: int) -> None:
        self._window_tokens = sum(e[2] for e in self.window)
        while not self.draining and self._wants_more(capacity):
            item = self.mixture.next()
            if item is None:
                self.draining = True
                break
            self.window.append([item[0], item[1], item[2], 0])
            self._window_tokens += item[2]
            self.docs_this_epoch += 1
        if self.draining and not self.window:
            self._end_epoch()
            self._refill(capacity)

    def _end_epoch(self) -> None:
        if self.docs_this_epoch == 0:
            raise ValueError("the data source has no usable documents")
        self.epoch += 1
        self.draining = False
        self.docs_this_epoch = 0

    def next_step(self) -> list[list[tuple[int, int]]]:
        """The bins of the next step: n_bins lists of (source, doc) (some maybe empty)."""
        capacity = self.capacity(self.step)
        self._refill(capacity)
        if self.pack == "none":
            taken, self.window = self.window[:self.n_bins], self.window[self.n_bins:]
            bins = [[(e[0], e[1])] for e in taken] + [[] for _ in range(self.n_bins - len(taken))]
        else:
            order = sorted(range(len(self.window)),
                           key=lambda k: (self.window[k][3] < 2, -self.window[k][2], k))
            lengths = [self.window[k][2] for k in order]
            if not self.limited:
                placed, left = fit_bins(lengths, self.n_bins, capacity, worst=self.pack == "dynamic")
            else:
                costs = [self._costs(*self.window[k][:2]) for k in order]
                placed, left = fit_bins_nd(lengths, costs, self.n_bins, capacity,
                                           [self.budgets[j] for j in self.limited], worst=self.pack == "dynamic")
            bins = [[(self.window[order[p]][0], self.window[order[p]][1]) for p in b] for b in placed]
            kept = sorted(order[p] for p in left)
            self.window = [[*self.window[k][:3], self.window[k][3] + 1] for k in kept]
        self.step += 1
        if not self.window and not self.draining and self.mixture.at_epoch_end():
            self.draining = self.mixture.next() is None  # consume the end-of-epoch marker
        if self.draining and not self.window:
            self._end_epoch()  # this step delivered the epoch's last documents
        return bins

    def _costs(self, source: int, doc: int) -> list[int]:
        costs = self.mixture.streams[source].costs(doc)
        if len(costs) != len(self.budgets):
            raise ValueError(f"a document has {len(costs)} costs for {len(self.budgets)} budgets")
        return [int(costs[j]) for j in self.limited]

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "draining": self.draining,
                "docs_this_epoch": self.docs_this_epoch,
                "window": [list(e) for e in self.window], "mixture": self.mixture.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.step, self.epoch = int(sd["step"]), int(sd["epoch"])
        self.draining, self.docs_this_epoch = bool(sd["draining"]), int(sd["docs_this_epoch"])
        self.window = [[int(x) for x in e] for e in sd["window"]]
        needed: dict[int, list[int]] = {}
        for src, doc, _, _ in self.window:
            needed.setdefault(src, []).append(doc)
        self.mixture.load_state_dict(sd["mixture"], needed)
