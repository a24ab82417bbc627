"""The block-diffusion objective: what is noised, the loss on a hand example and against the
formula on a real model, the noise law, and noise that depends on the global sample only."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from runtime.data import Source, build_loader
from runtime.data.chat import ChatEncoder
from runtime.diffusion import (block_diffusion_mask, loss_sum, noise_batch, noise_step, response_mask)
from planc.demo_diffusion import make_diffusion_demo
from runtime.loss import count_targets
from runtime.diffusion.mask import MASK_KINDS
from tests.diffusion_fixtures import MASK_ID, allowed_training, packed_batch, tiny_model


@pytest.fixture(scope="module")
def diffusion_demo(demo_assets):
    return make_diffusion_demo(demo_assets["dir"])


def test_response_positions_are_the_assistant_tokens(diffusion_demo):
    """On a real conversation through planc's chat encoder: the maskable positions of the
    unshifted objective are exactly the tokens of the assistant replies and their end-of-turn
    markers (planc's labels are shifted by one; the objective shifts them back)."""
    from runtime.data.kinds import load_tokenizer

    tok = load_tokenizer(diffusion_demo["tokenizer_mask"])
    messages = [{"role": "user", "content": "What does `x.f` do?"},
                {"role": "assistant", "content": "It returns the answer."},
                {"role": "user", "content": "Its signature?"},
                {"role": "assistant", "content": "def f(a, b)"}]
    ids, labels = ChatEncoder(tok, "chatml", max_len=256).encode([messages])[0]
    resp = response_mask(torch.as_tensor(labels, dtype=torch.long)[None])[0].numpy()
    # the response runs, decoded one run at a time
    runs, start = [], None
    for i, r in enumerate(list(resp) + [False]):
        if r and start is None:
            start = i
        if not r and start is not None:
            runs.append(tok.decode(ids[start:i]))
            start = None
    assert runs == ["It returns the answer.<|im_end|>", "def f(a, b)<|im_end|>"]


def test_noise_batch_layout():
    batch = packed_batch([[(10, 3), (9, 4)], [(16, 6)]], 20, seed=0)
    out = noise_batch(batch, mask_id=MASK_ID, noise=(0.3, 0.8), seed=5, step=2, first_row=0)
    ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    n = ids.shape[1]
    assert out["input_ids"].shape == out["labels"].shape == out["position_ids"].shape == (2, 2 * n)
    assert torch.equal(out["input_ids"][:, n:], ids) and torch.equal(out["position_ids"], torch.cat([pos, pos], 1))
    noisy = out["input_ids"][:, :n]
    masked = noisy == MASK_ID
    resp = response_mask(labels)
    assert bool(masked.any()) and not bool((masked & ~resp).any())       # only responses are masked
    assert torch.equal(noisy[~masked], ids[~masked])                      # the rest is the clean token
    assert torch.equal(out["labels"][:, :n][masked], ids[masked])         # targets: clean ids where masked
    assert bool((out["labels"][:, :n][~masked] == -100).all()) and bool((out["labels"][:, n:] == -100).all())
    # the response of a document starts right after its prompt, never at a document's first token
    assert resp[0].nonzero().flatten().tolist() == list(range(3, 10)) + list(range(14, 19))
    assert count_targets([out]) == int(masked.sum())


class Stub(nn.Module):
    """Logits with softmax [.1, .2, .3, .4] at every position; records what it was called with."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(_attn_implementation="sdpa")
        self.calls = []

    def forward(self, input_ids, position_ids, attention_mask, use_cache, logits_to_keep):
        self.calls.append(dict(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               use_cache=use_cache, logits_to_keep=logits_to_keep))
        row = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        return SimpleNamespace(logits=row.expand(input_ids.shape[0], len(logits_to_keep), 4))


def test_loss_on_a_hand_example():
    ids = torch.tensor([[0, 1, 2, 3, 3, 1]])
    labels = torch.tensor([[-100, 2, 3, 3, 1, -100]])  # shifted: prompt 0 1, response 2 3 3 1
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(6)[None]}
    out = noise_batch(batch, mask_id=9, noise=(1.0, 1.0), seed=0, step=1, first_row=0)  # t = 1: all masked
    assert out["input_ids"].tolist() == [[0, 1, 9, 9, 9, 9, 0, 1, 2, 3, 3, 1]]
    stub = Stub()
    got = loss_sum(stub, out, block=2)
    # -log p of the clean tokens 2, 3, 3, 1 under p = [.1, .2, .3, .4]
    want = -(math.log(0.3) + math.log(0.4) + math.log(0.4) + math.log(0.2))
    assert abs(float(got) - want) < 1e-6 and count_targets([out]) == 4
    call = stub.calls[0]
    assert call["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5] * 2] and call["use_cache"] is False
    assert call["logits_to_keep"].tolist() == list(range(6))
    assert torch.equal(call["attention_mask"], block_diffusion_mask(out["position_ids"], 2, "sdpa"))


@pytest.mark.parametrize("attention", list(MASK_KINDS))  # the attentions that take a 4-D mask
def test_loss_is_the_formula_on_a_real_model(attention):
    """loss_sum (noisy-half logits only) == sum over masked tokens of -log p(x_0 | [x_t ; x_0]),
    with the mask built independently by the brute-force rules and full logits."""
    model = tiny_model("qwen3", attention, dtype=torch.float64)
    batch = packed_batch([[(12, 4), (9, 2)]], 24, seed=4)
    out = noise_batch(batch, mask_id=MASK_ID, noise=(0.3, 0.8), seed=1, step=7, first_row=3)
    n = 24
    tokens = [(0, p) for p in range(12)] + [(1, p) for p in range(9)] + [(2, p) for p in range(3)]
    allowed = allowed_training(tokens, 4)
    mask = allowed[None, None] if attention == "sdpa" else torch.zeros(1, 1, 2 * n, 2 * n, dtype=torch.float64
                                                                        ).masked_fill(~allowed, -1e300)
    logits = model(input_ids=out["input_ids"], position_ids=out["position_ids"], attention_mask=mask,
                   use_cache=False).logits[0, :n]
    masked = out["input_ids"][0, :n] == MASK_ID
    want = -torch.log_softmax(logits.detach(), -1)[masked].gather(-1, batch["input_ids"][0, masked][:, None]).sum()
    got = loss_sum(model, out, block=4).detach()
    assert int(masked.sum()) >= 3 and abs(float(got) - float(want)) < 1e-10 * float(want)


def test_noise_law_one_level_per_document():
    """t ~ U[0.3, 0.8] per document: each document's masked fraction lies near [0.3, 0.8], they
    spread like a uniform (std ~0.144; one t for all, or one per token, would give ~0.035), mean 0.55."""
    rows = [[(201, 1)] for _ in range(600)]
    out = noise_batch(packed_batch(rows, 201), mask_id=MASK_ID, noise=(0.3, 0.8), seed=0, step=1, first_row=0)
    frac = (out["input_ids"][:, :201] == MASK_ID).double().mean(dim=1)[:, None].squeeze(1) * 201 / 200
    assert float(frac.min()) > 0.2 and float(frac.max()) < 0.9
    assert abs(float(frac.mean()) - 0.55) < 0.02 and 0.12 < float(frac.std()) < 0.17


def test_noise_depends_on_the_global_sample_only():
    """One process (4 micro-batches) and 2 data-parallel ranks (2 each, rank r taking the r-th
    contiguous share, as the loader deals them) draw the same masks; a resume redraws them; another
    step or seed draws others."""
    step_rows = packed_batch([[(12, 3), (7, 2)], [(19, 5)], [(10, 4), (9, 1)], [(15, 3)],
                              [(8, 2), (11, 4)], [(18, 6)], [(9, 2)], [(19, 9)]], 20, seed=9)
    micro = [{k: v[2 * i:2 * i + 2] for k, v in step_rows.items()} for i in range(4)]
    kw = dict(mask_id=MASK_ID, noise=(0.3, 0.8), seed=11, step=5)
    one = noise_step(micro, dp_rank=0, **kw)
    two = noise_step(micro[:2], dp_rank=0, **kw) + noise_step(micro[2:], dp_rank=1, **kw)
    for a, b in zip(one, two):
        assert all(torch.equal(a[k], b[k]) for k in a)
    again = noise_step(micro, dp_rank=0, **kw)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(one, again))
    for other in (dict(kw, step=6), dict(kw, seed=12)):
        diff = noise_step(micro, dp_rank=0, **other)
        assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(one, diff))


def test_loader_layouts_and_resume_draw_the_same_noise(diffusion_demo, tmp_path):
    """Through the real loader on the demo chats: the step's noised rows are the same with 1 and 2
    data-parallel ranks, and after a resume from a saved loader state."""
    from runtime.data.kinds import load_tokenizer

    lines = open(diffusion_demo["chat"], encoding="utf-8").readlines()[:200]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    tok = load_tokenizer(diffusion_demo["tokenizer_mask"])
    src = [Source(name="chat", path=str(path), format="jsonl", kind="sft", messages="messages")]

    def loader(rank, size):
        return build_loader(src, tok, max_len=96, pack="greedy", micro_batch=2, grad_accum=4 // size,
                            dp_rank=rank, dp_size=size, seed=3, chat_template="chatml", log=lambda m: None)

    kw = dict(mask_id=diffusion_demo["mask_id"], noise=(0.3, 0.8), seed=3)

    def steps(ld, rank, first, count):
        it = iter(ld)
        return [noise_step(next(it), dp_rank=rank, step=s, **kw) for s in range(first, first + count)]

    one = steps(loader(0, 1), 0, 1, 3)
    r0, r1 = steps(loader(0, 2), 0, 1, 3), steps(loader(1, 2), 1, 1, 3)
    for s in range(3):
        assert all(torch.equal(a[k], b[k]) for a, b in zip(one[s], r0[s] + r1[s]) for k in a)
    ld = loader(0, 1)
    it = iter(ld)
    next(it)
    state = ld.state_dict()
    resumed = loader(0, 1)
    resumed.load_state_dict(state)
    again = steps(resumed, 0, 2, 2)
    assert all(torch.equal(a[k], b[k]) for s in range(2) for a, b in zip(one[s + 1], again[s]) for k in a)
    assert count_targets(one[0]) > 0


def test_bad_settings():
    batch = packed_batch([[(6, 2)]], 8)
    with pytest.raises(ValueError, match="low <= high"):
        noise_batch(batch, mask_id=1, noise=(0.8, 0.3), seed=0, step=1, first_row=0)
    with pytest.raises(ValueError, match="pair"):
        noise_batch(batch, mask_id=1, noise=0.5, seed=0, step=1, first_row=0)
    with pytest.raises(ValueError, match="mask_id"):
        noise_batch(batch, mask_id=-1, noise=(0.3, 0.8), seed=0, step=1, first_row=0)
