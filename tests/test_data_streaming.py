"""Streaming sources: split over ranks, exact per-rank epochs, exact resume, bad records counted."""
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
def files(demo, tmp_path_factory):
    """A slice of the stdlib corpus with bad lines mixed in, and a slice of the chat corpus."""
    d = tmp_path_factory.mktemp("stream")
    with open(demo["jsonl"]) as f:
        lines = [line for i, line in enumerate(f) if i % 15 == 0]
    lines[3:3] = ["{broken\n", json.dumps({"text": ""}) + "\n"]
    (d / "code.jsonl").write_text("".join(lines))
    with open(demo["chat"]) as f:
        chat = [line for i, line in enumerate(f) if i % 10 == 0]
    (d / "chat.jsonl").write_text("".join(chat))
    return {"code": d / "code.jsonl", "chat": d / "chat.jsonl"}


def sources(files, stream_code=True, stream_chat=True):
    return [Source(name="code", path=str(files["code"]), streaming=stream_code, weight=2),
            Source(name="chat", path=str(files["chat"]), kind="sft", streaming=stream_chat)]


def equal_steps(a, b):
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_streaming_epoch_split_over_ranks_delivers_every_target_once(files, tok):
    world = 2
    got = Counter()
    for r in range(world):
        ld = build_loader([Source(name="code", path=str(files["code"]), streaming=True)], tok, max_len=96,
                          pack="dynamic", tokens=300, grad_accum=2, dp_rank=r, dp_size=world,
                          shuffle_buffer=8, **QUIET)
        it = iter(ld)
        while ld.epoch == 0:
            for mb in next(it):
                got.update(mb["labels"][mb["labels"] != -100].tolist())
        assert ld.bad_records.total() == 1  # the two bad lines (records 3 and 4) land on ranks 1 and 0
    texts = [json.loads(line)["text"] for line in open(files["code"]) if line.startswith("{\"")]
    texts = [t for t in texts if t.strip()]
    assert got == Counter(t for ids in tokenize_texts(tok, texts) for t in ids[1:])


@pytest.mark.parametrize("pack,streams", [("greedy", "code"), ("dynamic", "chat"), ("dynamic", "both")])
def test_streaming_mixture_resumes_exactly(files, tok, pack, streams):
    kw = dict(max_len=96, pack=pack, micro_batch=2 if pack == "greedy" else 1, grad_accum=2, dp_size=2,
              chat_template="chatml", shuffle_buffer=6, **QUIET)
    if pack == "dynamic":
        kw.update(tokens=250, warmup_steps=3)
    # with any streaming source, map-style sources are split by rank too (local mode)
    srcs = sources(files, stream_code=streams in ("code", "both"), stream_chat=streams in ("chat", "both"))
    for stop in (2, 7):
        runs = [build_loader(srcs, tok, dp_rank=r, **kw) for r in range(2)]
        its = [iter(ld) for ld in runs]
        for _ in range(stop):
            for it in its:
                next(it)
        states = [ld.state_dict() for ld in runs]
        assert states[0] != states[1]  # each rank streams its own share
        expect = [[next(it) for _ in range(4)] for it in its]
        for r in range(2):
            fresh = build_loader(srcs, tok, dp_rank=r, **kw)
            fresh.load_state_dict(states[r])
            it = iter(fresh)
            for s in range(4):
                assert equal_steps(next(it), expect[r][s])
    # streaming state belongs to its rank and its number of ranks
    other = build_loader(srcs, tok, dp_rank=0, **{**kw, "dp_size": 1, "grad_accum": 4})
    with pytest.raises(ValueError, match="same ranks"):
        other.load_state_dict(states[0])


def test_streaming_sft_bad_records_are_counted_as_they_stream(files, tok, tmp_path):
    path = tmp_path / "chat.jsonl"
    good = open(files["chat"]).read().splitlines()[:30]
    path.write_text("\n".join(good[:10] + ['{"messages": [{"role": "user", "content": "hi"}]}'] + good[10:]) + "\n")
    logs = []
    ld = build_loader([Source(name="chat", path=str(path), kind="sft", streaming=True)], tok, max_len=128,
                      pack="greedy", micro_batch=2, grad_accum=1, chat_template="chatml", shuffle_buffer=4,
                      log=logs.append)
    it = iter(ld)
    while ld.epoch == 0:
        next(it)
    assert ld.tally() == {"chat": {"no assistant turn": 1}}
    assert any(f"{path}:11" in m for m in logs)
    assert any("epoch 1 done" in m and "no assistant turn x1" in m for m in logs)


def test_streaming_bad_record_counts_survive_a_resume(files, tok):
    """The end-of-epoch tally of a streaming source is whole after a resume: the counts made before
    the checkpoint travel in the loader state (records are not re-read to count them again)."""
    kw = dict(max_len=96, pack="greedy", micro_batch=2, grad_accum=1, shuffle_buffer=4, **QUIET)
    src = [Source(name="code", path=str(files["code"]), streaming=True)]
    whole = build_loader(src, tok, **kw)
    it = iter(whole)
    while whole.epoch == 0:
        next(it)
    assert whole.tally() == {"code": {"empty text": 1, "unreadable record": 1}}, whole.tally()

    for stop in (3, 8, 20):  # the first bad record is counted in step 1, the second later
        first = build_loader(src, tok, **kw)
        it = iter(first)
        for _ in range(stop):
            next(it)
        assert first.epoch == 0 and first.bad_records.total() >= 1
        resumed = build_loader(src, tok, **kw)
        resumed.load_state_dict(first.state_dict())  # applied when iteration starts
        it = iter(resumed)
        while resumed.epoch == 0:
            next(it)
        assert resumed.tally() == whole.tally(), stop
