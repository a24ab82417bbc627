"""The training data loader: one item per optimizer step, exact resume, same global batch at any dp.

    loader = build_loader(sources, tok, max_len=256, pack="greedy", micro_batch=2, grad_accum=4,
                          dp_rank=r, dp_size=n, seed=0)
    for micro_batches in loader:        # forever; the train loop counts steps
        for mb in micro_batches:        # grad_accum dicts {input_ids, labels, position_ids}
            ...
    sd = loader.state_dict(); loader.load_state_dict(sd)

Every rank always gets exactly grad_accum micro-batches per step (some may be empty: all padding,
no targets, at the end of an exact epoch), so collectives never hang. Normalise the loss by the
target count (labels != -100) summed over the step's micro-batches and all ranks.

Global batch. Each step is planned as `n_bins` bins (`batching.StepPlanner`), dealt out to ranks:
- `none` / `greedy`: a bin is a row of `max_len`; n_bins = micro_batch * grad_accum * dp_size
  = the plan's global_batch in rows; each micro-batch is (micro_batch, max_len).
- `dynamic { tokens }`: a bin is one micro-batch of at most `tokens` tokens, shape (1, L) with L
  its token count rounded up to `pad_to_multiple_of`. micro_batch must be 1, so global_batch
  counts token-budget micro-batches: n_bins = grad_accum * dp_size = global_batch, and a step
  carries at most global_batch * tokens tokens (budget ramped from max_len over warmup_steps).

Global mode (all sources map-style): every rank plans the same global step and takes the r-th
contiguous share of its bins; n_bins does not depend on dp_size, so one process with
grad_accum = G / micro_batch sees the same rows per step as n processes with
grad_accum = G / (micro_batch * n). Local mode (any streaming source): each rank reads its own
share of every source and plans its own grad_accum bins; the union over ranks then depends on
dp_size.

Resume. The loader is torchdata's StatefulDataLoader over a stateful sampler (`PlanSampler`) that
holds the planner: its state is the planner's state at the start of the current step plus the
micro-batches of that step already yielded. In global mode the state is the same on every rank
and does not depend on dp_size (resume on another number of ranks at a step boundary works); in
local mode each rank has its own state (save it per rank) and resumes on the same layout only.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from .bad_records import BadRecords, gather_tally
from .batching import StepPlanner
from .kinds import DocMaker, build_store, load_tokenizer, pad_id
from .mixture import MapOrder, Mixture
from .packing import collate_rows, round_up
from .sources import Source, read_records
from .streaming import StreamOrder

STATE_VERSION = 1


class PlanDataset(torch.utils.data.Dataset):
    """Collates a micro-batch plan (rows of (ids, labels) documents, row length) into tensors,
    with `collate(rows, length, pad)` (text rows by default; see runtime.data.multimodal)."""

    def __init__(self, pad: int, collate: Callable = collate_rows):
        self.pad, self.collate = pad, collate

    def __getitem__(self, key):
        rows, length = key
        return self.collate(rows, length, self.pad)

    def __len__(self):  # keys are plans, not indices; a length is meaningless here
        raise TypeError("PlanDataset is indexed by micro-batch plans")


class PlanSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batch plans, step after step, forever. Stateful (torchdata).

    In global mode (map-style sources) every rank plans the same global step and takes its
    contiguous share of the bins; in local mode (streaming sources) each rank plans its own bins."""

    def __init__(self, planner: StepPlanner, orders, dp_rank: int, dp_size: int, micro_batch: int,
                 grad_accum: int, row_length: Callable[[int], int], global_mode: bool = True):
        self.planner, self.orders = planner, orders
        self.dp_rank, self.dp_size, self.global_mode = dp_rank, dp_size, global_mode
        self.micro_batch, self.grad_accum, self.row_length = micro_batch, grad_accum, row_length
        self._start = planner.state_dict()  # planner state before the current step
        self._bins = None                    # the current step's bins, once planned
        self._k = 0                          # micro-batches of the current step yielded
        self.on_step: Callable[[], None] = lambda: None

    def _mine(self, bins):
        if not self.global_mode:
            return bins
        share = len(bins) // self.dp_size
        return bins[self.dp_rank * share:(self.dp_rank + 1) * share]

    def _micro(self, k):
        return self._mine(self._bins)[k * self.micro_batch:(k + 1) * self.micro_batch]

    def _fetch(self, rows):
        return [[self.orders[s].doc(d) for s, d in row] for row in rows]

    def __iter__(self):
        while True:
            if self._bins is None:
                self._start = self.planner.state_dict()
                self._bins = self.planner.next_step()
                self.on_step()
            while self._k < self.grad_accum:
                rows = self._fetch(self._micro(self._k))
                self._k += 1
                yield rows, self.row_length(sum(len(ids) for row in rows for ids, _ in row))
            self._bins, self._k = None, 0

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "planner": self.planner.state_dict() if self._bins is None else self._start,
            "micro": 0 if self._bins is None else self._k,
            "micro_per_step": self.grad_accum, "dp_size": self.dp_size,
            "mode": "global" if self.global_mode else f"local rank {self.dp_rank}",
        }

    def check_state(self, sd: dict) -> None:
        """Raise a clear error when a saved state cannot resume this sampler."""
        if sd.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {sd.get('version')} != {STATE_VERSION}")
        mode = "global" if self.global_mode else f"local rank {self.dp_rank}"
        if sd["mode"] != mode or (not self.global_mode and sd["dp_size"] != self.dp_size):
            raise ValueError(f"data state saved for {sd['mode']} of {sd['dp_size']} ranks cannot resume {mode} "
                             f"of {self.dp_size}: streaming sources resume on the same ranks only")
        if sd["dp_size"] != self.dp_size and 0 < int(sd["micro"]) < int(sd["micro_per_step"]):
            raise ValueError("the data state was saved in the middle of a step; it can only resume on the "
                             f"same number of data-parallel ranks ({sd['dp_size']}, not {self.dp_size})")

    def load_state_dict(self, sd: dict) -> None:
        self.check_state(sd)
        micro, total = int(sd["micro"]), int(sd["micro_per_step"])
        self.planner.load_state_dict(sd["planner"])
        self._start, self._bins, self._k = sd["planner"], None, 0
        if micro > 0:
            # Re-plan the step and skip what was already yielded (a whole step when the save came
            # after its last micro-batch); streaming documents are handed out once, so drop them.
            self._bins = self.planner.next_step()
            self._k = self.grad_accum if micro >= total else micro
            for k in range(self._k):
                self._fetch(self._micro(k))
            if self._k >= self.grad_accum:
                self._bins, self._k = None, 0


