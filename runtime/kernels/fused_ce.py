"""Linear + cross-entropy without the full (tokens, vocab) logits.

The tokens are processed in chunks: each chunk's logits are computed, turned into per-token losses
and, in place, into d loss / d logits, which are at once multiplied into the gradients of the
hidden states (stored) and of the lm_head weight and bias (accumulated in fp32, or in fp64 for an
fp64 model: `runtime.loss.compute_dtype`, never narrower than the weights). Backward then only
scales these by the incoming gradient. Peak memory is one chunk of logits instead of all of them,
on CPU with the torch path too. The per-chunk row kernel is torch ops or Triton; the matmuls are
torch (cuBLAS / MKL) in both.

`fused_lm_loss_sum` runs a whole causal LM this way for the training loop (sum over targets).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from ..loss import compute_dtype
from .backend import check_impl, triton_module

REDUCTIONS = ("sum", "mean")
# Default chunk: about this many logits (128 MiB in fp32) per chunk.
CHUNK_ELEMENTS = 1 << 25


def linear_cross_entropy_reference(hidden, weight, labels, bias=None, *, ignore_index: int = -100,
                                   label_smoothing: float = 0.0, reduction: str = "sum"):
    """Unfused: full logits, upcast to fp32 (as HF's loss does; fp64 stays fp64), then F.cross_entropy."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(compute_dtype(logits.dtype))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)


def _torch_ce_rows_(logits, labels, ignore_index, smoothing, scale):
    """Torch twin of the Triton row kernel: per-row loss, logits overwritten by scale * dloss/dlogits."""
    wide = compute_dtype(logits.dtype)
    work = logits if logits.dtype == wide else logits.to(wide)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0)
    lse = torch.logsumexp(work, dim=-1)
    nll = lse - work.gather(1, safe[:, None]).squeeze(1)
    if smoothing > 0:
        loss = (1 - smoothing) * nll + smoothing * (lse - work.mean(-1))
    else:
        loss = nll
    loss = torch.where(valid, loss, 0.0)
    grad = work.sub_(lse[:, None]).exp_()  # softmax, in place
    if smoothing > 0:
        grad.sub_(smoothing / work.shape[-1])
    grad.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], -(1 - smoothing)))
    grad.mul_((valid.to(grad.dtype) * scale)[:, None])
    if grad is not logits:
        logits.copy_(grad)
    return loss


def default_chunk_size(n_tokens: int, vocab: int) -> int:
    return max(1, min(n_tokens, CHUNK_ELEMENTS // max(vocab, 1)))


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, smoothing, reduction, chunk, impl):
        n_tokens = hidden.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = bias is not None and ctx.needs_input_grad[2]
        n_valid = int((labels != ignore_index).sum())
        # mean divides by the number of targets; 0 targets gives nan, as torch's cross_entropy does.
        scale = 1.0 / n_valid if reduction == "mean" and n_valid > 0 else 1.0
        ce_rows_ = triton_module("cross_entropy").ce_rows_ if impl == "triton" else _torch_ce_rows_

        grad_h = torch.empty_like(hidden) if want_h else None
        # fp32 (fp64 for fp64 weights) accumulation over chunks; a bf16 weight would lose low bits
        # chunk after chunk.
        acc = compute_dtype(weight.dtype)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_b else None
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, n_tokens, chunk):
            h = hidden[start:start + chunk]
            logits = F.linear(h, weight, bias)  # (chunk, vocab) in the compute dtype
            loss += ce_rows_(logits, labels[start:start + chunk], ignore_index, smoothing, scale).sum()
            dlogits = logits  # now holds scale * dloss/dlogits
            if want_h:
                torch.mm(dlogits, weight, out=grad_h[start:start + chunk])
            if want_w:
                if dlogits.dtype == acc:
                    grad_w.addmm_(dlogits.t(), h)
                else:
                    grad_w.add_(torch.mm(dlogits.t(), h))
            if want_b:
                grad_b.add_(dlogits.sum(0, dtype=acc))
            del logits, dlogits
        if reduction == "mean":
            loss = loss / n_valid if n_valid else loss * float("nan")  # no target: nan, like torch
        ctx.save_for_backward(
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
        )
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if getattr(ctx, "used", False):
            raise RuntimeError("fused linear cross-entropy: backward ran twice (retain_graph); its gradients "
                               "were computed in forward and are scaled in place, once")
        ctx.used = True
        grad_h, grad_w, grad_b = ctx.saved_tensors
        # grad_loss is a scalar (the training loop passes 1/global_targets through it). In place:
        # no second weight-sized buffer at the moment memory peaks.
        out = [None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in (grad_h, grad_w, grad_b)]
        return out[0], out[1], out[2], None, None, None, None, None, None


