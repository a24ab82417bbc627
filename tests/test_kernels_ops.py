"""Each kernel against its unfused torch reference, values and gradients.

The torch implementations run here. The Triton ones run only in a process started with
TRITON_INTERPRET=1 (the interpreter must be on before anything imports triton, and transformers
does): test_kernels_interpreter.py runs this file's "triton" cases that way. Shapes stay small
there since every program is interpreted.

Tolerances: fp32 within 1e-5 (relative and absolute); bf16 kernels are compared with the fp32
reference on the same (bf16-rounded) inputs within 2e-2 relative + 2e-2 absolute, a few bf16
roundings (bf16 keeps 8 significant bits: 3.9e-3 relative; the interpreter truncates fp32 -> bf16
casts, which GPUs round to nearest even, so up to 7.8e-3 per cast there).
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.kernels import (act_and_mul, act_and_mul_reference, apply_rotary, apply_rotary_reference,
                             fused_linear_cross_entropy, grouped_mm, grouped_mm_reference,
                             linear_cross_entropy_reference, rms_norm, rms_norm_reference)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
IMPLS = ("torch", "triton") if INTERPRETED else ("torch",)
FP32 = dict(atol=1e-5, rtol=1e-5)
BF16 = dict(atol=2e-2, rtol=2e-2)
FEW = settings(max_examples=5, deadline=None, derandomize=True)


def run(fn, inputs, grad_seed=1):
    """fn(*inputs) and the gradients of every floating input, for fixed random output gradients."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(grad_seed)
    grads_out = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs]
    torch.autograd.backward(outs, grads_out)
    return [o.detach() for o in outs], [t.grad for t in leaves if t.is_floating_point()]


def assert_match(ref_fn, fn, inputs, tol=FP32, ref_inputs=None):
    """fn on inputs matches ref_fn on ref_inputs (default the same inputs), outputs and grads."""
    ref_out, ref_grads = run(ref_fn, ref_inputs or inputs)
    out, grads = run(fn, inputs)
    for a, b in zip(out + grads, ref_out + ref_grads, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a.float(), b.float(), **tol)
    return out, grads


def upcast(ts):
    return [t.float() if t.is_floating_point() else t for t in ts]


# ---------------------------------------------------------------- rmsnorm

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("casting,offset", [("llama", 0.0), ("gemma", 1.0), ("llama", 0.5)])
def test_rmsnorm_fp32(impl, casting, offset):
    # 200 rows of a non-power-of-two width: several row tiles, several backward programs.
    x, w = torch.randn(4, 50, 37), torch.randn(37)
    assert_match(lambda x, w: rms_norm_reference(x, w, 1e-5, offset, casting),
                 lambda x, w: rms_norm(x, w, 1e-5, offset, casting, impl), [x, w])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("casting", ["llama", "gemma"])
def test_rmsnorm_bf16(impl, casting):
    x, w = torch.randn(6, 40).bfloat16(), (torch.rand(40) + 0.5).bfloat16()
    out, _ = assert_match(lambda x, w: rms_norm_reference(x, w, 1e-6, 0.0, casting),
                          lambda x, w: rms_norm(x, w, 1e-6, 0.0, casting, impl), [x, w], BF16,
                          ref_inputs=upcast([x, w]))
    assert out[0].dtype == torch.bfloat16


@pytest.mark.parametrize("impl", IMPLS)
def test_rmsnorm_llama_casting_promotes_like_hf(impl):
    # fp32 weight with a bf16 input: HF's `weight * h.to(bf16)` gives fp32, so must the kernels.
    x, w = torch.randn(3, 16).bfloat16(), torch.randn(16)
    ref = rms_norm_reference(x, w)
    y = rms_norm(x, w, impl=impl)
    assert y.dtype == ref.dtype == torch.float32
    # The interpreter truncates fp32 -> bf16 casts (GPUs round to nearest even): one bf16 ulp.
    torch.testing.assert_close(y, ref, **(FP32 if impl == "torch" else BF16))


