"""Normalization layers and the NORM option of convolutional trunks."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

NORM_NAMES = ("BatchNorm", "LayerNorm", "GroupNorm")


class LayerNorm2d(nn.GroupNorm):
    """LayerNorm over (C, H, W) of an NCHW tensor: a GroupNorm with one group.

    Same parameters and keys (``weight``, ``bias``) as the original's LayerNorm2d.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_groups=1, num_channels=num_channels, eps=eps, affine=affine)


class ChannelsLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels only of an NCHW tensor (ConvNeXt style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = super().forward(x)
        return x.permute(0, 3, 1, 2)


def get_norm(name: str, groupnorm_groups: int = 32) -> Callable[[int], nn.Module]:
    """Constructor ``(num_channels) -> module`` for ``BatchNorm``, ``LayerNorm`` or ``GroupNorm``."""
    if name == "BatchNorm":
        return nn.BatchNorm2d
    if name == "LayerNorm":
        return LayerNorm2d
    if name == "GroupNorm":

        def group_norm(num_channels: int) -> nn.Module:
            return nn.GroupNorm(num_groups=groupnorm_groups, num_channels=num_channels)

        return group_norm
    raise ValueError(f"norm: got {name!r}, expected one of {list(NORM_NAMES)}")


BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


def convert_sync_batchnorm(module: nn.Module, sync_bn_type: str = "pytorch", process_group=None) -> nn.Module:
    """Convert BatchNorm layers to PyTorch's SyncBatchNorm.

    ``apex`` (the original's default) is accepted and mapped to PyTorch's implementation,
    with a warning: apex is not a dependency and PyTorch's kernel is the maintained one.
    """
    import warnings

    if sync_bn_type not in ("pytorch", "apex"):
        raise ValueError(
            f"MODEL.SYNC_BN_CONFIG.SYNC_BN_TYPE: got {sync_bn_type!r}, expected one of ['pytorch', 'apex']"
        )
    if sync_bn_type == "apex":
        warnings.warn("SYNC_BN_TYPE 'apex' is served by torch.nn.SyncBatchNorm", stacklevel=2)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=process_group)
