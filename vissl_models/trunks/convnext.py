"""ConvNeXt trunk (``convnext``), with the original's options, key layout and output.

Keys: ``downsample_layers.<i>.<j>`` (stem conv + LayerNorm, then LayerNorm + 2x2 conv),
``stages.<i>.<j>.{gamma,dwconv,norm,pwconv1,pwconv2}`` and the final ``norm``, as in the official
ConvNeXt code the original adapted, so its checkpoints load unchanged. All LayerNorms use eps 1e-6:
over channels of NCHW maps in the downsampling layers, over the last dim elsewhere.
The original ignored ``MODEL.INPUT_TYPE`` (its stem takes RGB) and activation checkpointing;
here a non-rgb input type is an error and checkpointing is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import options as opt
from ..config.loader import ConfigError
from ..layers import ChannelsLayerNorm2d, trunc_normal_
from ..layers.checkpointing import checkpoint_sequential_without_bn_double_update, checkpoint_without_bn_double_update
from ..layers.drop import drop_path_rates, optional_drop_path
from ..registry import register_model_trunk
from .base import Trunk, TrunkCommon, requested_features, vector_info

LN_EPS = 1e-6
# The original ignores out_feat_keys and always returns the normalised pooled feature; its
# linear-evaluation configs ask for it as "lastCLS".
FEATURE_NAMES = ("lastCLS",)


@dataclass(frozen=True)
class ConvNeXtOptions:
    """``MODEL.TRUNK.CONVNEXT``."""

    depths: Tuple[int, int, int, int] = (3, 3, 27, 3)
    dims: Tuple[int, int, int, int] = (96, 192, 384, 768)
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 1e-6

    @classmethod
    def from_config(cls, section: Mapping) -> "ConvNeXtOptions":
        fields = [("depth", _four_positive), ("dims", _four_positive), ("drop_path_rate", opt.non_negative_float)]
        values = opt.read_options(section, "MODEL.TRUNK.CONVNEXT.", fields)
        return cls(depths=values["depth"], dims=values["dims"], drop_path_rate=values["drop_path_rate"])


def _four_positive(key: str, value) -> Tuple[int, int, int, int]:
    values = opt.as_int_list(key, value, min_len=4)
    if len(values) != 4 or min(values) < 1:
        raise ConfigError(f"{key}: got {values}, expected 4 positive integers (one per stage)")
    return tuple(values)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, Linear(4x) + GELU + Linear, layer scale, residual.

    The pointwise layers run channels-last as Linear layers (the original's layout).
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None
        self.drop_path = optional_drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXt(Trunk):
    """ConvNeXt (Liu et al., 2022) returning the LayerNorm of the globally pooled last stage.

    The output is one ``N x dims[-1]`` tensor, the only public feature (``lastCLS``, the default).
    ``out_feat_keys`` may be empty or name ``lastCLS`` (one copy of the feature per name).
    ``forward_features`` is the last stage's map and ``forward_intermediates`` the four stages.
    With activation checkpointing, the downsampling layers and blocks are recomputed in
    ``checkpointing_splits`` segments (by stage in ``forward_intermediates``).
    """

    def __init__(self, options: ConvNeXtOptions = ConvNeXtOptions(), common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        self.options = options
        depths, dims = options.depths, options.dims
        self.feature_info = [vector_info("lastCLS", dims[-1], "norm")]
        self.default_feature = "lastCLS"
        self.intermediate_features = ["stage0", "stage1", "stage2", "stage3"]
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), ChannelsLayerNorm2d(dims[0], eps=LN_EPS))]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    ChannelsLayerNorm2d(dims[i], eps=LN_EPS),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
            )
        rates = drop_path_rates(options.drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        start = 0
        for i in range(4):
            self.stages.append(
                nn.Sequential(
                    *[
                        ConvNeXtBlock(dims[i], rates[start + j], options.layer_scale_init_value)
                        for j in range(depths[i])
                    ]
                )
            )
            start += depths[i]
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, ``N x dims[-1] x H/32 x W/32``."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            modules = [m for i in range(4) for m in (self.downsample_layers[i], *self.stages[i])]
            splits = min(self.checkpointing_splits, len(modules))
            return checkpoint_sequential_without_bn_double_update(modules, splits, x)
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return x

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """``lastCLS``: the normalised global average of the last stage, ``N x dims[-1]``."""
        return self.norm(self.forward_features(x).mean(dim=(-2, -1)))

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        names = list(names) if names else [self.default_feature]
        self.check_feature_names(names)
        return {name: out for name, out in zip(names, [self.pooled_features(x)] * len(names))}

    def _map_intermediates(self, x: torch.Tensor, taken: Sequence[int], last: int, to_end: bool):
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        out = []
        for i in range(4 if to_end else last + 1):
            if checkpointed:
                x = checkpoint_without_bn_double_update([self.downsample_layers[i], self.stages[i]], x)
            else:
                x = self.stages[i](self.downsample_layers[i](x))
            if i in taken:
                out.append(x)
        return x, out

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        names = requested_features(
            "convnext", out_feat_keys, FEATURE_NAMES, note="(its only output is the normalised pooled last stage)"
        )
        out = self.pooled_features(x)
        return [out for _ in names]


@register_model_trunk("convnext")
def build_convnext(model_config: Mapping, model_name: str = "convnext") -> ConvNeXt:
    """Build the ``convnext`` trunk from ``MODEL`` (reads ``TRUNK.CONVNEXT`` and the common options)."""
    common = TrunkCommon.from_config(model_config, model_name, ("rgb",))
    return ConvNeXt(ConvNeXtOptions.from_config(model_config["TRUNK"]["CONVNEXT"]), common)
