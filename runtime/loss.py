"""The training loss: causal-LM cross-entropy normalised by the GLOBAL number of target tokens.

A step's loss is ``sum of token losses over every micro-batch on every dp/sp rank / number of
target tokens in all of them``, so each token weighs the same whatever the packing, micro-batch
split or rank count. The loop counts the step's targets once (`count_targets`, one all-reduce),
then backpropagates ``lm_loss_sum(model, batch) / global_tokens`` per micro-batch. Gradients are
summed across ranks (runtime.parallel.fsdp), so their total is exactly the single-process gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .vocab import IGNORE  # label of a position without a target (padding, document ends)

__all__ = ["IGNORE", "count_targets", "lm_loss_sum", "cross_entropy_sum", "local_value", "step_loss"]


def count_targets(micro_batches, group: dist.ProcessGroup | None = None) -> int:
    """Target tokens of the whole step over all micro-batches and all ranks of `group`."""
    local = sum(int((mb["labels"] != IGNORE).sum()) for mb in micro_batches)
    total = torch.tensor([local], dtype=torch.int64)
    if _needs_reduce(group):
        total = total.to(_collective_device(group))
        dist.all_reduce(total, group=group)
    count = int(total.cpu()[0])
    if count == 0:
        raise RuntimeError("this step has no target tokens on any rank (every label is -100)")
    return count


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token cross-entropies; `labels` already shifted, IGNORE where there is no target.
    Computed in fp32 at least (bf16/fp16 logits are upcast; fp64 ones stay fp64)."""
    if logits.dtype != torch.float64:
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def lm_loss_sum(model, batch: dict) -> torch.Tensor:
    """Summed token loss of one micro-batch.

    The seam for a fused linear + cross-entropy kernel: this is the one place that turns a batch
    into a loss, so a path that never materialises the logits replaces only this function.
    """
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    return cross_entropy_sum(out.logits, batch["labels"])


def local_value(micro_loss: torch.Tensor) -> torch.Tensor:
    """A micro-batch's summed loss as a plain detached tensor (under loss_parallel it is a
    replicated DTensor, whose value is the same on every tp rank)."""
    micro_loss = micro_loss.detach()
    return micro_loss.full_tensor() if hasattr(micro_loss, "full_tensor") else micro_loss


def step_loss(local_sum: torch.Tensor, global_tokens: int, group: dist.ProcessGroup | None = None) -> float:
    """The step's reported loss: all ranks' summed token losses / the global target count."""
    total = local_sum.detach().to(torch.float64).reshape(1)
    if _needs_reduce(group):
        total = total.to(_collective_device(group))
        dist.all_reduce(total, group=group)
    return float(total.cpu()[0]) / global_tokens


def _needs_reduce(group) -> bool:
    return dist.is_initialized() and dist.get_world_size(group) > 1


def _collective_device(group) -> torch.device:
    """nccl collectives need CUDA tensors; gloo takes CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend(group) == "nccl" else torch.device("cpu")
