"""Properties of packing, dynamic batching, resume and mixtures, over synthetic documents.

Every token id is unique (document * 1000 + position, plus a source offset), so "every target
token exactly once" is a plain multiset (here: set and count) equality.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from runtime.data.kinds import DocStore
from runtime.data.labels import shifted_labels
from runtime.data.loader import loader_from_orders
from runtime.data.mixture import MapOrder
from runtime.data.packing import fit_bins, fit_bins_nd
from runtime.vocab import PACKS

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def store_of(lengths, source=0) -> DocStore:
    st_ = DocStore()
    for d, n in enumerate(lengths):
        ids = np.arange(n, dtype=np.int32) + d * 1000 + source * 1_000_000 + 1  # never the pad id 0
        st_.add(ids, shifted_labels(ids), d)
    return st_


def loaders(stores, weights, world, seed, **kw):
    """One loader per rank over the same stores (global mode): what `world` processes would run."""
    out = []
    for r in range(world):
        orders = [MapOrder(s, seed, i) for i, s in enumerate(stores)]
        out.append(loader_from_orders(orders, weights, dp_rank=r, dp_size=world, **kw))
    return out


def check_rows(mb, max_tokens=None):
    ids, labels, pos = mb["input_ids"], mb["labels"], mb["position_ids"]
    assert ids.dtype == labels.dtype == pos.dtype == torch.long
    assert ids.shape == labels.shape == pos.shape
    if max_tokens is not None:
        assert int((ids != 0).sum()) <= max_tokens
    assert bool((pos[:, 0] == 0).all())
    cont = pos[:, 1:] != 0
    assert bool((pos[:, 1:][cont] == pos[:, :-1][cont] + 1).all()), "positions must count up within a document"
    has = labels[:, :-1] != -100
    assert bool((labels[:, -1] == -100).all())
    assert bool((pos[:, 1:][has] == pos[:, :-1][has] + 1).all()), "a label crosses a document boundary"
    assert bool((labels[:, :-1][has] == ids[:, 1:][has]).all()), "labels must be the next input"


def expected_targets(stores):
    return Counter(t for s in stores for lab in s.labels for t in lab[lab != -100].tolist())


packs = st.sampled_from(PACKS)


@FAST
@given(lengths=st.lists(st.integers(2, 48), min_size=1, max_size=60), pack=packs,
       max_len=st.integers(48, 64), extra=st.integers(0, 100), world=st.integers(1, 4),
       micro_batch=st.integers(1, 3), grad_accum=st.integers(1, 3), seed=st.integers(0, 2**16),
       warmup=st.integers(0, 4))
def test_every_target_token_exactly_once_per_epoch(lengths, pack, max_len, extra, world, micro_batch,
                                                   grad_accum, seed, warmup):
    stores = [store_of(lengths)]
    mb = 1 if pack == "dynamic" else micro_batch
    dyn = dict(tokens=max_len + extra, warmup_steps=warmup) if pack == "dynamic" else {}
    lds = loaders(stores, [1.0], world, seed, pack=pack, max_len=max_len, micro_batch=mb, grad_accum=grad_accum,
                  **dyn)
    its = [iter(ld) for ld in lds]
    got = Counter()
    for _ in range(10_000):
        for r, it in enumerate(its):
            step = next(it)
            assert len(step) == grad_accum  # every rank runs the same number of micro-batches
            for m in step:
                if pack == "dynamic":
                    assert m["input_ids"].shape[0] == 1
                    check_rows(m, max_tokens=lds[r].sampler.planner.capacity(lds[r].step - 1))
                else:
                    assert m["input_ids"].shape == (mb, max_len)
                    check_rows(m)
                got.update(m["labels"][m["labels"] != -100].tolist())
        epochs = {ld.epoch for ld in lds}
        assert len(epochs) == 1  # ranks agree on where the epoch ends
        if epochs == {1}:
            break
    assert got == expected_targets(stores)


@FAST
@given(lengths=st.lists(st.integers(2, 40), min_size=5, max_size=50), pack=packs, stop=st.integers(0, 12),
       world=st.sampled_from([1, 2, 4]), new_world=st.sampled_from([1, 2, 4]), seed=st.integers(0, 99))
def test_resume_after_any_step_matches_an_uninterrupted_run(lengths, pack, stop, world, new_world, seed):
    stores = [store_of(lengths), store_of(lengths[::-1], source=1)]
    kw = dict(pack=pack, max_len=40, micro_batch=1)
    if pack == "dynamic":
        kw.update(tokens=100, warmup_steps=3)
    global_mb = 4  # global batch in bins: grad_accum * world == 4 for every world here

    def run(w):
        return loaders(stores, [2.0, 1.0], w, seed, grad_accum=global_mb // w, **kw)

    ref = run(1)[0]
    it = iter(ref)
    ref_steps = [next(it) for _ in range(stop + 4)]
    first = run(world)
    for ld in first:
        it = iter(ld)
        for _ in range(stop):
            next(it)
    states = [ld.state_dict() for ld in first]
    assert all(s == states[0] for s in states)  # global mode: one state for all ranks
    resumed = run(new_world)
    for ld in resumed:
        ld.load_state_dict(states[0])
    its = [iter(ld) for ld in resumed]
    for s in range(stop, stop + 4):
        union = [mb for it in its for mb in next(it)]
        expect = ref_steps[s]
        assert len(union) == len(expect)
        for a, b in zip(union, expect):
            assert all(torch.equal(a[k], b[k]) for k in a)


@FAST
@given(weights=st.lists(st.floats(0.2, 5.0), min_size=2, max_size=3), seed=st.integers(0, 99),
       pack=packs, data=st.data())
def test_mixture_shares_converge_to_weights(weights, seed, pack, data):
    max_len = 32
    stores = [store_of(data.draw(st.lists(st.integers(2, max_len), min_size=3, max_size=30)), source=i)
              for i in range(len(weights))]
    batching = dict(micro_batch=1, tokens=4 * max_len) if pack == "dynamic" else dict(micro_batch=2)
    (ld,) = loaders(stores, weights, 1, seed, pack=pack, max_len=max_len, grad_accum=2, **batching)
    shares = np.array(weights) / sum(weights)
    bound = max_len / shares.min()  # tokens; see runtime/data/mixture.py
    delivered = np.zeros(len(weights))
    it = iter(ld)
    for _ in range(150):
        for mb in next(it):
            real = mb["input_ids"][mb["input_ids"] != 0]
            delivered += np.bincount((real // 1_000_000).numpy(), minlength=len(weights))
        drawn = np.array(ld.sampler.planner.mixture.drawn, dtype=float)
        assert np.all(np.abs(drawn - shares * drawn.sum()) <= shares * bound + 1e-6)
    window = sum(e[2] for e in ld.sampler.planner.window)
    # delivered = drawn - what still waits in the look-ahead window
    assert np.all(np.abs(delivered - shares * delivered.sum()) <= bound + window)
    assert np.all(np.abs(delivered / delivered.sum() - shares) <= (bound + window) / delivered.sum())


# -- more budgets per bin (vision patches, audio frames): fit_bins_nd and the planner -------------
@st.composite
def fit_problems(draw):
    """Items that each fit an empty bin: lengths, cost vectors, n_bins, capacity, budgets."""
    n_budgets = draw(st.integers(0, 3))
    capacity = draw(st.integers(1, 40))
    budgets = draw(st.lists(st.integers(0, 30), min_size=n_budgets, max_size=n_budgets))
    n = draw(st.integers(0, 40))
    lengths = draw(st.lists(st.integers(1, capacity), min_size=n, max_size=n))
    costs = [[draw(st.integers(0, b)) for b in budgets] for _ in range(n)]
    return lengths, costs, draw(st.integers(1, 5)), capacity, budgets


@FAST
@given(problem=fit_problems(), worst=st.booleans())
def test_fit_bins_nd_respects_every_budget_and_loses_nothing(problem, worst):
    lengths, costs, n_bins, capacity, budgets = problem
    bins, left = fit_bins_nd(lengths, costs, n_bins, capacity, budgets, worst=worst)
    assert len(bins) == n_bins
    assert sorted([p for b in bins for p in b] + left) == list(range(len(lengths)))  # each item once
    used = [(sum(lengths[p] for p in b), [sum(costs[p][j] for p in b) for j in range(len(budgets))]) for b in bins]
    for tokens, spent in used:
        assert tokens <= capacity and all(x <= b for x, b in zip(spent, budgets))
    for p in left:  # left only if no bin could take it (bins only fill up, so: not even at the end)
        assert all(tokens + lengths[p] > capacity or any(x + c > b for x, c, b in zip(spent, costs[p], budgets))
                   for tokens, spent in used)


@FAST
@given(problem=fit_problems(), worst=st.booleans())
def test_a_budget_that_never_binds_places_as_fit_bins(problem, worst):
    """Best / worst fit as before: with budgets no bin can reach, the bins are fit_bins' own."""
    lengths, costs, n_bins, capacity, budgets = problem
    roomy = [sum(c[j] for c in costs) for j in range(len(budgets))]
    assert fit_bins_nd(lengths, costs, n_bins, capacity, roomy, worst=worst) == \
        fit_bins(lengths, n_bins, capacity, worst=worst)


