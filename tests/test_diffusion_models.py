"""Block diffusion on real tiny transformers models (Qwen3, Llama, Qwen3-MoE): no leakage across
blocks or packed documents, the mask kinds sdpa and eager need, gradients everywhere."""
from __future__ import annotations

import pytest
import torch

from runtime.diffusion import block_diffusion_mask, loss_sum, noise_batch
from runtime.diffusion.mask import MASK_KINDS
from tests.diffusion_fixtures import FAMILIES, MASK_ID, VOCAB, packed_batch, tiny_model

BLOCK = 4


def diffusion_row():
    # two documents packed in one row, then padding: (10 tokens, prompt 3), (9 tokens, prompt 4)
    batch = packed_batch([[(10, 3), (9, 4)]], 24, seed=1)
    return noise_batch(batch, mask_id=MASK_ID, noise=(0.3, 0.8), seed=0, step=1, first_row=0)


def logits(model, ids, pos, mask):
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits[0]


@pytest.mark.parametrize("attention", list(MASK_KINDS))  # the attentions that take a 4-D mask
@pytest.mark.parametrize("family", FAMILIES)
def test_a_token_changes_exactly_the_logits_allowed_to_see_it(family, attention):
    """Change one input token at a time (noisy or clean, each document, the padding): every logit
    whose query may not see it (a later block, the other copy's forbidden part, another document)
    stays (bit for bit in dense models; MoE experts see another token mix, so the GEMMs differ in
    the last bit: 1e-6); some other query that may see it does change (so the check can fail). The
    mask relation is transitive (test_diffusion_mask), so one layer's rule bounds all layers."""
    model = tiny_model(family, attention).eval()
    batch = diffusion_row()
    ids, pos = batch["input_ids"], batch["position_ids"]
    mask = block_diffusion_mask(pos, BLOCK, attention)
    allowed = block_diffusion_mask(pos, BLOCK, "sdpa")[0, 0]
    base = logits(model, ids, pos, mask)
    n = ids.shape[1] // 2
    tol = 0.0 if family != "qwen3_moe" else 1e-6
    # noisy and clean tokens of both documents, across blocks, and a padding token
    for j in [1, 4, 9, 10, 15, 21, n + 2, n + 5, n + 8, n + 12, n + 17]:
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 7) % (VOCAB - 1)
        diff = (logits(model, changed, pos, mask) - base).abs().amax(dim=-1)
        hidden = ~allowed[:, j]
        assert float(diff[hidden].max()) <= tol, f"token {j} leaked into {hidden.nonzero().flatten().tolist()}"
        seen = allowed[:, j].clone()
        seen[j] = False
        assert seen.any(), f"token {j}: pick a token some other query sees"
        assert float(diff[seen].max()) > 1e-4, f"token {j} changed no logit that sees it"


def test_a_bool_mask_with_eager_leaks():
    """Why the mask builder picks the kind: eager ADDS its mask, so a bool mask becomes +0/+1 and
    the forbidden keys are attended (this is what the API makes impossible)."""
    model = tiny_model("qwen3", "eager").eval()
    batch = diffusion_row()
    ids, pos = batch["input_ids"], batch["position_ids"]
    good = block_diffusion_mask(pos, BLOCK, "eager")
    wrong = block_diffusion_mask(pos, BLOCK, "sdpa")  # bool
    assert good.dtype == torch.float32 and wrong.dtype == torch.bool
    assert float((logits(model, ids, pos, wrong) - logits(model, ids, pos, good)).abs().max()) > 1e-2
    sdpa = tiny_model("qwen3", "sdpa").eval()
    assert torch.allclose(logits(sdpa, ids, pos, wrong), logits(model, ids, pos, good), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_parameter(family):
    model = tiny_model(family).train()
    batch = packed_batch([[(20, 5), (12, 3)], [(30, 8)]], 40, seed=2)
    batch = noise_batch(batch, mask_id=MASK_ID, noise=(0.5, 0.9), seed=3, step=1, first_row=0)
    assert int((batch["labels"] != -100).sum()) > 10
    loss_sum(model, batch, block=BLOCK).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing


def test_router_logits_are_refused():
    model = tiny_model("qwen3_moe")
    model.config.output_router_logits = True
    batch = noise_batch(packed_batch([[(20, 5)]], 24), mask_id=MASK_ID, noise=(0.5, 0.9), seed=0, step=1,
                        first_row=0)
    with pytest.raises(ValueError, match="load-balancing"):
        loss_sum(model, batch, block=BLOCK)
