"""The original's five AlexNet trunks, built from one description each.

``alexnet_bvlc`` (Caffe's supervised AlexNet), ``alexnet_colorization`` (L channel input),
``alexnet_deepcluster`` (fixed Sobel filtering in front), ``alexnet_jigsaw`` and ``alexnet_rotnet``
differ only in widths, strides, grouping, where BatchNorm and local response norm sit, and what
the first conv sees. Each keeps the original's nine ``_feature_blocks`` (keys
``_feature_blocks.<i>.*``) named ``conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5, flatten``.

As in the original, ``flatten`` is ``Flatten(dim=-1)``, which leaves a 4-d ``pool5`` unchanged, and
several requested features come back in the order they were asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

import torch
from torch import nn

from ..layers import Flatten, input_channels, transform_input_type
from ..registry import register_model_trunk
from .base import FeatureInfo, FeatureTrunk, TrunkCommon, map_info

FEATURE_NAMES = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "flatten")


@dataclass(frozen=True)
class ConvSpec:
    """One conv block: ``Conv2d`` (with bias), optional ``BatchNorm2d``, ``ReLU``."""

    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    batch_norm: bool = False


@dataclass(frozen=True)
class AlexNetArch:
    """What distinguishes one AlexNet variant from another.

    ``lrn`` places ``LocalResponseNorm(5, 1e-4, 0.75)`` in pool1/pool2: ``"before_pool"``,
    ``"after_pool"`` or ``""`` for none. ``sobel`` puts the fixed grayscale + Sobel filters
    (3 -> 2 channels) in front of conv1.
    """

    convs: Tuple[ConvSpec, ConvSpec, ConvSpec, ConvSpec, ConvSpec]
    lrn: str = ""
    sobel: bool = False


def _grouped(widths, kernels, strides, paddings, groups, batch_norm) -> Tuple[ConvSpec, ...]:
    return tuple(ConvSpec(*args) for args in zip(widths, kernels, strides, paddings, groups, batch_norm))


# Kernels/paddings are AlexNet's everywhere: 11, 5, 3, 3, 3 with padding (p1), 2, 1, 1, 1.
_KERNELS = (11, 5, 3, 3, 3)
_CAFFE_GROUPS = (1, 2, 1, 2, 2)  # the two-GPU split of the 2012 network

ARCHS: Dict[str, AlexNetArch] = {
    "alexnet_bvlc": AlexNetArch(
        _grouped((96, 256, 384, 384, 256), _KERNELS, (4, 1, 1, 1, 1), (0, 2, 1, 1, 1), _CAFFE_GROUPS, (False,) * 5),
        lrn="before_pool",
    ),
    "alexnet_colorization": AlexNetArch(
        _grouped((96, 256, 384, 384, 256), _KERNELS, (4, 1, 1, 1, 1), (0, 2, 1, 1, 1), _CAFFE_GROUPS, (True,) * 5),
    ),
    "alexnet_deepcluster": AlexNetArch(
        _grouped((96, 256, 384, 384, 256), _KERNELS, (4, 1, 1, 1, 1), (2, 2, 1, 1, 1), (1,) * 5, (True,) * 5),
        sobel=True,
    ),
    "alexnet_jigsaw": AlexNetArch(
        _grouped(
            (96, 256, 384, 384, 256), _KERNELS, (2, 1, 1, 1, 1), (0, 2, 1, 1, 1), _CAFFE_GROUPS,
            (False, False, True, True, True),
        ),
        lrn="after_pool",
    ),
    "alexnet_rotnet": AlexNetArch(
        _grouped((64, 192, 384, 256, 256), _KERNELS, (4, 1, 1, 1, 1), (2, 2, 1, 1, 1), (1,) * 5, (True,) * 5),
    ),
}


def conv_block(in_channels: int, spec: ConvSpec) -> nn.Sequential:
    """``Conv2d [-> BatchNorm2d] -> ReLU`` as one Sequential (keys ``0.*``, then ``1.*`` for BN)."""
    layers: List[nn.Module] = [
        nn.Conv2d(
            in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride, padding=spec.padding, groups=spec.groups
        )
    ]
    if spec.batch_norm:
        layers.append(nn.BatchNorm2d(spec.out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def pool_block(lrn: str) -> nn.Module:
    """3x3/2 max-pool, with local response norm before or after it when ``lrn`` says so."""
    pool = nn.MaxPool2d(kernel_size=3, stride=2)
    if not lrn:
        return pool
    norm = nn.LocalResponseNorm(size=5, alpha=0.0001, beta=0.75)
    return nn.Sequential(norm, pool) if lrn == "before_pool" else nn.Sequential(pool, norm)


def alexnet_blocks(in_channels: int, arch: AlexNetArch) -> List[nn.Module]:
    """The nine feature blocks, in ``FEATURE_NAMES`` order."""
    c1, c2, c3, c4, c5 = arch.convs
    return [
        conv_block(in_channels, c1),
        pool_block(arch.lrn),
        conv_block(c1.out_channels, c2),
        pool_block(arch.lrn),
        conv_block(c2.out_channels, c3),
        conv_block(c3.out_channels, c4),
        conv_block(c4.out_channels, c5),
        nn.MaxPool2d(kernel_size=3, stride=2),
        Flatten(),  # dim=-1: a no-op on pool5's 4-d output, as in the original
    ]


def sobel_filter() -> nn.Sequential:
    """Frozen RGB -> gray (channel mean) -> horizontal/vertical Sobel gradients (2 channels)."""
    gray = nn.Conv2d(3, 1, kernel_size=1)
    sobel = nn.Conv2d(1, 2, kernel_size=3, padding=1)
    with torch.no_grad():
        gray.weight.fill_(1.0 / 3.0)
        gray.bias.zero_()
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        sobel.weight.copy_(torch.stack([gx, gx.t()]).unsqueeze(1))
        sobel.bias.zero_()
    module = nn.Sequential(gray, sobel)
    module.requires_grad_(False)
    return module


def alexnet_feature_info(arch: AlexNetArch) -> List[FeatureInfo]:
    """Public features of an AlexNet variant; every max-pool halves the resolution."""
    c1, c2, c3, c4, c5 = arch.convs
    r = c1.stride
    rows = [
        ("conv1", c1.out_channels, r), ("pool1", c1.out_channels, 2 * r),
        ("conv2", c2.out_channels, 2 * r), ("pool2", c2.out_channels, 4 * r),
        ("conv3", c3.out_channels, 4 * r), ("conv4", c4.out_channels, 4 * r), ("conv5", c5.out_channels, 4 * r),
        ("pool5", c5.out_channels, 8 * r),
        ("flatten", c5.out_channels, 8 * r),  # Flatten(dim=-1) keeps pool5's map
    ]
    return [map_info(name, c, red, str(i)) for i, (name, c, red) in enumerate(rows)]


class AlexNet(FeatureTrunk):
    """An AlexNet variant described by ``arch`` (see ``ARCHS``).

    Feature names: ``conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5, flatten`` (the last
    is the default, a map as in the original); the block indices ``"0"``..``"8"`` are accepted too.
    Intermediates are the five convolutions.
    """

    requested_order = True  # the original AlexNets return features in the order asked

    def __init__(self, arch: AlexNetArch, common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        self.arch = arch
        if arch.sobel:
            self.sobel = sobel_filter()
            in_channels = 2
        else:
            self.sobel = None
            in_channels = input_channels(common.stem_input_type)
        self._feature_blocks = nn.ModuleDict((str(i), b) for i, b in enumerate(alexnet_blocks(in_channels, arch)))
        self.feat_eval_mapping = {name: str(i) for i, name in enumerate(FEATURE_NAMES)}
        self.feature_info = alexnet_feature_info(arch)
        self.default_feature = "flatten"
        self.final_feature = "pool5"
        self.intermediate_features = ["conv1", "conv2", "conv3", "conv4", "conv5"]

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = transform_input_type(x, self.input_type)
        return self.sobel(x) if self.sobel is not None else x


def _build(name: str, model_config: Mapping) -> AlexNet:
    if name == "alexnet_colorization":
        common = TrunkCommon.from_config(model_config, name, ("lab",))
    else:
        # The original's other AlexNets take the 3-channel input as given whatever INPUT_TYPE says
        # (one of its configs runs alexnet_deepcluster on Lab images), so INPUT_TYPE is not applied.
        common = TrunkCommon.from_config(model_config, name, apply_input_type=False)
    return AlexNet(ARCHS[name], common)


def _register(name: str) -> None:
    def build(model_config: Mapping, model_name: str = name) -> AlexNet:
        return _build(name, model_config)

    build.__name__ = "build_" + name
    build.__doc__ = f"Build the ``{name}`` trunk from ``MODEL`` (only the common options apply)."
    register_model_trunk(name)(build)


for _name in ARCHS:
    _register(_name)