@pytest.mark.parametrize("impl", IMPLS)
@FEW
@given(rows=st.integers(1, 9), n=st.integers(1, 70))
def test_rmsnorm_shapes(impl, rows, n):
    x, w = torch.randn(rows, n), torch.randn(n)
    assert_match(lambda x, w: rms_norm_reference(x, w), lambda x, w: rms_norm(x, w, impl=impl), [x, w])


# ---------------------------------------------------------------- swiglu / geglu

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "gelu"])
def test_act_and_mul_fp32(impl, activation):
    g, u = torch.randn(2, 3, 1030) * 3, torch.randn(2, 3, 1030)  # 1030 cols: two column blocks
    assert_match(lambda g, u: act_and_mul_reference(g, u, activation),
                 lambda g, u: act_and_mul(g, u, activation, impl), [g, u])


@pytest.mark.parametrize("impl", IMPLS)
def test_act_and_mul_strided_halves_bf16(impl):
    # MoE experts pass the two halves of one fused projection: strided rows, no copy.
    h = (torch.randn(5, 2 * 24) * 2).bfloat16()
    fn = lambda h: act_and_mul(h[:, :24], h[:, 24:], "silu", impl)  # noqa: E731
    ref = lambda h: act_and_mul_reference(h[:, :24], h[:, 24:], "silu")  # noqa: E731
    assert_match(ref, fn, [h], BF16, ref_inputs=[h.float()])


@pytest.mark.parametrize("impl", IMPLS)
@FEW
@given(rows=st.integers(1, 6), n=st.integers(1, 40), act=st.sampled_from(["silu", "gelu_tanh", "gelu"]))
def test_act_and_mul_shapes(impl, rows, n, act):
    g, u = torch.randn(rows, n), torch.randn(rows, n)
    assert_match(lambda g, u: act_and_mul_reference(g, u, act),
                 lambda g, u: act_and_mul(g, u, act, impl), [g, u])


# ---------------------------------------------------------------- rotary

