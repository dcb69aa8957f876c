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