class StepLoader:
    """Iterate for lists of grad_accum micro-batches (one per optimizer step); stateful."""

    def __init__(self, dataloader: StatefulDataLoader, sampler: PlanSampler, grad_accum: int,
                 bad_records: BadRecords, log: Callable[[str], None], names: list[str]):
        self.dataloader, self.sampler, self.grad_accum = dataloader, sampler, grad_accum
        self.bad_records, self.log, self.names = bad_records, log, names
        self._it = None
        self._seen = self._epochs()
        sampler.on_step = self._after_plan

    def _epochs(self, planner_state=None):
        """Epochs completed per source. A single source ends its epoch when its last document has
        been batched (the planner's count); in a mixture, when the source has been read through."""
        planner = self.sampler.planner
        if planner_state is None:
            return [planner.epoch] if planner.mixture.exact_epochs else list(planner.mixture.epochs_ended)
        if planner.mixture.exact_epochs:
            return [int(planner_state["epoch"])]
        return [int(x) for x in planner_state["mixture"]["epochs_ended"]]

    def _after_plan(self):
        # End-of-epoch tally per source, printed once per epoch on rank 0 only.
        now = self._epochs()
        for i, (a, b) in enumerate(zip(self._seen, now)):
            if b > a:
                self.log(f"source {self.names[i]!r}: epoch {b} done at step {self.sampler.planner.step}; "
                         f"{self.bad_records.summary()}")
        self._seen = now

    def __iter__(self):
        while True:
            if self._it is None:
                self._it = iter(self.dataloader)
            yield [next(self._it) for _ in range(self.grad_accum)]

    @property
    def epoch(self) -> int:
        """Epochs completed (a single source; with a mixture, the first source's)."""
        return self._epochs()[0]

    @property
    def state_is_global(self) -> bool:
        """True when state_dict() is identical on every rank (map-style sources only); False with a
        streaming source: then each rank's state is its own and must be saved per rank."""
        return self.sampler.global_mode

    def tally(self, group=None) -> dict:
        """Bad records per source and reason over all ranks (a collective in local mode, where
        each rank counts its own share; in global mode every rank already counted everything)."""
        if self.sampler.global_mode:
            return self.bad_records.tally()
        return gather_tally(self.bad_records, group)

    @property
    def step(self) -> int:
        """Steps planned so far."""
        return self.sampler.planner.step

    def state_dict(self) -> dict:
        return self.dataloader.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.sampler.check_state(sd["_index_sampler_state"])  # fail now, not at the next step
        self.dataloader.load_state_dict(sd)  # applied to the sampler when iteration resumes
        self._it = None
        self._seen = self._epochs(sd["_index_sampler_state"]["planner"])


