"""Convolution variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StandardizedConv2d(nn.Conv2d):
    """Conv2d with weight standardization (zero mean, unit std per output channel).

    Same parameters and state_dict keys as ``nn.Conv2d``; the std is the unbiased one plus
    ``1e-5``, as in the original.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        std = w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5
        return F.conv2d(x, w / std, self.bias, self.stride, self.padding, self.dilation, self.groups)


def standardize_convolutions(module: nn.Module) -> nn.Module:
    """Turn every ``nn.Conv2d`` under ``module`` into a StandardizedConv2d in place (weights kept)."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            child.__class__ = StandardizedConv2d
        else:
            standardize_convolutions(child)
    return module
