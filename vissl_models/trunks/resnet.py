"""ResNe(X)t trunk (``resnet``), with the original's options, key layout and feature names.

Blocks are torchvision's ``BasicBlock``/``Bottleneck``, so torchvision ResNet weights load once
their keys get the ``_feature_blocks.`` prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping

from torch import nn

from ..config import options as opt
from ..layers import NORM_NAMES, Flatten, get_norm, input_channels, standardize_convolutions
from ..registry import register_model_trunk
from .base import FeatureInfo, FeatureTrunk, TrunkCommon, map_info, vector_info

# depth -> (blocks per stage, bottleneck?)
BLOCK_CONFIG = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}

FEATURE_MAPPING = {
    "conv1": "conv1_relu",
    "res1": "maxpool",
    "res2": "layer1",
    "res3": "layer2",
    "res4": "layer3",
    "res5": "layer4",
    "res5avg": "avgpool",
    "flatten": "flatten",
}


@dataclass(frozen=True)
class ResNetOptions:
    """``MODEL.TRUNK.RESNETS``."""

    depth: int = 50
    width_multiplier: int = 1
    norm: str = "BatchNorm"
    groupnorm_groups: int = 32
    standardize_convolutions: bool = False
    groups: int = 1
    zero_init_residual: bool = False
    width_per_group: int = 64
    layer4_stride: int = 2

    @classmethod
    def from_config(cls, section: Mapping) -> "ResNetOptions":
        fields = [
            ("depth", opt.choice_of(sorted(BLOCK_CONFIG))),
            ("width_multiplier", opt.positive_int),
            ("norm", opt.choice_of(NORM_NAMES)),
            ("groupnorm_groups", opt.positive_int),
            ("standardize_convolutions", opt.as_bool),
            ("groups", opt.positive_int),
            ("zero_init_residual", opt.as_bool),
            ("width_per_group", opt.positive_int),
            ("layer4_stride", opt.choice_of((1, 2))),
        ]
        return cls(**opt.read_options(section, "MODEL.TRUNK.RESNETS.", fields))


def resnet_feature_info(width: int, expansion: int, layer4_stride: int) -> List[FeatureInfo]:
    """Public features of a ResNe(X)t whose stem has ``width`` channels."""
    stages = [
        map_info(f"res{i + 2}", width * 2**i * expansion, (4, 8, 16, 16 * layer4_stride)[i], f"layer{i + 1}")
        for i in range(4)
    ]
    last = stages[-1].channels
    return [
        map_info("conv1", width, 2, "conv1_relu"),
        map_info("res1", width, 4, "maxpool"),
        *stages,
        map_info("res5avg", last, None, "avgpool"),
        vector_info("flatten", last, "flatten"),
    ]


class ResNeXt(FeatureTrunk):
    """ResNe(X)t with the original's ``_feature_blocks`` layout.

    Feature names: ``conv1, res1, res2, res3, res4, res5, res5avg, flatten`` and the block names
    (``conv1, bn1, conv1_relu, maxpool, layer1..layer4, avgpool, flatten``). Default feature
    ``res5avg``; ``forward`` without names returns ``flatten``, as the original.
    """

    def __init__(self, options: ResNetOptions = ResNetOptions(), common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        from torchvision.models.resnet import BasicBlock, Bottleneck

        self.options = options
        layers, bottleneck = BLOCK_CONFIG[options.depth]
        block = Bottleneck if bottleneck else BasicBlock
        if not bottleneck and (options.groups != 1 or options.width_per_group != 64):
            raise ValueError(
                f"MODEL.TRUNK.RESNETS: depth {options.depth} uses basic blocks, which need GROUPS=1 "
                f"and WIDTH_PER_GROUP=64 (got {options.groups} and {options.width_per_group})"
            )
        norm = get_norm(options.norm, options.groupnorm_groups)
        width = 64 * options.width_multiplier
        self._inplanes = width

        def make_stage(planes: int, n: int, stride: int) -> nn.Sequential:
            downsample = None
            out = planes * block.expansion
            if stride != 1 or self._inplanes != out:
                downsample = nn.Sequential(
                    nn.Conv2d(self._inplanes, out, kernel_size=1, stride=stride, bias=False), norm(out)
                )
            blocks = [
                block(self._inplanes, planes, stride, downsample, options.groups, options.width_per_group, 1, norm)
            ]
            self._inplanes = out
            for _ in range(1, n):
                blocks.append(block(out, planes, groups=options.groups, base_width=options.width_per_group, norm_layer=norm))
            return nn.Sequential(*blocks)

        stem_conv = nn.Conv2d(input_channels(common.stem_input_type), width, kernel_size=7, stride=2, padding=3, bias=False)
        self._feature_blocks = nn.ModuleDict(
            [
                ("conv1", stem_conv),
                ("bn1", norm(width)),
                ("conv1_relu", nn.ReLU(inplace=True)),
                ("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ("layer1", make_stage(width, layers[0], 1)),
                ("layer2", make_stage(width * 2, layers[1], 2)),
                ("layer3", make_stage(width * 4, layers[2], 2)),
                ("layer4", make_stage(width * 8, layers[3], options.layer4_stride)),
                ("avgpool", nn.AdaptiveAvgPool2d((1, 1))),
                ("flatten", Flatten(1)),
            ]
        )
        del self._inplanes
        self.feat_eval_mapping = dict(FEATURE_MAPPING)
        self.feature_info = resnet_feature_info(width, block.expansion, options.layer4_stride)
        self.default_feature = "res5avg"
        self.final_feature = "res5"
        # timm's ResNet stages: the stem after its ReLU, then the four residual stages.
        self.intermediate_features = ["conv1", "res2", "res3", "res4", "res5"]
        self._init_weights(options.zero_init_residual, "bn3" if bottleneck else "bn2")
        if options.standardize_convolutions:
            standardize_convolutions(self)

    def _init_weights(self, zero_init_residual: bool, last_norm: str) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity.
            for stage in ("layer1", "layer2", "layer3", "layer4"):
                for block in self._feature_blocks[stage]:
                    nn.init.zeros_(getattr(block, last_norm).weight)


@register_model_trunk("resnet")
def build_resnet(model_config: Mapping, model_name: str = "resnet") -> ResNeXt:
    """Build the ``resnet`` trunk from ``MODEL`` (reads ``TRUNK.RESNETS`` and the common options)."""
    common = TrunkCommon.from_config(model_config, model_name)
    return ResNeXt(ResNetOptions.from_config(model_config["TRUNK"]["RESNETS"]), common)
