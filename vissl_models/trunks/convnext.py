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
from typing import List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import options as opt
from ..config.loader import ConfigError
from ..layers import ChannelsLayerNorm2d, trunc_normal_
from ..layers.checkpointing import checkpoint_sequential_without_bn_double_update
from ..layers.drop import drop_path_rates, optional_drop_path
from ..registry import register_model_trunk
from .base import TrunkCommon, requested_features

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
        key = "MODEL.TRUNK.CONVNEXT."
        depths = opt.as_int_list(key + "DEPTH", section["DEPTH"], min_len=4)
        dims = opt.as_int_list(key + "DIMS", section["DIMS"], min_len=4)
        for name, values in (("DEPTH", depths), ("DIMS", dims)):
            if len(values) != 4 or min(values) < 1:
                raise ConfigError(f"{key}{name}: got {values}, expected 4 positive integers (one per stage)")
        return cls(
            depths=tuple(depths),
            dims=tuple(dims),
            drop_path_rate=opt.as_float(key + "DROP_PATH_RATE", section["DROP_PATH_RATE"], minimum=0.0),
        )


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


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al., 2022) returning the LayerNorm of the globally pooled last stage.

    The output is one ``N x dims[-1]`` tensor. ``out_feat_keys`` may be empty or name
    ``lastCLS`` (one copy of the feature per name). With activation checkpointing, the
    downsampling layers and blocks are recomputed in ``checkpointing_splits`` segments.
    """

    def __init__(self, options: ConvNeXtOptions = ConvNeXtOptions(), common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__()
        self.options = options
        depths, dims = options.depths, options.dims
        self.checkpointing_splits = common.checkpointing_splits if common.use_checkpointing else 0
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

    @property
    def feature_names(self) -> List[str]:
        """Names accepted in ``out_feat_keys``."""
        return list(FEATURE_NAMES)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised global average of the last stage, ``N x dims[-1]``."""
        if self.checkpointing_splits > 0 and torch.is_grad_enabled():
            modules = [m for i in range(4) for m in (self.downsample_layers[i], *self.stages[i])]
            splits = min(self.checkpointing_splits, len(modules))
            x = checkpoint_sequential_without_bn_double_update(modules, splits, x)
        else:
            for i in range(4):
                x = self.stages[i](self.downsample_layers[i](x))
        return self.norm(x.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        names = requested_features(
            "convnext", out_feat_keys, FEATURE_NAMES, note="(its only output is the normalised pooled last stage)"
        )
        out = self.forward_features(x)
        return [out for _ in names]


@register_model_trunk("convnext")
def build_convnext(model_config: Mapping, model_name: str = "convnext") -> ConvNeXt:
    """Build the ``convnext`` trunk from ``MODEL`` (reads ``TRUNK.CONVNEXT`` and the common options)."""
    common = TrunkCommon.from_config(model_config)
    if common.input_type != "rgb":
        raise ConfigError(f"MODEL.INPUT_TYPE: got {common.input_type!r}, trunk 'convnext' takes 'rgb' input only")
    return ConvNeXt(ConvNeXtOptions.from_config(model_config["TRUNK"]["CONVNEXT"]), common)
