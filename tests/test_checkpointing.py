"""Activation checkpointing keeps gradients and updates BatchNorm statistics exactly once."""

import copy

import pytest
import torch
from torch import nn

from vissl_models.layers.checkpointing import (
    checkpoint_sequential_without_bn_double_update,
    checkpoint_without_bn_double_update,
)
from vissl_models.layers.transformer import Block


def conv_bn_stack():
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
                           for _ in range(4)])


def train_step(module, x, run):
    module.train()
    run(module, x).pow(2).mean().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    buffers = [b.clone() for b in module.buffers()]
    return grads, buffers


def assert_same_step(a, b):
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("segments", [1, 2, 3])
def test_sequential_matches_a_plain_run(segments):
    plain, ckpt = conv_bn_stack(), conv_bn_stack()
    x = torch.randn(3, 4, 8, 8)
    a = train_step(plain, x, lambda m, x: m(x))
    b = train_step(ckpt, x, lambda m, x: checkpoint_sequential_without_bn_double_update(list(m), segments, x))
    assert_same_step(a, b)
    assert all(int(bn.num_batches_tracked) == 1 for bn in ckpt.modules() if isinstance(bn, nn.BatchNorm2d))


def test_module_method_and_module_list_forms():
    plain, ckpt = conv_bn_stack(), conv_bn_stack()
    x = torch.randn(3, 4, 8, 8)
    a = train_step(plain, x, lambda m, x: m(x))
    b = train_step(ckpt, x, lambda m, x: checkpoint_without_bn_double_update(m.forward, x))
    assert_same_step(a, b)
    third = conv_bn_stack()
    c = train_step(third, x, lambda m, x: checkpoint_without_bn_double_update(list(m), x))
    assert_same_step(a, c)


class BNAttention(nn.Module):
    """An attention stand-in with a BatchNorm inside, to exercise Block's checkpointing."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        return self.bn(self.proj(x).transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("flag", ["checkpoint_block", "checkpoint_mlp"])
def test_transformer_block_checkpointing_with_batchnorm(flag):
    torch.manual_seed(0)
    plain = Block(8, num_heads=2)
    plain.attn = BNAttention(8)
    ckpt = copy.deepcopy(plain)
    setattr(ckpt, flag, True)
    x = torch.randn(2, 5, 8)
    assert_same_step(train_step(plain, x, lambda m, x: m(x)), train_step(ckpt, x, lambda m, x: m(x)))
    assert int(ckpt.attn.bn.num_batches_tracked) == 1


def test_a_plain_function_needs_its_modules():
    lin = nn.Linear(2, 2)
    x = torch.randn(1, 2, requires_grad=True)
    with pytest.raises(TypeError, match="modules="):
        checkpoint_without_bn_double_update(lambda t: lin(t), x)
    out = checkpoint_without_bn_double_update(lambda t: lin(t), x, modules=[lin])
    torch.testing.assert_close(out, lin(x))
