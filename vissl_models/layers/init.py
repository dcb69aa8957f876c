"""Weight initialisers the original's trunks use."""

from __future__ import annotations

import math

import torch
from torch import nn


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """Normal(mean, std) truncated to [a, b] (absolute bounds), in place."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def lecun_normal_init(tensor: torch.Tensor, fan_in: int):
    """Truncated normal with std ``sqrt(1 / fan_in)``, in place."""
    return trunc_normal_(tensor, std=math.sqrt(1.0 / fan_in))


def init_linear_trunc_normal(m: nn.Module) -> None:
    """For ``module.apply``: Linear weights ~ truncated normal (std 0.02), biases zero."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def init_transformer_weights(m: nn.Module) -> None:
    """For ``module.apply``: :func:`init_linear_trunc_normal`, and LayerNorm weight 1, bias 0
    (the init of the original's ViT, XCiT, Swin, BEiT and ConViT trunks)."""
    init_linear_trunc_normal(m)
    if isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
