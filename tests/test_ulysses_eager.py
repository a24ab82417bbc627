"""Ulysses around the model's own eager attention trains like one process (gloo, fp32, 5 steps).

transformers keeps no shared "eager" attention function (each model defines its own
`eager_attention_forward`), and eager attention applies no causal mask by itself: Ulysses finds
the model's function and gives it an additive block-causal mask over the gathered sequence.
Layouts: FSDP 2 x sp 2; sp 4 with 2 KV heads (each rank gets a repeated KV head); sp 2 x tp 2 with
sequence-parallel norms, vocab-parallel embedding and loss. One launch of
tests/mp/parallel_parity.py (4 processes); the reference is the same eager model on one process.
"""
from __future__ import annotations

import json

import pytest
import torch

from launch import REPO, torchrun

DRIVER = REPO / "tests" / "mp" / "parallel_parity.py"
TOL = 1e-5


def test_eager_block_causal_mask_is_additive():
    from runtime.parallel.ulysses import block_causal_mask

    pos = torch.tensor([[0, 1, 2, 0, 1]])
    mask = block_causal_mask(pos, torch.float32)
    allowed = block_causal_mask(pos)
    assert mask.dtype == torch.float32 and allowed.dtype == torch.bool
    assert torch.equal(mask == 0, allowed)  # 0 where attended, the most negative value elsewhere
    assert float(mask.min()) == torch.finfo(torch.float32).min


def test_eager_function_is_the_models_own():
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen3 import modeling_qwen3

    from runtime.model import load_config
    from runtime.parallel.ulysses import eager_function, is_attention

    cfg = load_config(REPO / "plans" / "models" / "tiny-qwen3", attention="eager")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    attn = [m for m in model.modules() if is_attention(m)]
    assert attn and all(eager_function(m) is modeling_qwen3.eager_attention_forward for m in attn)
    assert eager_function(torch.nn.Linear(2, 2)) is None


@pytest.mark.multiproc
@pytest.mark.slow
def test_ulysses_eager_matches_one_process(tmp_path):
    layouts = ["fsdp2xsp2_eager", "sp4_eager", "sp2xtp2_eager"]
    out = tmp_path / "results.json"
    torchrun(DRIVER, 4, [out, *layouts], log_dir=tmp_path / "logs")
    results = json.loads(out.read_text())
    for name in layouts:
        r = results[name]
        print(f"{name}: worst loss rel {r['worst_loss_rel']:.2e}, grad norm rel {r['worst_grad_norm_rel']:.2e}")
        assert len(r["losses"]) == len(r["ref_losses"]) == 5
        assert r["worst_loss_rel"] <= TOL, (name, r["losses"], r["ref_losses"])
        assert r["worst_grad_norm_rel"] <= TOL, (name, r["grad_norms"], r["ref_grad_norms"])
        assert r["losses"][-1] < r["losses"][0], (name, r["losses"])
