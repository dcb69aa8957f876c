"""Stochastic depth: the op, its module, and the per-block rate schedule."""

from __future__ import annotations

from typing import List

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob`` (training only)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    # The original's draw (same random numbers); the 1/keep_prob scale goes on the per-sample mask
    # rather than on x, which saves a full pass over the activations forward and backward.
    mask = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_().div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """Stochastic depth per sample, as a module."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def optional_drop_path(drop_prob: float) -> nn.Module:
    """``DropPath(drop_prob)``, or ``nn.Identity`` for a zero rate (the original's module choice)."""
    return DropPath(drop_prob) if drop_prob > 0.0 else nn.Identity()


def drop_path_rates(max_rate: float, depth: int) -> List[float]:
    """Stochastic-depth rate per block: linear from 0 to ``max_rate`` (float32 steps, as the original)."""
    # On the CPU explicitly: models are also built under `with torch.device("meta")`.
    return [float(r) for r in torch.linspace(0, max_rate, depth, device="cpu").tolist()]
