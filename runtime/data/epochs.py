"""Steps from epochs: how many optimizer steps `epochs` passes over the data take.

The count is exact, not estimated: it runs the loader's own step planner (document lengths only;
no token is read or collated) with the plan's packing, global batch and seed, until the epochs are
done. It needs map-style sources (their size is known; a streaming source has no length to count).

What a step holds, by packing (runtime/data/batching.py):
- `none`: global_batch documents, one per row of max_len (padded);
- `greedy`: global_batch rows of max_len, filled with whole documents;
- `dynamic { tokens }`: global_batch micro-batches of at most `tokens` tokens each, so a step holds
  at most global_batch x tokens tokens (budget ramped up from max_len over `warmup_steps`): a lower
  bound of ceil(epoch tokens / (global_batch x tokens)) steps per epoch, which the plan reaches
  only when every micro-batch is full.

An epoch of a single source ends on a step boundary (its last steps may be partly empty), so every
document is seen once per epoch. In a mixture, epochs are those of the FIRST source (the others
roll over on their own, at their weights), as `StepLoader.epoch` counts them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .sources import Source

__all__ = ["EpochPlan", "steps_per_epoch", "epoch_steps", "format_epochs"]


def _epochs_done(planner) -> int:
    return planner.epoch if planner.mixture.exact_epochs else planner.mixture.epochs_ended[0]


def steps_per_epoch(planner, epochs: int = 1) -> int:
    """Steps the planner takes from its current state to finish `epochs` more epochs (of a single
    source; of the first source in a mixture). The planner's state is restored afterwards."""
    state = planner.state_dict()
    try:
        target = _epochs_done(planner) + epochs
        steps = 0
        while _epochs_done(planner) < target:
            planner.next_step()
            steps += 1
        return steps
    finally:
        planner.load_state_dict(state)


@dataclass
class EpochPlan:
    epochs: int
    steps: int                      # total steps for all epochs
    per_epoch: list[int]            # steps of each epoch
    documents: int                  # documents (after splitting at max_len) of the counted source
    tokens: int                     # tokens of one epoch of the counted source
    step_capacity: int              # most tokens one step can hold
    pack: str
    sources: list[str] = field(default_factory=list)


def epoch_steps(sources: Sequence[Source], tok, *, epochs: int, max_len: int, pack: str, global_batch: int,
                micro_batch: int = 1, tokens: int | None = None, warmup_steps: int = 0, seed: int = 0,
                shuffle: bool = True, **loader_options) -> EpochPlan:
    """The steps of `epochs` epochs of the plan's data (one process: the global step does not
    depend on the number of ranks in the loader's global mode)."""
    from .loader import build_loader

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    streaming = [s.name for s in sources if s.streaming]
    if streaming:
        raise ValueError(f"epochs need map-style sources (a known size); {', '.join(streaming)} "
                         "streaming: give train.steps instead")
    if global_batch % micro_batch:
        raise ValueError(f"global_batch ({global_batch}) must be a multiple of micro_batch ({micro_batch})")
    loader = build_loader(sources, tok, max_len=max_len, pack=pack, micro_batch=micro_batch,
                          grad_accum=global_batch // micro_batch, seed=seed, shuffle=shuffle, tokens=tokens,
                          warmup_steps=warmup_steps, log=lambda msg: None, **loader_options)
    planner = loader.sampler.planner
    per_epoch = []
    for _ in range(epochs):
        n = steps_per_epoch(planner)
        for _ in range(n):  # advance for real: the next epoch's order (and ramp) follow on
            planner.next_step()
        per_epoch.append(n)
    store = loader.sampler.orders[0].store
    capacity = global_batch * (tokens if pack == "dynamic" else max_len)
    return EpochPlan(epochs=epochs, steps=sum(per_epoch), per_epoch=per_epoch, documents=len(store),
                     tokens=int(store.lengths().sum()), step_capacity=capacity, pack=pack,
                     sources=[s.name for s in sources])


def format_epochs(plan: EpochPlan) -> str:
    """The line `planc check` prints, e.g.
    ``epochs = 2: 2 x 139 steps = 278 steps (source 'stdlib': 1,112 documents, 1,123,456 tokens per epoch; a step holds <= 4,096 tokens)``"""
    shape = " + ".join(map(str, plan.per_epoch)) if len(set(plan.per_epoch)) > 1 else \
        f"{plan.epochs} x {plan.per_epoch[0]}"
    bound = f"a step holds <= {plan.step_capacity:,} tokens"
    if plan.pack == "dynamic":
        bound += f" (>= {-(-plan.tokens // plan.step_capacity):,} steps per epoch if every micro-batch were full)"
    return (f"epochs = {plan.epochs}: {shape} steps = {plan.steps:,} steps (source {plan.sources[0]!r}: "
            f"{plan.documents:,} documents, {plan.tokens:,} tokens per epoch; {bound})")