_STORE_CACHE: dict = {}  # per process: several loaders over one source tokenise it once


def _cached_store(source: Source, maker: DocMaker, rank: int, world: int, options: tuple):
    """The source's DocStore (this rank's share), tokenised once per process; its bad records are
    replayed into the maker's BadRecords (so `fail` raises and `skip` counts every time)."""
    try:
        stat = os.stat(source.path)
        key = (source, os.path.abspath(source.path), stat.st_mtime_ns, stat.st_size, id(maker.tok),
               rank, world, options)
    except OSError:
        key = None  # a glob: no cheap identity, do not cache
    if key is None or key not in _STORE_CACHE:
        bad, maker.bad = maker.bad, BadRecords("skip", report_first=0)
        try:
            store = build_store(read_records(source, rank, world), maker)
        finally:
            events, maker.bad = maker.bad, bad
        if key is not None:
            if len(_STORE_CACHE) >= 8:
                _STORE_CACHE.pop(next(iter(_STORE_CACHE)))
            _STORE_CACHE[key] = (store, events, maker.tok)  # tok kept alive so its id stays unique
    else:
        store, events, _ = _STORE_CACHE[key]
    for where, reason, detail in events.records:
        maker.bad.add(source.name, where, reason, detail)
    return store


def rank0_logger(dp_rank: int) -> Callable[[str], None]:
    if dp_rank != 0:
        return lambda msg: None
    return lambda msg: print(f"[data] {msg}", flush=True)


