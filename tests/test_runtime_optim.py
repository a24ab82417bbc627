"""runtime.optim: weight-decay groups, foreach choice, schedules, gradient clipping on one process."""
import math

import pytest
import torch

from runtime import optim
from runtime.vocab import SCHEDULES


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.proj = torch.nn.Linear(8, 8)          # weight decayed, bias not
        self.norm = torch.nn.LayerNorm(8)          # neither
        self.head = torch.nn.Linear(8, 50, bias=False)
        self.frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)

    def forward(self, ids):
        return self.head(self.norm(self.proj(self.embed(ids))))


def test_param_groups_decay_matrices_only():
    m = Tiny()
    decay, no_decay = optim.param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["embed.weight", "head.weight", "proj.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["norm.bias", "norm.weight", "proj.bias"]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0  # frozen: in neither


def test_build_optimizer_settings():
    opt = optim.build_optimizer(Tiny(), lr=3e-3, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-7)
    assert isinstance(opt, torch.optim.AdamW)
    g = opt.param_groups[0]
    assert g["lr"] == 3e-3 and g["betas"] == (0.9, 0.95) and g["eps"] == 1e-7 and g["foreach"] is None
    with pytest.raises(ValueError, match="two numbers"):
        optim.build_optimizer(Tiny(), lr=1e-3, betas=[0.9])


def test_foreach_left_to_torch_for_plain_tensors():
    # the mixed plain/DTensor case is checked under torchrun in tests/mp/model_checks.py
    assert optim._foreach_ok([torch.zeros(1), torch.zeros(2)]) is None


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedule_shapes(kind):
    steps, warmup, min_lr = 20, 4, 0.1
    f = [optim.lr_factor(s, kind=kind, steps=steps, warmup=warmup, min_lr=min_lr) for s in range(steps)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]              # linear warmup reaching 1 at index warmup-1
    assert f[4] == 1.0                                   # decay starts from the peak
    if kind == "constant":
        assert f[4:] == [1.0] * 16
    else:
        assert all(a >= b for a, b in zip(f[4:], f[5:]))  # monotone decay
        assert min_lr < f[-1] < min_lr + 0.2             # approaching the floor, never below
        end = optim.lr_factor(steps, kind=kind, steps=steps, warmup=warmup, min_lr=min_lr)
        assert end == pytest.approx(min_lr)
    if kind == "cosine":  # halfway through the decay: midway between peak and floor
        assert f[12] == pytest.approx(min_lr + (1 - min_lr) * 0.5)
    if kind == "linear":
        assert f[12] == pytest.approx(min_lr + (1 - min_lr) * 0.5)


def test_schedule_without_warmup_and_errors():
    assert optim.lr_factor(0, kind="cosine", steps=10) == 1.0
    assert optim.lr_factor(5, kind="cosine", steps=10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ValueError, match="schedule must be one of"):
        optim.lr_factor(0, kind="step", steps=10)
    opt = optim.build_optimizer(Tiny(), lr=1.0)
    with pytest.raises(ValueError, match="min_lr"):
        optim.build_schedule(opt, kind="cosine", steps=10, min_lr=2.0)


def test_lambda_lr_follows_lr_factor_and_round_trips():
    opt = optim.build_optimizer(Tiny(), lr=2.0)
    sched = optim.build_schedule(opt, kind="cosine", steps=10, warmup=2, min_lr=0.1)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * optim.lr_factor(s, kind="cosine", steps=10, warmup=2, min_lr=0.1)
                                  for s in range(6)])
    opt2 = optim.build_optimizer(Tiny(), lr=2.0)
    sched2 = optim.build_schedule(opt2, kind="cosine", steps=10, warmup=2, min_lr=0.1)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 6 and sched2.get_last_lr() == sched.get_last_lr()


def _grads(seed):
    torch.manual_seed(seed)
    m = Tiny()
    m(torch.randint(0, 50, (4, 7))).pow(2).mean().backward()
    m.embed.weight.grad *= 40  # some spread of magnitudes
    return m


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clip_matches_torch_on_one_process(max_norm):
    a, b = _grads(0), _grads(0)
    ours = optim.clip_grad_norm(a.parameters(), max_norm)
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    exact = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in _grads(0).parameters() if p.grad is not None))
    assert ours.item() == pytest.approx(exact, rel=1e-12)     # fp64 accumulation
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)  # torch's fp32 kernel, within its error
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=2e-6, atol=0)
    if max_norm < exact:  # clipped: the new norm is max_norm
        assert optim.clip_grad_norm(a.parameters(), 0).item() == pytest.approx(max_norm, rel=1e-5)


def test_clip_zero_only_measures():
    a = _grads(1)
    before = [p.grad.clone() for p in a.parameters() if p.grad is not None]
    n = optim.clip_grad_norm(a.parameters(), 0.0)
    assert n.item() > 0
    assert all(torch.equal(x, p.grad) for x, p in zip(before, [p for p in a.parameters() if p.grad is not None]))


def test_clip_inf_norm():
    a = _grads(2)
    n = optim.clip_grad_norm(a.parameters(), 0.0, norm_type=float("inf"))
    assert n.item() == max(float(p.grad.abs().max()) for p in a.parameters() if p.grad is not None)