class WithCosts(MapOrder):
    """Documents with a cost vector each (as runtime.data.multimodal.loader.VLMapOrder's)."""

    def __init__(self, store, seed, source_index, costs):
        super().__init__(store, seed, source_index)
        self._c = costs

    def costs(self, d):
        return self._c[d]


@FAST
@given(data=st.data(), pack=packs, seed=st.integers(0, 2**16), grad_accum=st.integers(1, 3))
def test_planned_bins_respect_every_budget_and_deliver_every_target_once(data, pack, seed, grad_accum):
    max_len = 32
    lengths = data.draw(st.lists(st.integers(2, max_len), min_size=1, max_size=30))
    budgets = tuple(data.draw(st.lists(st.one_of(st.none(), st.integers(3, 12)), min_size=2, max_size=2)))
    costs = [tuple(data.draw(st.integers(0, 3)) for _ in budgets) for _ in lengths]
    store = store_of(lengths)
    batching = dict(micro_batch=1, tokens=2 * max_len) if pack == "dynamic" else dict(micro_batch=2)
    ld = loader_from_orders([WithCosts(store, seed, 0, costs)], [1.0], pack=pack, max_len=max_len,
                            grad_accum=grad_accum, budgets=budgets, **batching)
    planner, seen = ld.sampler.planner, Counter()
    while planner.epoch == 0:
        for b in planner.next_step():
            for j, budget in enumerate(budgets):
                assert budget is None or sum(costs[d][j] for _, d in b) <= budget
            seen.update(d for _, d in b)
    assert seen == Counter(range(len(lengths)))
