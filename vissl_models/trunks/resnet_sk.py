"""SimCLRv2 ResNet with selective kernels (``resnet_sk``), in the original's key layout.

The original keeps everything in ``net`` (stem, then four stages) and returns the spatial mean of
the last stage. Here ``net`` is a ``ModuleDict`` whose first five keys are ``"0"``..``"4"``, so the
state_dict keys (``net.0.0.weight``, ``net.1.blocks.0.projection.shortcut.2.weight``, ...) are the
original's, and two parameter-free blocks (``avgpool``, ``flatten``) make the pooled output a
requestable feature like any other.

``DEPTH`` accepts 50, 101, 152 and 200 (the SimCLRv2 family); the original only built 152.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..config import options as opt
from ..layers import Flatten, input_channels
from ..registry import register_model_trunk
from .base import FeatureTrunk, TrunkCommon, map_info, vector_info

# depth -> bottleneck blocks per stage
BLOCK_CONFIG = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}

FEATURE_MAPPING = {
    "res1": "0",
    "res2": "1",
    "res3": "2",
    "res4": "3",
    "res5": "4",
    "res5avg": "avgpool",
    "flatten": "flatten",
}

BN_EPS = 1e-5  # SimCLRv2's TF value, equal to PyTorch's default


@dataclass(frozen=True)
class ResNetSKOptions:
    """``MODEL.TRUNK.RESNETS_SK``; ``sk_ratio == 0`` builds plain 3x3 convolutions."""

    depth: int = 152
    width_multiplier: int = 3
    sk_ratio: float = 0.0625

    @classmethod
    def from_config(cls, section: Mapping) -> "ResNetSKOptions":
        fields = [
            ("depth", opt.choice_of(sorted(BLOCK_CONFIG))),
            ("width_multiplier", opt.positive_int),
            ("sk_ratio", opt.non_negative_float),
        ]
        return cls(**opt.read_options(section, "MODEL.TRUNK.RESNETS_SK.", fields))


def _conv(cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    """Bias-free conv with "same" padding for odd kernels (TF-style SimCLRv2 layers)."""
    return nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False)


class BatchNormRelu(nn.Sequential):
    """BatchNorm then ReLU (or Identity); a Sequential so the norm's keys end in ``.0.*``."""

    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__(nn.BatchNorm2d(channels, eps=BN_EPS), nn.ReLU() if relu else nn.Identity())


