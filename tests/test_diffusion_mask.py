"""Block-diffusion masks against a brute-force definition written from the rules alone, over
random packed rows, block sizes and both mask kinds; the refused attention implementations."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from runtime.diffusion.mask import block_causal_mask, block_diffusion_mask, mask_kind
from tests.diffusion_fixtures import allowed_training, layout

rows_st = st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=4), min_size=1, max_size=3)


def positions(layouts):
    return torch.tensor([[p for _, p in tokens] for tokens in layouts])


@settings(max_examples=60, deadline=None)
@given(rows=rows_st, block=st.integers(1, 7))
def test_training_mask_matches_the_rules(rows, block):
    layouts, _ = layout(rows)
    pos = positions(layouts)
    doubled = torch.cat([pos, pos], dim=1)
    want = torch.stack([allowed_training(t, block) for t in layouts])[:, None]
    got = block_diffusion_mask(doubled, block, "sdpa")
    assert got.dtype == torch.bool and torch.equal(got, want)
    add = block_diffusion_mask(doubled, block, "eager", torch.float64)
    assert add.dtype == torch.float64
    assert torch.equal(add == 0, want) and bool((add[~want] == torch.finfo(torch.float64).min).all())
    # every query sees at least itself (no all-masked softmax row), and the relation is transitive,
    # so what a query may see through any number of layers is exactly what it sees in one
    m = want[:, 0].float()
    assert bool(torch.diagonal(want[:, 0], dim1=1, dim2=2).all())
    assert bool((((m @ m) > 0) <= want[:, 0]).all())


@settings(max_examples=40, deadline=None)
@given(rows=rows_st, block=st.integers(1, 7))
def test_inference_mask_is_the_clean_rule(rows, block):
    layouts, n = layout(rows)
    pos = positions(layouts)
    want = torch.stack([allowed_training(t, block)[n:, n:] for t in layouts])[:, None]
    assert torch.equal(block_causal_mask(pos, block, "sdpa"), want)
    assert torch.equal(block_causal_mask(pos, block, "eager") == 0, want)


def test_hand_example():
    # one document of 5 tokens, block 2: blocks {0,1} {2,3} {4}
    pos = torch.arange(5)[None]
    m = block_diffusion_mask(torch.cat([pos, pos], 1), 2, "sdpa")[0, 0].int()
    noisy_noisy, noisy_clean, clean_noisy, clean_clean = m[:5, :5], m[:5, 5:], m[5:, :5], m[5:, 5:]
    assert noisy_noisy.tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0],
                                    [0, 0, 0, 0, 1]]
    assert noisy_clean.tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0],
                                    [1, 1, 1, 1, 0]]
    assert clean_noisy.sum() == 0
    assert clean_clean.tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0],
                                    [1, 1, 1, 1, 1]]


@pytest.mark.parametrize("attention", ["flash_attention_2", "flash_attention_3", "flex_attention", "ulysses_sdpa",
                                       "nope"])
def test_attention_that_cannot_take_the_mask_is_refused(attention):
    pos = torch.arange(4)[None]
    with pytest.raises(ValueError, match="sdpa or eager"):
        block_diffusion_mask(torch.cat([pos, pos], 1), 2, attention)
    with pytest.raises(ValueError, match="sdpa or eager"):
        block_causal_mask(pos, 2, attention)


def test_mask_kinds_and_bad_input():
    assert mask_kind("sdpa") == "bool" and mask_kind("eager") == "additive"
    pos = torch.arange(4)[None]
    with pytest.raises(ValueError, match="floating"):
        block_diffusion_mask(torch.cat([pos, pos], 1), 2, "eager", torch.bool)
    with pytest.raises(ValueError, match=r"\(batch, 2L\)"):
        block_diffusion_mask(torch.arange(5)[None], 2, "sdpa")
    with pytest.raises(ValueError, match="different position ids"):
        block_diffusion_mask(torch.tensor([[0, 1, 0, 2]]), 2, "sdpa")
    with pytest.raises(ValueError, match="block must be"):
        block_diffusion_mask(torch.cat([pos, pos], 1), 0, "sdpa")
