"""Validation: a fixed set of held-out batches, and its loss over all ranks.

    val_loader = validation.build_val_loader(val_sources, tokenizer, batches=cfg.validation.batches,
                                             max_len=..., pack=..., micro_batch=..., grad_accum=grad_accum,
                                             dp_rank=mesh.dp_rank, dp_size=mesh.dp_size)
    ...
    model.eval()
    totals = validation.ValTotals(info.device)
    with torch.no_grad():
        for micro_batches in val_loader:               # the same batches at every validation
            for batch in micro_batches:
                batch = {k: v.to(info.device) for k, v in batch.items()}
                out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
                totals.add(loss.cross_entropy_sum(out.logits, batch["labels"]), batch["labels"])
    log.validation(step, **totals.result(mesh.loss_group))
    model.train()

The loader is the training loader (runtime.data.build_loader: same formats, kinds, packing and
micro-batch shapes) with shuffling off, a fixed seed and the data-parallel split of its global
mode: every layout (any dp x sp x tp x ep) sees the same global validation batches, so the
validation loss of a layout equals one process's. It yields `batches` steps' worth of micro-batches
(a step = what one training step reads: global_batch rows, or global_batch token-budget
micro-batches with pack = dynamic), or one whole pass over a single source with `batches=None`,
and starts again from the first batch at every pass. Every rank always gets the same number of
micro-batches (some may be all padding at the end of the set), so collectives never hang.

The loss is normalised by the GLOBAL target-token count: the summed token losses of every
micro-batch on every dp x sp rank over the number of targets in all of them (one all-reduce);
perplexity is exp of it. Under Ulysses each sp rank holds a slice of every row (slice it as in
training) and counts its slice's targets; under TP the loss-parallel sum is replicated on the tp
ranks, which the loss group (dp x sp) does not include.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Sequence

import torch
import torch.distributed as dist

from runtime.data import Source, build_loader
from runtime.data.epochs import steps_per_epoch
from runtime.loss import IGNORE, local_value

__all__ = ["ValLoader", "ValTotals", "build_val_loader", "VAL_SEED"]

VAL_SEED = 0  # with shuffling off the order ignores it; fixed so the set never depends on train.seed


class ValLoader:
    """Iterate for `batches` lists of micro-batches (one list per validation step), the same ones
    at every pass. Built by `build_val_loader`."""

    def __init__(self, step_loader, batches: int | None):
        self.sampler = step_loader.sampler
        self.collate = step_loader.dataloader.dataset  # PlanDataset: a plan -> tensors
        self.grad_accum = step_loader.grad_accum
        self._start = copy.deepcopy(self.sampler.state_dict())
        if batches is None:
            if len(self.sampler.orders) != 1:
                raise ValueError("validation over a mixture of sources needs a number of batches "
                                 "(a whole pass is defined for a single source)")
            batches = steps_per_epoch(self.sampler.planner)
        if batches < 1:
            raise ValueError(f"validation needs at least one batch, got {batches}")
        self.batches = batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        self.sampler.load_state_dict(copy.deepcopy(self._start))
        plans = iter(self.sampler)
        for _ in range(self.batches):
            yield [self.collate[next(plans)] for _ in range(self.grad_accum)]


def build_val_loader(sources: Sequence[Source], tok, *, batches: int | None, max_len: int, pack: str = "greedy",
                     micro_batch: int = 1, grad_accum: int = 1, dp_rank: int = 0, dp_size: int = 1,
                     **loader_options) -> ValLoader:
    """The validation loader over `sources` (map-style only). `loader_options` are build_loader's
    other keywords (tokens, chat_template, pad_to_multiple_of, on_bad_record, ...), as for training;
    `seed` and `shuffle` are fixed here."""
    streaming = [s.name for s in sources if s.streaming]
    if streaming:
        raise ValueError(f"validation sources must be map-style; {', '.join(streaming)} streaming: a "
                         "streaming source is split by rank, so its validation set would change with the layout")
    for fixed in ("seed", "shuffle", "warmup_steps"):
        if fixed in loader_options:
            raise TypeError(f"build_val_loader fixes {fixed!r}: the validation set must not depend on it")
    log = loader_options.pop("log", None) or (lambda msg: None)
    loader = build_loader(sources, tok, max_len=max_len, pack=pack, micro_batch=micro_batch,
                          grad_accum=grad_accum, dp_rank=dp_rank, dp_size=dp_size, seed=VAL_SEED,
                          shuffle=False, log=log, **loader_options)
    return ValLoader(loader, batches)


class ValTotals:
    """Sums of one validation pass on this rank: token losses (float64) and target tokens."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, target tokens]
        self.started = time.perf_counter()

    def add(self, micro_loss: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one micro-batch: its summed token loss and its (already shifted) labels."""
        self.sums[0] += local_value(micro_loss).to(self.sums)
        self.sums[1] += (labels != IGNORE).sum().to(self.sums)

    def result(self, group: dist.ProcessGroup | None = None) -> dict:
        """{val_loss, val_ppl, val_tokens, val_time}: loss, perplexity and tokens over all ranks of
        `group` (the dp x sp loss group), the same on every rank; val_time is this rank's seconds
        since the totals were made. Raises when the whole set has no target token."""
        total = self.sums.clone()
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(total, group=group)
        loss_sum, tokens = (float(x) for x in total.cpu())
        if tokens == 0:
            raise RuntimeError("the validation batches hold no target tokens on any rank")
        val_loss = loss_sum / tokens
        return {"val_loss": val_loss, "val_ppl": math.exp(val_loss) if val_loss < 700 else math.inf,
                "val_tokens": int(tokens), "val_time": time.perf_counter() - self.started}
