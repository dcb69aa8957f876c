"""MobileNet-V3 classifier heads: ``mobilenet_v3_head`` (torchvision layout) and
``mobilenet_v3_head_timm`` (timm layout: a 1x1 conv instead of the first Linear).

Keys: ``classifier.<i>.*`` (and ``channel_bn.*`` with ``with_bn``), as in the original, so the
classifier weights of a torchvision/timm MobileNet-V3 load as head weights.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from ..config import options as opt
from ..registry import register_model_head
from .common import HeadCommon, ModelConfig, dropout_rate, read_head_options, single_tensor

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
    # Linear layers start from N(0, 0.01) weights and zero biases (torchvision's classifier init);
    # the 1x1 conv of the timm layout keeps PyTorch's default init.
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            nn.init.zeros_(layer.bias)


MOBILENET_V3_OPTIONS = (
    ("in_channels", opt.positive_int),
    ("mid_channels", opt.positive_int),
    ("num_classes", opt.positive_int),
    ("drop_out", dropout_rate),
    ("with_bn", opt.as_bool),
)


class _MobileNetV3HeadBase(nn.Module):
    """Reads the options, builds the optional ``channel_bn`` and the ``classifier`` (from
    ``_classifier``), and runs ``N x in_channels (x 1 x 1)`` inputs through them.

    Options:
        in_channels (int, default 960), mid_channels (int, default 1280), num_classes (int, default 1000).
        drop_out (in [0, 1), default 0.2).
        with_bn (bool, default false): BatchNorm2d (``MODEL.HEAD`` eps/momentum) on the input.
    """

    head_name = ""

    def __init__(
        self,
        model_config: ModelConfig,
        in_channels: int = 960,
        mid_channels: int = 1280,
        num_classes: int = 1000,
        drop_out: float = 0.2,
        with_bn: bool = False,
    ) -> None:
        super().__init__()
        common = HeadCommon.of(model_config)
        o = read_head_options(self.head_name, dict(
            in_channels=in_channels, mid_channels=mid_channels, num_classes=num_classes, drop_out=drop_out,
            with_bn=with_bn), MOBILENET_V3_OPTIONS)
        self.in_channels = self.input_width = o["in_channels"]
        self.with_bn = o["with_bn"]
        if self.with_bn:
            self.channel_bn = common.batchnorm2d(self.in_channels)
        self.classifier = self._classifier(self.in_channels, o["mid_channels"], o["num_classes"], o["drop_out"])
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


@register_model_head("mobilenet_v3_head")
class MobileNetV3Head(_MobileNetV3HeadBase):
    """``mobilenet_v3_head``: optional BatchNorm2d on the pooled feature, then Linear,
    Hardswish, Dropout, Linear.

    Options: in_channels (960), mid_channels (1280), num_classes (1000), drop_out (0.2), with_bn
    (false); see ``_MobileNetV3HeadBase``.

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


@register_model_head("mobilenet_v3_head_timm")
class MobileNetV3HeadTimm(_MobileNetV3HeadBase):
    """``mobilenet_v3_head_timm``: optional BatchNorm2d, then 1x1 Conv, Hardswish, Flatten,
    Dropout, Linear (timm's head).

    Options: in_channels (960), mid_channels (1280), num_classes (1000), drop_out (0.2), with_bn
    (false); see ``_MobileNetV3HeadBase``.

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
