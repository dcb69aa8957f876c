"""MobileNet-V3 classifier heads: ``mobilenet_v3_head`` (torchvision layout) and
``mobilenet_v3_head_timm`` (timm layout: a 1x1 conv instead of the first Linear).

Keys: ``classifier.<i>.*`` (and ``channel_bn.*`` with ``with_bn``), as in the original, so the
classifier weights of a torchvision/timm MobileNet-V3 load as head weights.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch
from torch import nn

from ..config import options as opt
from ..registry import register_model_head
from .common import HeadCommon

Batch = Union[torch.Tensor, Sequence[torch.Tensor]]


def _single_tensor(head: str, batch: Batch) -> torch.Tensor:
    if isinstance(batch, (list, tuple)):
        if len(batch) != 1:
            raise ValueError(f"{head} takes a tensor or a list of one tensor, got a list of {len(batch)}")
        batch = batch[0]
    return batch


def _as_nc11(head: str, batch: torch.Tensor, channels: int) -> torch.Tensor:
    """``N x C`` or ``N x C x 1 x 1`` as ``N x C x 1 x 1``."""
    if batch.ndim == 2:
        batch = batch[:, :, None, None]
    if batch.ndim != 4 or batch.shape[1] != channels or batch.shape[2:] != (1, 1):
        raise ValueError(
            f"{head} expects N x {channels} or N x {channels} x 1 x 1 input, got {tuple(batch.shape)}"
        )
    return batch


def _init_linears(module: nn.Module) -> None:
    # As in the original, only the Linear layers are re-initialised (normal(0, 0.01), zero bias).
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _check(head: str, in_channels, mid_channels, num_classes, drop_out) -> tuple:
    prefix = f"head {head!r} option "
    return (
        opt.as_int(prefix + "'in_channels'", in_channels, minimum=1),
        opt.as_int(prefix + "'mid_channels'", mid_channels, minimum=1),
        opt.as_int(prefix + "'num_classes'", num_classes, minimum=1),
        opt.as_float(prefix + "'drop_out'", drop_out, minimum=0.0),
    )


class MobileNetV3Head(nn.Module):
    """Optional BatchNorm2d on the pooled feature, then Linear, Hardswish, Dropout, Linear.

    Takes ``N x in_channels`` (or ``N x in_channels x 1 x 1``); returns ``N x num_classes``.
    """

    def __init__(
        self,
        in_channels: int = 960,
        mid_channels: int = 1280,
        num_classes: int = 1000,
        drop_out: float = 0.2,
        with_bn: bool = False,
        common: HeadCommon = HeadCommon(),
    ) -> None:
        super().__init__()
        in_channels, mid_channels, num_classes, drop_out = _check(
            "mobilenet_v3_head", in_channels, mid_channels, num_classes, drop_out
        )
        self.in_channels = in_channels
        self.with_bn = opt.as_bool("head 'mobilenet_v3_head' option 'with_bn'", with_bn)
        if self.with_bn:
            self.channel_bn = common.batchnorm2d(in_channels)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, mid_channels),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=drop_out, inplace=True),
            nn.Linear(mid_channels, num_classes),
        )
        _init_linears(self)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = _as_nc11("mobilenet_v3_head", _single_tensor("mobilenet_v3_head", batch), self.in_channels)
        if self.with_bn:
            x = self.channel_bn(x)
        return self.classifier(torch.flatten(x, start_dim=1))


class MobileNetV3HeadTimm(nn.Module):
    """Optional BatchNorm2d, then 1x1 Conv, Hardswish, Flatten, Dropout, Linear (timm's head).

    Takes ``N x in_channels`` (or ``N x in_channels x 1 x 1``); returns ``N x num_classes``.
    """

    def __init__(
        self,
        in_channels: int = 960,
        mid_channels: int = 1280,
        num_classes: int = 1000,
        drop_out: float = 0.2,
        with_bn: bool = False,
        common: HeadCommon = HeadCommon(),
    ) -> None:
        super().__init__()
        in_channels, mid_channels, num_classes, drop_out = _check(
            "mobilenet_v3_head_timm", in_channels, mid_channels, num_classes, drop_out
        )
        self.in_channels = in_channels
        self.with_bn = opt.as_bool("head 'mobilenet_v3_head_timm' option 'with_bn'", with_bn)
        if self.with_bn:
            self.channel_bn = common.batchnorm2d(in_channels)
        self.classifier = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1),
            nn.Hardswish(inplace=True),
            nn.Flatten(start_dim=1),
            nn.Dropout(p=drop_out, inplace=True),
            nn.Linear(mid_channels, num_classes),
        )
        _init_linears(self)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = _as_nc11("mobilenet_v3_head_timm", _single_tensor("mobilenet_v3_head_timm", batch), self.in_channels)
        if self.with_bn:
            x = self.channel_bn(x)
        return self.classifier(x)


@register_model_head("mobilenet_v3_head")
def build_mobilenet_v3_head(model_config: Mapping, in_channels=960, mid_channels=1280, num_classes=1000,
                            drop_out=0.2, with_bn=False) -> MobileNetV3Head:
    return MobileNetV3Head(in_channels, mid_channels, num_classes, drop_out, with_bn,
                           HeadCommon.from_config(model_config))


@register_model_head("mobilenet_v3_head_timm")
def build_mobilenet_v3_head_timm(model_config: Mapping, in_channels=960, mid_channels=1280, num_classes=1000,
                                 drop_out=0.2, with_bn=False) -> MobileNetV3HeadTimm:
    return MobileNetV3HeadTimm(in_channels, mid_channels, num_classes, drop_out, with_bn,
                               HeadCommon.from_config(model_config))
