"""runtime.parts: freezing model parts and per-part learning rates (one process; the sharded run
is in tests/mp/vl_checks.py)."""
import pytest
import torch

from runtime import model as models, optim
from runtime.parts import freeze, lr_groups

import vlfix


def test_freeze_and_part_rates():
    m = models.build_meta(vlfix.CONFIGS["tiny-qwen2.5-vl"])
    frozen = freeze(m, ["model.visual.blocks.*", "model.visual.patch_embed"])
    assert frozen and all(n.startswith(("model.visual.blocks.", "model.visual.patch_embed.")) for n in frozen)
    assert all(p.requires_grad == (n not in frozen) for n, p in m.named_parameters())
    groups = lr_groups(m, 1e-3, 0.1, [("model.visual.merger", 1e-4)])
    rates = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(m.named_parameters())
    assert rates[id(named["model.visual.merger.mlp.0.weight"])] == (1e-4, 0.1)
    assert rates[id(named["model.visual.merger.mlp.0.bias"])] == (1e-4, 0.0)
    assert rates[id(named["model.language_model.layers.0.mlp.up_proj.weight"])] == (1e-3, 0.1)
    assert not any(id(named[n]) in rates for n in frozen)
    with pytest.raises(ValueError, match="matches no module"):
        freeze(m, ["model.vision.*"])


def test_frozen_parts_stay_and_rates_scale():
    """A step with the tower frozen leaves it bit for bit; the merger at a tenth of the rate moves
    by a tenth as much (AdamW's first step moves every weight by about its rate)."""
    m = vlfix.reference("tiny-qwen2.5-vl")
    freeze(m, ["model.visual.blocks.*"])
    opt = optim.build_optimizer(m, lr=1e-2, parts=[("model.visual.merger", 1e-3)])
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    moved = {n: float((p - before[n]).abs().max()) for n, p in m.named_parameters()}
    assert all(v == 0 for n, v in moved.items() if n.startswith("model.visual.blocks."))
    assert moved["model.visual.merger.mlp.0.weight"] == pytest.approx(1e-3, rel=1e-3)
    assert moved["model.language_model.layers.0.mlp.up_proj.weight"] == pytest.approx(1e-2, rel=1e-3)