def _cos_sin(bsz, seq, dim, base=10000.0):
    """cos/sin as HF's default rotary module builds them (duplicated halves)."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    pos = torch.arange(seq).float()[None, :].expand(bsz, seq)
    emb = torch.cat([pos[..., None] * inv] * 2, dim=-1)
    return emb.cos(), emb.sin()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_rotary_fp32(impl, unsqueeze_dim):
    # 2*33*8 = 528 (batch, seq, head) rows for q: more than one row block; GQA k has 2 heads.
    cos, sin = _cos_sin(2, 33, 16)
    q, k = torch.randn(2, 8, 33, 16), torch.randn(2, 2, 33, 16)
    if unsqueeze_dim == 2:
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    assert_match(lambda q, k: apply_rotary_reference(q, k, cos, sin, unsqueeze_dim),
                 lambda q, k: apply_rotary(q, k, cos, sin, unsqueeze_dim, impl), [q, k])


@pytest.mark.parametrize("impl", IMPLS)
def test_rotary_general_cos_sin_and_hf_layout(impl):
    # Arbitrary cos/sin (halves not equal, broadcast over the batch) and q as HF makes it: a transposed view.
    cos, sin = torch.randn(1, 7, 10), torch.randn(1, 7, 10)
    q = torch.randn(3, 7, 4 * 10).view(3, 7, 4, 10).transpose(1, 2)
    k = torch.randn(3, 7, 1, 10).transpose(1, 2)
    assert_match(lambda q, k: apply_rotary_reference(q, k, cos, sin),
                 lambda q, k: apply_rotary(q, k, cos, sin, 1, impl), [q, k])


@pytest.mark.parametrize("impl", IMPLS)
def test_rotary_bf16(impl):
    cos, sin = _cos_sin(1, 9, 32)
    q, k = torch.randn(1, 4, 9, 32).bfloat16(), torch.randn(1, 2, 9, 32).bfloat16()
    cb, sb = cos.bfloat16(), sin.bfloat16()
    assert_match(lambda q, k: apply_rotary_reference(q, k, cb.float(), sb.float()),
                 lambda q, k: apply_rotary(q, k, cb, sb, 1, impl), [q, k], BF16, ref_inputs=upcast([q, k]))


def test_rotary_refuses_cos_with_grad():
    cos, sin = _cos_sin(1, 3, 4)
    with pytest.raises(ValueError, match="require grad"):
        apply_rotary(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), cos.requires_grad_(), sin)


# ---------------------------------------------------------------- fused linear + cross-entropy

def _ce_case(tokens=13, hidden=24, vocab=50, ignore=(3, 7), seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen) * 0.3
    b = torch.randn(vocab, generator=gen)
    y = torch.randint(0, vocab, (tokens,), generator=gen)
    y[list(ignore)] = -100
    return h, w, b, y


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_ce_fp32(impl, reduction, smoothing):
    h, w, b, y = _ce_case()
    kw = dict(label_smoothing=smoothing, reduction=reduction)
    assert_match(lambda h, w, b: linear_cross_entropy_reference(h, w, y, b, **kw),
                 lambda h, w, b: fused_linear_cross_entropy(h, w, y, b, chunk_size=4, impl=impl, **kw),
                 [h, w, b])


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_ce_ignored_rows_single_row_no_bias(impl):
    # A chunk made only of ignored rows, a final chunk of one row, a (B, S) leading shape, no bias.
    h, w, _, y = _ce_case(tokens=9, ignore=(0, 1, 2, 3))
    h, y = h.view(3, 3, -1), y.view(3, 3)
    _, grads = assert_match(lambda h, w: linear_cross_entropy_reference(h, w, y),
                            lambda h, w: fused_linear_cross_entropy(h, w, y, chunk_size=4, impl=impl), [h, w])
    assert grads[0].view(9, -1)[:4].abs().max() == 0  # ignored targets give no gradient


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_ce_all_ignored(impl):
    h, w, _, y = _ce_case(tokens=5, ignore=range(5))
    (loss,), (gh, gw) = run(lambda h, w: fused_linear_cross_entropy(h, w, y, impl=impl), [h, w])
    assert loss.item() == 0.0 and gh.abs().max() == 0 and gw.abs().max() == 0
    mean = fused_linear_cross_entropy(h, w, y, reduction="mean", impl=impl)
    assert torch.isnan(mean) and torch.isnan(linear_cross_entropy_reference(h, w, y, reduction="mean"))


if INTERPRETED:  # a Triton-only case (the torch path has no vocabulary blocks)
    def test_fused_ce_triton_vocab_blocks(monkeypatch):
        # The row kernel's online softmax over several vocabulary blocks (50 = 3 blocks of 16, + tail).
        from runtime.kernels._triton import cross_entropy
        monkeypatch.setattr(cross_entropy, "MAX_BLOCK", 16)
        h, w, b, y = _ce_case()
        for smoothing in (0.0, 0.2):
            assert_match(lambda h, w, b: linear_cross_entropy_reference(h, w, y, b, label_smoothing=smoothing),
                         lambda h, w, b: fused_linear_cross_entropy(h, w, y, b, label_smoothing=smoothing,
                                                                    chunk_size=5, impl="triton"), [h, w, b])


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_ce_bf16(impl):
    h, w, b, y = (t.bfloat16() if t.is_floating_point() else t for t in _ce_case())
    assert_match(lambda h, w, b: linear_cross_entropy_reference(h, w, y, b),
                 lambda h, w, b: fused_linear_cross_entropy(h, w, y, b, chunk_size=4, impl=impl),
                 [h, w, b], dict(atol=5e-2, rtol=2e-2), ref_inputs=upcast([h, w, b]))


@pytest.mark.parametrize("impl", IMPLS)
@FEW
@given(tokens=st.integers(1, 12), vocab=st.integers(2, 40), chunk=st.integers(1, 12),
       smoothing=st.sampled_from([0.0, 0.3]))
def test_fused_ce_shapes(impl, tokens, vocab, chunk, smoothing):
    gen = torch.Generator().manual_seed(tokens * 100 + vocab)
    h, w = torch.randn(tokens, 8, generator=gen), torch.randn(vocab, 8, generator=gen)
    y = torch.randint(-1, vocab, (tokens,), generator=gen)
    y[y < 0] = -100  # about one target in (vocab + 1) is ignored
    assert_match(lambda h, w: linear_cross_entropy_reference(h, w, y, label_smoothing=smoothing),
                 lambda h, w: fused_linear_cross_entropy(h, w, y, label_smoothing=smoothing, chunk_size=chunk,
                                                         impl=impl), [h, w])


def test_fused_ce_bad_input():
    h, w, _, y = _ce_case()
    y[0] = 50  # == vocab
    with pytest.raises(ValueError, match="outside"):
        fused_linear_cross_entropy(h, w, y)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(h, w, y.clamp(max=0), reduction="none")
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cross_entropy(h, w, y[:-1].clamp(max=0))
    # gradients are made in forward and scaled in place in backward: a second backward is refused
    loss = fused_linear_cross_entropy(h.requires_grad_(), w, y.clamp(max=0))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


# ---------------------------------------------------------------- grouped GEMM (MoE)

@pytest.mark.parametrize("impl", IMPLS)
def test_grouped_mm_fp32(impl):
    # An empty group, a group over one 64-row tile, K over one 32 block, N over one 64 block,
    # HF's (E, out, in) weight passed as a transposed view, and 3 sentinel rows after the groups.
    sizes = torch.tensor([5, 0, 70, 1])
    x = torch.randn(79, 40)
    w_hf = torch.randn(4, 70, 40)
    out, grads = assert_match(lambda x, w: grouped_mm_reference(x, w.transpose(1, 2), sizes),
                              lambda x, w: grouped_mm(x, w.transpose(1, 2), sizes, impl), [x, w_hf])
    assert out[0][76:].abs().max() == 0 and grads[0][76:].abs().max() == 0
    # and the reference really is x_e @ w_e per group
    torch.testing.assert_close(out[0][5:75], x[5:75] @ w_hf[2].T, **FP32)


@pytest.mark.parametrize("impl", IMPLS)
def test_grouped_mm_bf16(impl):
    sizes = torch.tensor([3, 9])
    x, w = torch.randn(12, 20).bfloat16(), torch.randn(2, 20, 17).bfloat16()
    assert_match(lambda x, w: grouped_mm_reference(x, w, sizes), lambda x, w: grouped_mm(x, w, sizes, impl),
                 [x, w], dict(atol=5e-2, rtol=2e-2), ref_inputs=upcast([x, w]))


@pytest.mark.parametrize("impl", IMPLS)
@FEW
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=4), k=st.integers(1, 20), n=st.integers(1, 20))
def test_grouped_mm_shapes(impl, sizes, k, n):
    s = torch.tensor(sizes)
    x, w = torch.randn(int(s.sum()), k), torch.randn(len(sizes), k, n)
    assert_match(lambda x, w: grouped_mm_reference(x, w, s), lambda x, w: grouped_mm(x, w, s, impl), [x, w])


def test_grouped_mm_bad_input():
    with pytest.raises(ValueError, match="add up"):
        grouped_mm(torch.randn(3, 4), torch.randn(2, 4, 5), torch.tensor([2, 2]))
    with pytest.raises(ValueError, match="disagree"):
        grouped_mm(torch.randn(3, 4), torch.randn(2, 5, 5), torch.tensor([1, 2]))


# ---------------------------------------------------------------- choosing an implementation

def test_functional_impl_errors(monkeypatch):
    x, w = torch.randn(2, 4), torch.randn(4)
    with pytest.raises(ValueError, match="unknown kernel implementation"):
        rms_norm(x, w, impl="cuda")
    assert torch.equal(rms_norm(x, w, impl="auto"), rms_norm(x, w, impl="torch"))  # auto on CPU: torch
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA"):
        rms_norm(x, w, impl="triton")
