"""Ulysses sequence parallelism for vision-language models (Qwen2-VL ... Qwen3-VL-MoE).

The placeholder tokens of an image may fall on either side of a slice boundary, and the vision
tower attends within a whole image, so images are not split: every sp rank runs the model on the
WHOLE row (input_ids, pixel values, grids, the (4, B, L) positions), the vision tower computes every
image's features, and the model merges them into the full row's embeddings (deepstack features
too) as usual. A forward pre-hook on the language model then keeps this rank's slice of the row
(embeddings, positions, the visual-token mask and the matching deepstack rows) before the first
decoder layer; attention runs through runtime.parallel.ulysses on the language model only (the
vision tower keeps its own attention). The logits are this rank's slice: slice the labels the same
way (`slice_labels`), and reduce loss and target counts over dp x sp as for text.

Gradients: each sp rank's vision and embedding gradients come from its own tokens only; FSDP sums
gradients over the fsdp dim (dp_shard * sp), which makes them whole.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from runtime.parallel.ulysses import apply_ulysses

__all__ = ["apply_ulysses_vl", "slice_labels"]


def _bounds(length: int, rank: int, sp: int) -> tuple[int, int]:
    if length % sp:
        raise ValueError(f"Ulysses sp={sp}: the row length {length} is not a multiple of sp; build the data "
                         f"loader with pad_to_multiple_of={sp}")
    part = length // sp
    return rank * part, (rank + 1) * part


def _keep_slice(rank: int, sp: int):
    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise ValueError("Ulysses VL: the language model must be called with inputs_embeds (the VL "
                             "model does this); call the whole model, not its language model")
        start, end = _bounds(embeds.shape[1], rank, sp)
        kwargs["inputs_embeds"] = embeds[:, start:end]
        pos = kwargs.get("position_ids")
        if pos is None or pos.dim() != 3 or pos.shape[0] != 4:
            raise ValueError("Ulysses VL needs packed position_ids of shape (4, B, L) (text row + mrope rows)")
        kwargs["position_ids"] = pos[..., start:end]
        mask = kwargs.get("visual_pos_masks")
        if mask is not None:
            embeds_ds = kwargs.get("deepstack_visual_embeds")
            if embeds_ds is not None:  # rows follow the visual tokens in row-major order
                mine = torch.zeros_like(mask)
                mine[:, start:end] = True
                keep = mine[mask]
                kwargs["deepstack_visual_embeds"] = [e[keep] for e in embeds_ds]
            kwargs["visual_pos_masks"] = mask[:, start:end]
        return args, kwargs
    return hook


def apply_ulysses_vl(model: nn.Module, sp_mesh: DeviceMesh, modules: list[str] | None = None) -> nn.Module:
    """Route the language model's attention through Ulysses over `sp_mesh` and slice its inputs
    (see the module docstring). `modules`: the attention modules by their names in `model` (a plan's
    `sp ulysses` globs, resolved; default: every one of the language model). Call before FSDP."""
    lm = model.model.language_model
    if modules is not None:
        prefix = next(n for n, m in model.named_modules() if m is lm) + "."
        outside = [n for n in modules if not n.startswith(prefix)]
        if outside:
            raise ValueError(f"Ulysses VL wraps the language model's attention only, not {outside[0]!r}")
        modules = [n[len(prefix):] for n in modules]
    apply_ulysses(lm, sp_mesh, modules)
    lm.register_forward_pre_hook(_keep_slice(sp_mesh.get_local_rank(), sp_mesh.size()), with_kwargs=True)
    return model


def slice_labels(batch: dict, sp_rank: int, sp: int) -> dict:
    """The batch with its labels cut to this sp rank's slice (everything else stays whole)."""
    labels = batch["labels"]
    start, end = _bounds(labels.shape[1], sp_rank, sp)
    return dict(batch, labels=labels[:, start:end])
