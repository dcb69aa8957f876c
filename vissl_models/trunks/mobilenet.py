"""MobileNet-V3 trunks: ``mobilenetv3_tv`` (torchvision blocks) and ``mobilenetv3_timm`` (timm blocks).

Both keep the library model under ``model`` (keys ``model.features.*`` for torchvision,
``model.conv_stem/bn1/blocks.*`` for timm) with the classifier removed, as the original did, so
torchvision/timm MobileNet-V3 weights load once their keys get the ``model.`` prefix.

Feature names: ``trunk`` (last feature map), ``trunk_pool`` (its global average),
``trunk_pool_norm`` (L2-normalised); timm adds ``flatten`` (timm's pre-logits head output) and
``flatten_norm``. Without names the trunk returns its pooled feature. The original skipped
unknown names and ignored ``MODEL.INPUT_TYPE`` (its stem takes RGB); here both are errors.
Activation checkpointing is not applied, as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..config.loader import ConfigError
from ..registry import register_model_trunk

MODEL_NAMES = ("mobilenetv3_large_100",)
TIMM_INSTALL_HINT = 'pip install "vissl_models[timm]"'


@dataclass(frozen=True)
class MobileNetOptions:
    """``MODEL.TRUNK.MOBILE_NET``."""

    name: str = "mobilenetv3_large_100"
    timm_bn: bool = False
    trunk_only: bool = True

    @classmethod
    def from_config(cls, section: Mapping) -> "MobileNetOptions":
        key = "MODEL.TRUNK.MOBILE_NET."
        if opt.as_bool(key + "PRETRAINED", section.get("PRETRAINED", False)):
            raise ConfigError(
                f"{key}PRETRAINED: true would download weights, and vissl_models never downloads weights. "
                "Set it to false and load a checkpoint file instead with MODEL.WEIGHTS_INIT.PARAMS_FILE "
                "(trunk keys 'model.*', i.e. the torchvision/timm MobileNet-V3 keys prefixed with 'model.')."
            )
        return cls(
            name=opt.choice(key + "NAME", section["NAME"], MODEL_NAMES),
            timm_bn=opt.as_bool(key + "TIMM_BN", section.get("TIMM_BN", False)),
            trunk_only=opt.as_bool(key + "TRUNK_ONLY", section.get("TRUNK_ONLY", True)),
        )


def _check_rgb(model_config: Mapping, trunk: str) -> None:
    input_type = model_config["INPUT_TYPE"]
    if input_type != "rgb":
        raise ConfigError(f"MODEL.INPUT_TYPE: got {input_type!r}, trunk {trunk!r} takes 'rgb' input only")


def _pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), start_dim=1)


class _MobileNetV3Trunk(nn.Module):
    """Computes the last feature map once and derives each requested feature from it."""

    FEATURES = ("trunk", "trunk_pool", "trunk_pool_norm")
    default_feature = "trunk_pool"

    @property
    def feature_names(self) -> List[str]:
        """Names accepted in ``out_feat_keys``."""
        return list(self.FEATURES)

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _feature(self, name: str, trunk: torch.Tensor, cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        if name in cache:
            return cache[name]
        if name == "trunk":
            out = trunk
        elif name == "trunk_pool":
            out = _pool(trunk)
        elif name == "trunk_pool_norm":
            out = F.normalize(self._feature("trunk_pool", trunk, cache), dim=-1)
        elif name == "flatten":
            out = self.model.forward_head(trunk, pre_logits=True)
        else:  # flatten_norm
            out = F.normalize(self._feature("flatten", trunk, cache), dim=-1)
        cache[name] = out
        return out

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        names = list(out_feat_keys) if out_feat_keys else [self.default_feature]
        unknown = [n for n in names if n not in self.FEATURES]
        if unknown:
            raise ValueError(f"features {unknown} do not exist in this trunk; valid names: {list(self.FEATURES)}")
        trunk = self.trunk_features(x)
        cache: Dict[str, torch.Tensor] = {}
        # Requested order, duplicates included, as the original returned them.
        return [self._feature(name, trunk, cache) for name in names]


class MobileNetV3TV(_MobileNetV3Trunk):
    """torchvision's MobileNet-V3 Large without its classifier (``mobilenetv3_tv``).

    ``timm_bn`` builds BatchNorm with eps 1e-5 / momentum 0.1 (timm's training settings) instead
    of torchvision's 1e-3 / 0.01.
    """

    def __init__(self, options: MobileNetOptions = MobileNetOptions()) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_large

        self.options = options
        norm_layer = partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1) if options.timm_bn else None
        self.model = mobilenet_v3_large(weights=None, norm_layer=norm_layer)
        self.model.classifier = nn.Identity()

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class MobileNetV3Timm(_MobileNetV3Trunk):
    """timm's ``mobilenetv3_large_100`` without its classifier (``mobilenetv3_timm``).

    With ``trunk_only`` (the default) timm's 1x1 ``conv_head`` is removed too and the default
    output is the pooled last feature map (960); otherwise it is timm's pre-logits output
    (pool, conv_head, hardswish: 1280). ``flatten`` is always timm's pre-logits path, so with
    ``trunk_only`` it is the hardswish of the pooled feature, as in the original.
    """

    FEATURES = ("flatten", "flatten_norm", "trunk_pool", "trunk_pool_norm", "trunk")

    def __init__(self, model: nn.Module, options: MobileNetOptions = MobileNetOptions()) -> None:
        super().__init__()
        self.options = options
        self.model = model
        if options.trunk_only:
            self.model.conv_head = nn.Identity()
        self.model.classifier = nn.Identity()
        self.default_feature = "trunk_pool" if options.trunk_only else "flatten"

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"trunk 'mobilenetv3_timm' needs timm: {TIMM_INSTALL_HINT}") from e
    return timm


@register_model_trunk("mobilenetv3_tv")
def build_mobilenetv3_tv(model_config: Mapping, model_name: str = "mobilenetv3_tv") -> MobileNetV3TV:
    """Build ``mobilenetv3_tv`` from ``MODEL`` (reads ``TRUNK.MOBILE_NET``)."""
    _check_rgb(model_config, model_name)
    return MobileNetV3TV(MobileNetOptions.from_config(model_config["TRUNK"]["MOBILE_NET"]))


@register_model_trunk("mobilenetv3_timm")
def build_mobilenetv3_timm(model_config: Mapping, model_name: str = "mobilenetv3_timm") -> MobileNetV3Timm:
    """Build ``mobilenetv3_timm`` from ``MODEL`` (reads ``TRUNK.MOBILE_NET``; needs timm)."""
    _check_rgb(model_config, model_name)
    options = MobileNetOptions.from_config(model_config["TRUNK"]["MOBILE_NET"])
    timm = _import_timm()
    return MobileNetV3Timm(timm.create_model(options.name, pretrained=False), options)
