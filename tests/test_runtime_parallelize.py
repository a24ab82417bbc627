"""Applying the plan's parallelize globs on one process: FSDP unit order, activation checkpointing."""
import pytest
import torch

from runtime.parallel.checkpointing import apply_activation_checkpointing
from runtime.parallel.fsdp import units


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Linear(4, 4)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))

    def forward(self, x):
        return x + self.mlp(torch.tanh(self.attn(x)))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(Block() for _ in range(3))
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_fsdp_units_are_deepest_first_and_deduplicated():
    net = Net()
    got = units(net, ["layers.*", "layers.*.mlp", "layers.{0,1}"])
    assert got == ["layers.0.mlp", "layers.1.mlp", "layers.2.mlp", "layers.0", "layers.1", "layers.2"]


def test_unmatched_glob_is_an_error():
    with pytest.raises(ValueError, match="fsdp glob 'model.layers.\\*' matches no module of Net"):
        units(Net(), ["model.layers.*"])
    with pytest.raises(ValueError, match="checkpoint glob"):
        apply_activation_checkpointing(Net(), ["blocks.*"])


def test_activation_checkpointing_keeps_names_and_gradients():
    torch.manual_seed(0)
    plain = Net()
    ac = Net()
    ac.load_state_dict(plain.state_dict())
    done = apply_activation_checkpointing(ac, ["layers.*", "layers.*.mlp"])
    assert done == ["layers.0", "layers.1", "layers.2"]  # nested matches are left to the outer one
    assert [n for n, _ in ac.named_parameters()] == [n for n, _ in plain.named_parameters()]
    x = torch.randn(5, 4)
    plain(x).square().sum().backward()
    ac(x).square().sum().backward()
    for (n, a), b in zip(plain.named_parameters(), ac.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=n)


def test_activation_checkpointing_recomputes_the_forward():
    net = Net()
    calls = []
    net.layers[0].attn.register_forward_hook(lambda *a: calls.append(1))
    apply_activation_checkpointing(net, ["layers.0"])
    net(torch.randn(2, 4)).sum().backward()
    assert len(calls) == 2  # once in forward, once recomputed in backward
