"""The pretraining data path: shapes, document boundaries, exact epochs, dp invariance, resume."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from planc.demo_assets import make_demo_assets
from runtime.data import Source, build_loader, load_tokenizer
from runtime.data.kinds import tokenize_texts

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda msg: None)


@pytest.fixture(scope="module")
def demo():
    return make_demo_assets(REPO / "data" / "demo")


@pytest.fixture(scope="module")
def tok(demo):
    return load_tokenizer(demo["tokenizer"])


@pytest.fixture(scope="module")
def corpus(demo, tmp_path_factory):
    """A small slice of the real stdlib corpus (every 12th file), so each loader builds in ms."""
    path = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    with open(demo["jsonl"]) as f:
        lines = [line for i, line in enumerate(f) if i % 12 == 0]
    path.write_text("".join(lines))
    return path


def make(corpus, tok, **kw):
    args = dict(max_len=128, pack="greedy", micro_batch=2, grad_accum=2, dp_rank=0, dp_size=1, seed=0)
    args.update(kw)
    return build_loader([Source(name="small", path=str(corpus))], tok, **args, **QUIET)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def rows_of(step):
    """The rows of one step as hashable tuples of input ids."""
    return [tuple(r.tolist()) for mb in step for r in mb["input_ids"]]


def check_rows(mb):
    """Labels are the next input within the same document; positions restart per document."""
    ids, labels, pos = mb["input_ids"], mb["labels"], mb["position_ids"]
    assert bool((pos[:, 0] == 0).all())
    cont = pos[:, 1:] != 0
    assert bool((pos[:, 1:][cont] == pos[:, :-1][cont] + 1).all())
    has = labels[:, :-1] != -100
    assert bool((labels[:, -1] == -100).all())
    assert bool((pos[:, 1:][has] == pos[:, :-1][has] + 1).all()), "a label crosses a document boundary"
    assert bool((labels[:, :-1][has] == ids[:, 1:][has]).all())
    assert bool((labels[:, :-1][~cont] == -100).all())  # the last token of a document has no target


@pytest.mark.parametrize("pack", ["greedy", "none"])
def test_shapes_boundaries_and_exact_epoch(corpus, tok, pack):
    loader = make(corpus, tok, pack=pack)
    targets = Counter()
    steps = 0
    for step in loader:
        steps += 1
        assert len(step) == 2
        for mb in step:
            assert set(mb) == {"input_ids", "labels", "position_ids"}
            for v in mb.values():
                assert v.dtype == torch.long and v.shape == (2, 128)
            check_rows(mb)
            targets.update(t for t in mb["labels"].flatten().tolist() if t != -100)
        if loader.epoch == 1:
            break
    # Over one epoch every next-token target of every text arrives exactly once (splits included).
    texts = [json.loads(line)["text"] for line in open(corpus)]
    expected = Counter(t for ids in tokenize_texts(tok, texts) for t in ids[1:])
    assert targets == expected
    assert steps > 10


def test_none_is_one_document_per_row(corpus, tok):
    (step,) = take(make(corpus, tok, pack="none"), 1)
    for mb in step:
        for pos in mb["position_ids"]:
            starts = (pos == 0).nonzero().flatten().tolist()
            assert len(starts) <= 2  # one document, then maybe one padding segment


@pytest.mark.parametrize("dp", [2, 4])
def test_union_over_ranks_is_the_same_global_batch(corpus, tok, dp):
    # global batch 8 rows: 1 rank x 4 micro x 2 rows == dp ranks x (4/dp) micro x 2 rows
    ref = take(make(corpus, tok, grad_accum=4, dp_size=1), 6)
    per_rank = [take(make(corpus, tok, grad_accum=4 // dp, dp_rank=r, dp_size=dp), 6) for r in range(dp)]
    for s in range(6):
        union = [row for r in range(dp) for row in rows_of(per_rank[r][s])]
        assert union == rows_of(ref[s])  # same rows, and rank r holds the r-th contiguous slice


def test_resume_mid_epoch_and_across_epochs(corpus, tok):
    loader = make(corpus, tok)
    it = iter(loader)
    n_epoch, saved, seen = None, {}, []
    while n_epoch is None or len(seen) < n_epoch + 5:
        if len(seen) in (3, 17):
            saved[len(seen)] = loader.state_dict()
        seen.append(next(it))
        if n_epoch is None and loader.epoch == 1:
            n_epoch = len(seen)
            saved[n_epoch] = loader.state_dict()  # exactly at the epoch boundary
        assert len(seen) < 1000
    assert 17 < n_epoch
    for start, sd in saved.items():
        fresh = make(corpus, tok)
        fresh.load_state_dict(sd)
        again = take(fresh, 5)
        for a, b in zip(seen[start:start + 5], again):
            for x, y in zip(a, b):
                assert all(torch.equal(x[k], y[k]) for k in x)
    # the second epoch is a new order, not a replay of the first
    assert rows_of(seen[n_epoch]) != rows_of(seen[0])


def test_state_is_rank_independent_and_resumes_on_another_dp(corpus, tok):
    a = [make(corpus, tok, grad_accum=2, dp_rank=r, dp_size=2) for r in range(2)]
    for ld in a:
        take(ld, 4)
    states = [ld.state_dict() for ld in a]
    assert states[0] == states[1]
    ref = make(corpus, tok, grad_accum=4, dp_size=1)
    ref_steps = take(ref, 7)[4:]
    one = make(corpus, tok, grad_accum=4, dp_size=1)
    one.load_state_dict(states[0])
    assert [rows_of(s) for s in take(one, 3)] == [rows_of(s) for s in ref_steps]


def test_shuffle_and_seed(corpus, tok):
    a, b = take(make(corpus, tok, seed=0), 1)[0], take(make(corpus, tok, seed=1), 1)[0]
    assert rows_of(a) != rows_of(b)
    c, d = take(make(corpus, tok, shuffle=False), 1)[0], take(make(corpus, tok, shuffle=False, seed=5), 1)[0]
    assert rows_of(c) == rows_of(d)
