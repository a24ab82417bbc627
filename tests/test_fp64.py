"""fp64 through the runtime, as `planc verify`'s verdict runs use it: nothing on the way rounds an
fp64 run down to fp32 (the loss, the fused loss kernel, the SwiGLU kernel's backward), an fp64 MoE
model builds with experts that take fp64, and every launch pins its numerics environment."""
from __future__ import annotations

import pytest
import torch

from runtime.kernels import act_and_mul, act_and_mul_reference, fused_linear_cross_entropy
from runtime.kernels.fused_ce import linear_cross_entropy_reference
from runtime.loss import IGNORE, compute_dtype, cross_entropy_sum


def test_compute_dtype_is_fp32_or_wider():
    assert compute_dtype(torch.bfloat16) == compute_dtype(torch.float16) == torch.float32
    assert compute_dtype(torch.float32) == torch.float32 and compute_dtype(torch.float64) == torch.float64


def test_cross_entropy_sum_keeps_fp64():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 0] = IGNORE
    got = cross_entropy_sum(logits, labels)
    assert got.dtype == torch.float64
    by_hand = -sum(logits[b, s].log_softmax(-1)[labels[b, s]] for b in range(2) for s in range(5)
                   if labels[b, s] != IGNORE)
    assert abs(float(got - by_hand)) < 1e-12 * abs(float(by_hand))
    # an fp32 computation of the same sum is off by far more: it is not what ran
    assert abs(float(cross_entropy_sum(logits.float(), labels)) - float(by_hand)) > 1e-9
    assert cross_entropy_sum(logits.to(torch.bfloat16), labels).dtype == torch.float32


def test_fused_linear_cross_entropy_in_fp64():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    labels[3] = IGNORE
    ref = linear_cross_entropy_reference(hidden, weight, labels)
    ref_h, ref_w = torch.autograd.grad(ref, (hidden, weight))
    got = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=8, impl="torch")
    got_h, got_w = torch.autograd.grad(got, (hidden, weight))
    assert ref.dtype == got.dtype == torch.float64 and got_w.dtype == torch.float64
    assert torch.allclose(got, ref, rtol=1e-13, atol=0)
    assert torch.allclose(got_h, ref_h, rtol=1e-12, atol=1e-15) and torch.allclose(got_w, ref_w, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "gelu"])
def test_act_and_mul_backward_in_fp64(activation):
    torch.manual_seed(0)
    gate = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    up = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(6, 9, dtype=torch.float64)
    ref = torch.autograd.grad(act_and_mul_reference(gate, up, activation), (gate, up), dy)
    got = torch.autograd.grad(act_and_mul(gate, up, activation, impl="torch"), (gate, up), dy)
    for g, r in zip(got, ref):
        assert g.dtype == torch.float64 and torch.allclose(g, r, rtol=1e-12, atol=1e-14), (g - r).abs().max()


def test_fp64_moe_model_trains_a_step(repo_root):
    """transformers' default experts path (torch's grouped GEMM) takes no fp64: an fp64 build runs
    the experts with transformers' own loop, and a forward and backward run in fp64 end to end."""
    from runtime.model import build_meta, materialize

    model = build_meta(repo_root / "plans/models/tiny-qwen3-moe", dtype="fp64")
    assert model.config._experts_implementation == "eager"
    assert build_meta(repo_root / "plans/models/tiny-qwen3-moe", dtype="fp32").config._experts_implementation \
        == "grouped_mm"
    materialize(model, torch.device("cpu"), seed=0)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    out = model(input_ids=ids, use_cache=False, output_router_logits=True)
    assert out.logits.dtype == torch.float64
    loss = cross_entropy_sum(out.logits[:, :-1], ids[:, 1:]) + out.aux_loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float64 for g in grads)


def test_launches_pin_their_environment(monkeypatch):
    from planc.launch import PINNED, REPO, pinned_env

    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setenv("MKL_NUM_THREADS", "8")
    env = pinned_env({"PYTHONPATH": "/x", "TRITON_INTERPRET": "0"})
    assert {k: env[k] for k in PINNED} == PINNED  # forced, whatever the caller's shell says
    assert env["OMP_NUM_THREADS"] == "1" and env["PLANC_DETERMINISTIC"] == "1"
    assert env["PYTHONPATH"].split(":")[:2] == ["/x", str(REPO)] and env["TRITON_INTERPRET"] == "0"
    with pytest.raises(ValueError, match="pinned"):
        pinned_env({"OMP_NUM_THREADS": "4"})