def build_loader(sources: Sequence[Source], tok, max_len: int, pack: str = "greedy", micro_batch: int = 1,
                 grad_accum: int = 1, dp_rank: int = 0, dp_size: int = 1, seed: int = 0, shuffle: bool = True,
                 tokens: int | None = None, warmup_steps: int = 0, on_bad_record: str = "skip",
                 chat_template: str = "tokenizer", system_prompt: str | None = None, truncation: str = "right",
                 shuffle_buffer: int = 10000, pad_to_multiple_of: int = 1, lookahead: float = 4.0,
                 log: Callable[[str], None] | None = None) -> StepLoader:
    """A StepLoader over `sources` (see the module docstring for shapes and the global batch).

    tokens / warmup_steps: dynamic batching budget and its ramp; chat_template ("tokenizer" or
    "chatml"), system_prompt, truncation ("right", "left", "drop"): sft sources; shuffle_buffer:
    streaming sources; pad_to_multiple_of: row length multiple (sequence-parallel degree)."""
    if not sources:
        raise ValueError("build_loader needs at least one source")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} out of range for dp_size {dp_size}")
    if micro_batch < 1 or grad_accum < 1 or pad_to_multiple_of < 1:
        raise ValueError(f"micro_batch, grad_accum and pad_to_multiple_of must be >= 1")
    check_batching(pack, max_len, micro_batch, tokens, warmup_steps)
    if isinstance(tok, (str, bytes)) or hasattr(tok, "__fspath__"):
        tok = load_tokenizer(tok)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    log = log or rank0_logger(dp_rank)
    bad = BadRecords(on_bad_record, log=log)
    # Global mode (every rank sees every document and plans the same global step) when all
    # sources are map-style; with any streaming source each rank reads and plans its own share.
    global_mode = not any(s.streaming for s in sources)
    rank, world = (0, 1) if global_mode else (dp_rank, dp_size)

    orders = []
    for i, s in enumerate(sources):
        maker = DocMaker(s, tok, max_len, bad, chat_template, system_prompt, truncation)
        if s.streaming:
            orders.append(StreamOrder(s, maker, seed, i, rank, world, shuffle_buffer, shuffle))
            log(f"source {s.name!r}: streaming {s.path} ({s.kind}), rank share {rank}/{world}")
            continue
        store = _cached_store(s, maker, rank, world, (s.kind, chat_template, system_prompt, truncation))
        if len(store) == 0:
            raise ValueError(f"source {s.name!r} ({s.path}) has no usable records; {bad.summary()}")
        log(f"source {s.name!r}: {len(store)} documents, {int(store.lengths().sum())} tokens, "
            f"{store.targets()} targets ({s.kind}; {bad.total(s.name)} bad records skipped)")
        orders.append(MapOrder(store, seed, i, shuffle))
    return loader_from_orders(orders, [s.weight for s in sources], pack=pack, max_len=max_len,
                              micro_batch=micro_batch, grad_accum=grad_accum, dp_rank=dp_rank, dp_size=dp_size,
                              tokens=tokens, warmup_steps=warmup_steps, pad=pad_id(tok),
                              pad_to_multiple_of=pad_to_multiple_of, lookahead=lookahead, global_mode=global_mode,
                              bad=bad, log=log, names=names)


def check_batching(pack, max_len, micro_batch, tokens, warmup_steps) -> None:
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    if pack != "dynamic" and (tokens is not None or warmup_steps):
        raise ValueError(f"`tokens` and `warmup_steps` belong to pack = dynamic, not pack = {pack}")
    if pack == "dynamic" and micro_batch != 1:
        raise ValueError("with pack = dynamic a micro-batch is one row of up to `tokens` tokens: micro_batch must be 1")


def loader_from_orders(orders, weights, *, pack, max_len, micro_batch, grad_accum, dp_rank=0, dp_size=1,
                       tokens=None, warmup_steps=0, pad=0, pad_to_multiple_of=1, lookahead=4.0,
                       global_mode=True, bad=None, log=None, names=None, collate=collate_rows,
                       budgets=()) -> StepLoader:
    """The loader over ready document streams (MapOrder / StreamOrder); build_loader's second half.
    `collate(rows, length, pad)` makes a micro-batch; `budgets`: per-bin limits on the documents'
    costs (each stream's `costs(doc)`, one per budget: vision patches, audio frames; None: no limit)."""
    check_batching(pack, max_len, micro_batch, tokens, warmup_steps)
    log = log or (lambda msg: None)
    mixture = Mixture(orders, weights, exact_epochs=len(orders) == 1)
    rows = micro_batch if pack != "dynamic" else 1
    n_bins = rows * grad_accum * (dp_size if global_mode else 1)
    planner = StepPlanner(mixture, pack, n_bins, max_len, tokens=tokens, warmup_steps=warmup_steps,
                          lookahead=lookahead, budgets=budgets)
    fixed = round_up(max_len, pad_to_multiple_of)

    def row_length(n_tokens: int) -> int:
        if pack != "dynamic":
            return fixed
        return round_up(max(n_tokens, 1), pad_to_multiple_of)  # an empty micro-batch still has a row

    sampler = PlanSampler(planner, orders, dp_rank, dp_size, rows, grad_accum, row_length, global_mode)
    with warnings.catch_warnings():  # torchdata 0.11 calls a deprecated torch.set_vital on every rank
        warnings.filterwarnings("ignore", message=".*set_vital.*")
        dataloader = StatefulDataLoader(PlanDataset(pad, collate), batch_size=None, sampler=sampler, num_workers=0)
    return StepLoader(dataloader, sampler, grad_accum, bad or BadRecords(), log,
                      names or [f"source{i}" for i in range(len(orders))])