def fused_linear_cross_entropy(hidden, weight, labels, bias=None, *, ignore_index: int = -100,
                               label_smoothing: float = 0.0, reduction: str = "sum",
                               chunk_size: int | None = None, impl: str = "torch"):
    """cross_entropy(hidden @ weight.T + bias, labels) in fp32 (fp64 for fp64), chunked over tokens.

    hidden (..., H), labels (...) of the same leading shape, weight (V, H), bias (V,) or None.
    reduction "sum" (what the training loop uses: it divides by the global target count itself)
    or "mean" (over non-ignored targets). impl "torch", "triton" or "auto".
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if isinstance(weight, DTensor) or isinstance(hidden, DTensor):
        raise NotImplementedError("fused linear cross-entropy needs a plain (not tensor-parallel) lm_head "
                                  "weight; use `tp loss` (loss_parallel) instead for a vocab-sharded head")
    vocab, h_dim = weight.shape
    if hidden.shape[-1] != h_dim:
        raise ValueError(f"hidden size {hidden.shape[-1]} does not match weight {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden {tuple(hidden.shape)}")
    hidden2d = hidden.reshape(-1, h_dim)
    labels1d = labels.reshape(-1).to(device=hidden.device, dtype=torch.long)
    bad = (labels1d != ignore_index) & ((labels1d < 0) | (labels1d >= vocab))
    if bool(bad.any()):
        raise ValueError(f"labels outside [0, {vocab}) that are not ignore_index={ignore_index}: "
                         f"{labels1d[bad][:5].tolist()}")
    impl = check_impl(impl, hidden2d, weight)
    chunk = chunk_size or default_chunk_size(hidden2d.shape[0], vocab)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    return _FusedLinearCE.apply(hidden2d, weight, bias, labels1d.contiguous(), int(ignore_index),
                                float(label_smoothing), reduction, int(chunk), impl)


MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask", "inputs_embeds")


def _targets(batch: dict, labels_shifted: bool, ignore_index: int) -> torch.Tensor:
    """Targets aligned with positions: batch["labels"] as they are when already shifted (the
    runtime's convention, see runtime.loss), else HF's: labels[..., 1:] padded with ignore_index."""
    labels = batch["labels"]
    if labels_shifted:
        return labels
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def fused_lm_loss_sum(model, batch: dict, impl: str | None = None, *, labels_shifted: bool = True,
                      ignore_index: int = -100, label_smoothing: float = 0.0,
                      chunk_size: int | None = None, with_aux_loss: bool = False):
    """Sum over target tokens of the causal-LM cross-entropy of `batch`, without full logits.

    A drop-in for runtime.loss.lm_loss_sum: batch["labels"] are aligned with the positions
    (already shifted), ignore_index where there is no target; pass labels_shifted=False for HF's
    unshifted labels. The model gets the batch's input_ids, position_ids, attention_mask and
    inputs_embeds (those present). impl defaults to the fused_ce choice recorded by
    `apply_kernels` (else "auto").

    The whole model is called as usual, with the output head's forward swapped for the duration of
    the call so that it computes the loss from its own weight: under FSDP2 that weight is unsharded
    exactly inside that forward, and FSDP's hooks see the loss as the head's output. The model
    must hand the head's output through unchanged as `logits` (no softcapping or scaling); that is
    checked. Tensor-parallel (vocab-sharded) heads are refused.

    with_aux_loss=True asks an MoE model for its router logits and returns (loss_sum, aux_loss):
    the load-balancing loss is computed by the model from the router, not from the logits.
    """
    impl = impl or getattr(model, "_planc_fused_ce", "auto")
    head = model.get_output_embeddings()
    targets = _targets(batch, labels_shifted, ignore_index)
    inputs = {k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}
    box = {}

    def head_loss(hidden):
        if hidden.shape[:-1] != targets.shape:
            raise ValueError(f"hidden states {tuple(hidden.shape)} do not line up with labels "
                             f"{tuple(targets.shape)}")
        box["loss"] = fused_linear_cross_entropy(
            hidden, head.weight, targets, getattr(head, "bias", None), ignore_index=ignore_index,
            label_smoothing=label_smoothing, reduction="sum", chunk_size=chunk_size, impl=impl)
        return box["loss"]

    head.forward = head_loss  # instance attribute: shadows the class forward for this call only
    try:
        out = model(**inputs, use_cache=False, **({"output_router_logits": True} if with_aux_loss else {}))
    finally:
        del head.forward
    logits = out["logits"] if isinstance(out, dict) else out[0]
    if "loss" not in box or logits is not box["loss"]:
        raise RuntimeError(f"{type(model).__name__} does not return its output head's result as logits "
                           "unchanged (softcapping or scaling?); fused_ce cannot be used with it")
    if with_aux_loss:
        aux = out.get("aux_loss") if isinstance(out, dict) else getattr(out, "aux_loss", None)
        if aux is None:
            raise RuntimeError(f"{type(model).__name__} returned no aux_loss with output_router_logits=True")
        return box["loss"], aux
    return box["loss"]
