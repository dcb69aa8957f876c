"""Building blocks shared by trunks and heads, each written once."""

from .basic import (
    INPUT_TYPES,
    Flatten,
    Identity,
    input_channels,
    model_output_has_nan,
    transform_input_type,
)
from .conv import StandardizedConv2d, standardize_convolutions
from .drop import DropPath, drop_path
from .init import lecun_normal_init, trunc_normal_
from .weight_norm import WeightNormLinear
from .norm import NORM_NAMES, ChannelsLayerNorm2d, LayerNorm2d, convert_sync_batchnorm, get_norm

__all__ = [
    "INPUT_TYPES",
    "NORM_NAMES",
    "ChannelsLayerNorm2d",
    "DropPath",
    "Flatten",
    "Identity",
    "LayerNorm2d",
    "StandardizedConv2d",
    "convert_sync_batchnorm",
    "drop_path",
    "get_norm",
    "input_channels",
    "lecun_normal_init",
    "model_output_has_nan",
    "standardize_convolutions",
    "transform_input_type",
    "trunc_normal_",
    "WeightNormLinear",
]
