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
from .common import HeadCommon, single_tensor

Batch = Union[torch.Tensor, Sequence[torch.Tensor]]


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


class _MobileNetV3HeadBase(nn.Module):
    """Checks the options, builds the optional ``channel_bn`` and the ``classifier`` (from
    ``_classifier``), and runs ``N x in_channels (x 1 x 1)`` inputs through them."""

    head_name = ""

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
        prefix = f"head {self.head_name!r} option "
        in_channels = opt.as_int(prefix + "'in_channels'", in_channels, minimum=1)
        mid_channels = opt.as_int(prefix + "'mid_channels'", mid_channels, minimum=1)
        num_classes = opt.as_int(prefix + "'num_classes'", num_classes, minimum=1)
        drop_out = opt.as_float(prefix + "'drop_out'", drop_out, minimum=0.0)
        self.in_channels = in_channels
        self.with_bn = opt.as_bool(prefix + "'with_bn'", with_bn)
        if self.with_bn:
            self.channel_bn = common.batchnorm2d(in_channels)
        self.classifier = self._classifier(in_channels, mid_channels, num_classes, drop_out)
        _init_linears(self)

    def _classifier(self, in_channels: int, mid_channels: int, num_classes: int, drop_out: float) -> nn.Sequential:
        raise NotImplementedError

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = _as_nc11(self.head_name, single_tensor(self.head_name, batch), self.in_channels)
        if self.with_bn:
            x = self.channel_bn(x)
        return self._classify(x)


class MobileNetV3Head(_MobileNetV3HeadBase):
    """Optional BatchNorm2d on the pooled feature, then Linear, Hardswish, Dropout, Linear.

    Takes ``N x in_channels`` (or ``N x in_channels x 1 x 1``); returns ``N x num_classes``.
    """

    head_name = "mobilenet_v3_head"

    def _classifier(self, in_channels: int, mid_channels: int, num_classes: int, drop_out: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(in_channels, mid_channels),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=drop_out, inplace=True),
            nn.Linear(mid_channels, num_classes),
        )

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, start_dim=1))


class MobileNetV3HeadTimm(_MobileNetV3HeadBase):
    """Optional BatchNorm2d, then 1x1 Conv, Hardswish, Flatten, Dropout, Linear (timm's head).

    Takes ``N x in_channels`` (or ``N x in_channels x 1 x 1``); returns ``N x num_classes``.
    """

    head_name = "mobilenet_v3_head_timm"

    def _classifier(self, in_channels: int, mid_channels: int, num_classes: int, drop_out: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1),
            nn.Hardswish(inplace=True),
            nn.Flatten(start_dim=1),
            nn.Dropout(p=drop_out, inplace=True),
            nn.Linear(mid_channels, num_classes),
        )


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
