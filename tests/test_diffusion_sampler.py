"""The block-diffusion sampler: fills every mask, never touches the prompt, commits the scheduled
number of tokens per iteration, stops at EOS; and a model trained with the objective generates its
training answer (the training and inference masks agree)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.diffusion import generate, loss_sum, noise_batch
from runtime.diffusion.sampler import transfer_counts
from runtime.data.kinds import shifted_labels
from runtime.data.packing import collate_rows
from runtime.diffusion.mask import MASK_KINDS
from tests.diffusion_fixtures import MASK_ID, tiny_model

PROMPT = [5, 17, 23, 8, 41, 9]


class Recorder:
    """Wraps a model; keeps the input_ids of every call."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.config, self.training = model.config, model.training

    def parameters(self):
        return self.model.parameters()

    def eval(self):
        self.model.eval()

    def train(self, mode=True):
        self.model.train(mode)

    def __call__(self, **kw):
        self.calls.append(kw["input_ids"][0].clone())
        return self.model(**kw)


@pytest.mark.parametrize("attention", list(MASK_KINDS))  # the attentions that take a 4-D mask
def test_fills_every_mask_and_keeps_the_prompt(attention):
    rec = Recorder(tiny_model("qwen3", attention))
    out = generate(rec, PROMPT, mask_id=MASK_ID, block=4, steps=3, gen_length=10)
    assert out.shape == (10,) and not bool((out == MASK_ID).any())
    # total = 16 positions, blocks 1..3 (the prompt's partial block 1 holds 2 masks)
    masks_in_block = [int((c[-4:] == MASK_ID).sum()) for c in rec.calls]
    assert masks_in_block == [2, 1, 4, 2, 1, 4, 2, 1]  # 2 masks in 2 steps (1+1), 4 in 3 (2+1+1)
    for c in rec.calls:
        assert c[:len(PROMPT)].tolist() == PROMPT
    assert rec.calls[-1][len(PROMPT):].tolist().count(MASK_ID) == 1  # the last iteration fills the last one
    assert transfer_counts(4, 3) == [2, 1, 1] and transfer_counts(2, 3) == [1, 1] and transfer_counts(0, 3) == []


def test_threshold_sampling_and_eos():
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    a = generate(model, PROMPT, mask_id=MASK_ID, block=4, steps=4, gen_length=12, temperature=1.0, generator=g)
    g = torch.Generator().manual_seed(0)
    b = generate(model, PROMPT, mask_id=MASK_ID, block=4, steps=4, gen_length=12, temperature=1.0, generator=g)
    assert torch.equal(a, b) and not bool((a == MASK_ID).any())
    c = generate(model, PROMPT, mask_id=MASK_ID, block=4, steps=4, gen_length=12, threshold=0.0)
    assert not bool((c == MASK_ID).any())  # threshold 0: every prediction kept at the first iteration
    greedy = generate(model, PROMPT, mask_id=MASK_ID, block=4, steps=4, gen_length=12)
    eos = int(greedy[5])
    stop = generate(model, PROMPT, mask_id=MASK_ID, block=4, steps=4, gen_length=12, eos_id=eos)
    first = greedy.tolist().index(eos)
    assert stop.tolist() == greedy[:first + 1].tolist()


def test_a_trained_model_generates_its_answer():
    """Train the objective on one conversation (prompt -> a fixed 14-token answer, blocks of 4
    that straddle the prompt's end), then sample: the answer comes back token for token."""
    torch.manual_seed(0)
    model = tiny_model("qwen3")
    answer = [30 + (7 * i) % 50 for i in range(14)]
    ids = np.array(PROMPT + answer, dtype=np.int32)
    doc = (ids, shifted_labels(ids, np.arange(len(ids)) >= len(PROMPT)))
    batch = collate_rows([[doc]] * 8, len(ids), 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(1, 201):
        noised = noise_batch(batch, mask_id=MASK_ID, noise=(0.1, 1.0), seed=0, step=step, first_row=0)
        loss = loss_sum(model, noised, block=4) / int((noised["labels"] != -100).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
    out = generate(model, PROMPT, mask_id=MASK_ID, block=4, steps=2, gen_length=len(answer))
    assert out.tolist() == answer
