"""MobileNet-V3 trunks: ``mobilenetv3_tv`` (torchvision blocks) and ``mobilenetv3_timm`` (timm blocks).

Both keep the library model under ``model`` (keys ``model.features.*`` for torchvision,
``model.conv_stem/bn1/blocks.*`` for timm) with the classifier removed, as the original did, so
torchvision/timm MobileNet-V3 weights load once their keys get the ``model.`` prefix.

Feature names: ``trunk`` (last feature map), ``trunk_pool`` (its global average),
``trunk_pool_norm`` (L2-normalised); timm adds ``flatten`` (timm's pre-logits head output) and
``flatten_norm``. Without names the trunk returns its pooled feature. The original skipped
unknown names and ignored ``MODEL.INPUT_TYPE`` (its stem takes RGB); here both are errors.
Activation checkpointing (which the original did not apply) recomputes each feature level.
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
from ..layers.checkpointing import checkpoint_without_bn_double_update
from ..registry import register_model_trunk
from .base import Trunk, TrunkCommon, map_info, vector_info

MODEL_NAMES = ("mobilenetv3_large_100",)
TIMM_INSTALL_HINT = 'pip install "vissl_models[timm]"'


@dataclass(frozen=True)
class MobileNetOptions:
    """``MODEL.TRUNK.MOBILE_NET``."""

    name: str = "mobilenetv3_large_100"
    pretrained: bool = False
    timm_bn: bool = False
    trunk_only: bool = True

    @classmethod
    def from_config(cls, section: Mapping) -> "MobileNetOptions":
        key = "MODEL.TRUNK.MOBILE_NET."
        # PRETRAINED, TIMM_BN and TRUNK_ONLY may be absent from older configs.
        section = {"PRETRAINED": False, "TIMM_BN": False, "TRUNK_ONLY": True, **section}
        fields = [
            ("pretrained", opt.as_bool),
            ("name", opt.choice_of(MODEL_NAMES)),
            ("timm_bn", opt.as_bool),
            ("trunk_only", opt.as_bool),
        ]
        options = cls(**opt.read_options(section, key, fields))
        if options.pretrained:
            raise ConfigError(
                f"{key}PRETRAINED: true would download weights, and vissl_models never downloads weights. "
                "Set it to false and load a checkpoint file instead with MODEL.WEIGHTS_INIT.PARAMS_FILE "
                "(trunk keys 'model.*', i.e. the torchvision/timm MobileNet-V3 keys prefixed with 'model.')."
            )
        return options


def _pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), start_dim=1)


class _MobileNetV3Trunk(Trunk):
    """Computes the last feature map once and derives each requested feature from it.

    Subclasses set ``self._layers`` (the modules the input runs through in order: stem, then every
    inverted-residual block, then the last conv) and ``self._stage_ends`` (indices into it of the
    five timm feature levels, reductions 2 to 32). Grad checkpointing recomputes each level's layers
    in backward.
    """

    FEATURES = ("trunk", "trunk_pool", "trunk_pool_norm")

    def __init__(self, common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        self.default_feature = "trunk_pool"
        self.final_feature = "trunk"
        self._stage_ends: List[int] = []

    def _set_feature_info(self, trunk_width: int, flatten_width: int = 0) -> None:
        widths = {"trunk": trunk_width, "trunk_pool": trunk_width, "trunk_pool_norm": trunk_width,
                  "flatten": flatten_width, "flatten_norm": flatten_width}
        self.feature_info = [
            map_info(n, trunk_width, 32, "model") if n == "trunk" else vector_info(n, widths[n], "model")
            for n in self.FEATURES
        ]
        self.intermediate_features = [f"stage{i}" for i in range(len(self._stage_ends))]

    def _run(self, x: torch.Tensor, stop: Optional[int] = None) -> List[torch.Tensor]:
        """Outputs of ``_layers`` up to index ``stop`` (all by default), at the stage ends and the end."""
        layers = list(self._layers) if stop is None else list(self._layers)[: stop + 1]
        if self.grad_checkpointing and torch.is_grad_enabled():
            outs, start = [], 0
            for end in [e for e in self._stage_ends if e < len(layers)] + [len(layers) - 1]:
                if end >= start:
                    x = checkpoint_without_bn_double_update(layers[start : end + 1], x)
                    start = end + 1
                outs.append(x)
            return outs
        outs = []
        for i, layer in enumerate(layers):
            x = layer(x)
            if i in self._stage_ends:
                outs.append(x)
        if len(layers) - 1 not in self._stage_ends:
            outs.append(x)
        return outs

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map."""
        return self._run(x)[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk_features(x)

    def _map_intermediates(self, x: torch.Tensor, taken: Sequence[int], last: int, to_end: bool):
        outs = self._run(x, None if to_end else self._stage_ends[last])
        return outs[-1], [outs[i] for i in taken]

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

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        names = list(names) if names else [self.default_feature]
        self.check_feature_names(names)
        trunk = self.trunk_features(x)
        cache: Dict[str, torch.Tensor] = {}
        return {name: self._feature(name, trunk, cache) for name in names}

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        names = list(out_feat_keys) if out_feat_keys else [self.default_feature]
        feats = self.feature_dict(x, names)
        # Requested order, duplicates included, as the original returned them.
        return [feats[name] for name in names]


class MobileNetV3TV(_MobileNetV3Trunk):
    """torchvision's MobileNet-V3 Large without its classifier (``mobilenetv3_tv``).

    ``timm_bn`` builds BatchNorm with eps 1e-5 / momentum 0.1 (timm's training settings) instead
    of torchvision's 1e-3 / 0.01.
    """

    def __init__(self, options: MobileNetOptions = MobileNetOptions(), common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        from torchvision.models import mobilenet_v3_large

        self.options = options
        norm_layer = partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1) if options.timm_bn else None
        self.model = mobilenet_v3_large(weights=None, norm_layer=norm_layer)
        self.model.classifier = nn.Identity()
        # features: 0 stem, 1..15 inverted residuals, 16 the last 1x1 conv
        self._stage_ends = [1, 3, 6, 12, 16]
        self._set_feature_info(self.model.features[-1][0].out_channels)

    @property
    def _layers(self) -> nn.Sequential:
        return self.model.features


class MobileNetV3Timm(_MobileNetV3Trunk):
    """timm's ``mobilenetv3_large_100`` without its classifier (``mobilenetv3_timm``).

    With ``trunk_only`` (the default) timm's 1x1 ``conv_head`` is removed too and the default
    output is the pooled last feature map (960); otherwise it is timm's pre-logits output
    (pool, conv_head, hardswish: 1280). ``flatten`` is always timm's pre-logits path, so with
    ``trunk_only`` it is the hardswish of the pooled feature, as in the original.
    """

    FEATURES = ("flatten", "flatten_norm", "trunk_pool", "trunk_pool_norm", "trunk")

    def __init__(
        self, model: nn.Module, options: MobileNetOptions = MobileNetOptions(), common: TrunkCommon = TrunkCommon()
    ) -> None:
        super().__init__(common)
        self.options = options
        self.model = model
        if options.trunk_only:
            self.model.conv_head = nn.Identity()
        self.model.classifier = nn.Identity()
        self.default_feature = "trunk_pool" if options.trunk_only else "flatten"
        stages = list(self.model.blocks)
        ends, count = [], 2  # conv_stem, bn1 come first
        for stage in stages:
            count += len(stage)
            ends.append(count - 1)
        self._stage_ends = [ends[i] for i in (0, 1, 2, 4, 6)]  # timm's feature levels
        width = self.model.num_features
        self._set_feature_info(width, width if options.trunk_only else self.model.head_hidden_size)

    @property
    def _layers(self) -> List[nn.Module]:
        return [self.model.conv_stem, self.model.bn1] + [b for stage in self.model.blocks for b in stage]


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"trunk 'mobilenetv3_timm' needs timm: {TIMM_INSTALL_HINT}") from e
    return timm


@register_model_trunk("mobilenetv3_tv")
def build_mobilenetv3_tv(model_config: Mapping, model_name: str = "mobilenetv3_tv") -> MobileNetV3TV:
    """Build ``mobilenetv3_tv`` from ``MODEL`` (reads ``TRUNK.MOBILE_NET`` and the common options)."""
    common = TrunkCommon.from_config(model_config, model_name, ("rgb",))
    return MobileNetV3TV(MobileNetOptions.from_config(model_config["TRUNK"]["MOBILE_NET"]), common)


@register_model_trunk("mobilenetv3_timm")
def build_mobilenetv3_timm(model_config: Mapping, model_name: str = "mobilenetv3_timm") -> MobileNetV3Timm:
    """Build ``mobilenetv3_timm`` from ``MODEL`` (reads ``TRUNK.MOBILE_NET`` and the common options; needs timm)."""
    common = TrunkCommon.from_config(model_config, model_name, ("rgb",))
    options = MobileNetOptions.from_config(model_config["TRUNK"]["MOBILE_NET"])
    timm = _import_timm()
    return MobileNetV3Timm(timm.create_model(options.name, pretrained=False), options, common)