class SelectiveKernel(nn.Module):
    """Two 3x3 paths computed as one conv, mixed per channel by a softmax over the paths.

    The mixing weights come from the summed paths' global average, through a small bottleneck
    of ``max(int(out_channels * sk_ratio), min_dim)`` channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, sk_ratio: float, min_dim: int = 32) -> None:
        super().__init__()
        if sk_ratio <= 0:
            raise ValueError(f"SelectiveKernel needs sk_ratio > 0, got {sk_ratio}")
        mid = max(int(out_channels * sk_ratio), min_dim)
        self.main_conv = nn.Sequential(_conv(in_channels, 2 * out_channels, stride=stride), BatchNormRelu(2 * out_channels))
        self.mixing_conv = nn.Sequential(
            _conv(out_channels, mid, kernel_size=1), BatchNormRelu(mid), _conv(mid, 2 * out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 2C, H, W) -> (B, 2, C, H, W): the first C channels are path 0, as in the original.
        paths = self.main_conv(x).unflatten(1, (2, -1))
        summary = paths.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        weights = self.mixing_conv(summary).unflatten(1, (2, -1)).softmax(dim=1)
        return (paths * weights).sum(dim=1)


class Projection(nn.Module):
    """Shortcut projection; with SK, average-pool then 1x1 conv (ResNet-D style) instead of a strided 1x1."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, sk_ratio: float = 0.0) -> None:
        super().__init__()
        if sk_ratio > 0:
            # Pad right/bottom by one so a 2x2 pool keeps "same" geometry (TF padding).
            self.shortcut = nn.Sequential(
                nn.ZeroPad2d((0, 1, 0, 1)),
                nn.AvgPool2d(kernel_size=2, stride=stride, padding=0),
                _conv(in_channels, out_channels, kernel_size=1),
            )
        else:
            self.shortcut = _conv(in_channels, out_channels, kernel_size=1, stride=stride)
        self.bn = BatchNormRelu(out_channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.shortcut(x))


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (or selective kernel) -> 1x1 x4, added to the (projected) input, then ReLU."""

    expansion = 4

    def __init__(
        self, in_channels: int, channels: int, stride: int, sk_ratio: float = 0.0, use_projection: bool = False
    ) -> None:
        super().__init__()
        out = channels * self.expansion
        self.projection = Projection(in_channels, out, stride, sk_ratio) if use_projection else nn.Identity()
        layers = [_conv(in_channels, channels, kernel_size=1), BatchNormRelu(channels)]
        if sk_ratio > 0:
            layers.append(SelectiveKernel(channels, channels, stride, sk_ratio))
        else:
            layers += [_conv(channels, channels, stride=stride), BatchNormRelu(channels)]
        layers += [_conv(channels, out, kernel_size=1), BatchNormRelu(out, relu=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.projection(x) + self.net(x))


class Blocks(nn.Module):
    """One stage: a projecting first block (carrying the stride), then identity-shortcut blocks."""

    def __init__(self, num_blocks: int, in_channels: int, channels: int, stride: int, sk_ratio: float = 0.0) -> None:
        super().__init__()
        self.channels_out = channels * BottleneckBlock.expansion
        self.blocks = nn.ModuleList([BottleneckBlock(in_channels, channels, stride, sk_ratio, use_projection=True)])
        for _ in range(num_blocks - 1):
            self.blocks.append(BottleneckBlock(self.channels_out, channels, 1, sk_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Stem(nn.Sequential):
    """With SK, three 3x3 convs (first strided); without, one 7x7/2 conv. Then BN-ReLU and 3x3/2 max-pool."""

    def __init__(self, in_channels: int, sk_ratio: float, width_multiplier: int) -> None:
        half = 64 * width_multiplier // 2
        if sk_ratio > 0:
            layers = [
                _conv(in_channels, half, stride=2),
                BatchNormRelu(half),
                _conv(half, half),
                BatchNormRelu(half),
                _conv(half, 2 * half),
            ]
        else:
            layers = [_conv(in_channels, 2 * half, kernel_size=7, stride=2)]
        layers += [BatchNormRelu(2 * half), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
        super().__init__(*layers)


class SpatialMean(nn.Module):
    """Mean over H and W, keeping them as 1x1 (the original's ``mean(dim=[2, 3])`` before flattening)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class ResNetSelectiveKernel(FeatureTrunk):
    """SimCLRv2 ResNet(-SK). Default output: the pooled, flattened last stage, ``(B, 2048 * width)``.

    Feature names: ``res1`` (stem), ``res2``..``res5`` (stages), ``res5avg`` (B, C, 1, 1, the default
    feature) and ``flatten`` (B, C); the block names ``0``..``4``, ``avgpool`` and ``flatten`` are
    accepted too.
    """

    def __init__(self, options: ResNetSKOptions = ResNetSKOptions(), common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        self.options = options
        w, sk = options.width_multiplier, options.sk_ratio
        blocks = {"0": Stem(input_channels(common.stem_input_type), sk, w)}
        channels_in = 64 * w
        for i, (n, stride) in enumerate(zip(BLOCK_CONFIG[options.depth], (1, 2, 2, 2))):
            stage = Blocks(n, channels_in, 64 * w * 2**i, stride, sk)
            blocks[str(i + 1)] = stage
            channels_in = stage.channels_out
        blocks["avgpool"] = SpatialMean()
        blocks["flatten"] = Flatten(1)
        self.channels_out = channels_in
        self.net = nn.ModuleDict(blocks)
        self.feat_eval_mapping = dict(FEATURE_MAPPING)
        stages = [map_info(f"res{i + 2}", 256 * w * 2**i, 4 * 2**i, str(i + 1)) for i in range(4)]
        self.feature_info = [
            map_info("res1", 64 * w, 4, "0"),
            *stages,
            map_info("res5avg", channels_in, None, "avgpool"),
            vector_info("flatten", channels_in, "flatten"),
        ]
        self.default_feature = "res5avg"
        self.final_feature = "res5"
        self.intermediate_features = ["res1", "res2", "res3", "res4", "res5"]

    @property
    def _feature_blocks(self) -> nn.ModuleDict:
        # The shared forward runs ``_feature_blocks``; here they live under the original's ``net``.
        return self.net


@register_model_trunk("resnet_sk")
def build_resnet_sk(model_config: Mapping, model_name: str = "resnet_sk") -> ResNetSelectiveKernel:
    """Build ``resnet_sk`` from ``MODEL`` (reads ``TRUNK.RESNETS_SK`` and the common options)."""
    common = TrunkCommon.from_config(model_config, model_name)
    return ResNetSelectiveKernel(ResNetSKOptions.from_config(model_config["TRUNK"]["RESNETS_SK"]), common)
