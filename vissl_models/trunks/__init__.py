"""Trunks: one module per family, each registering itself by name on import."""

from . import resnet  # noqa: F401  (registers "resnet")
from .base import FeatureTrunk, TrunkCommon, forward_feature_blocks, resolve_feature_names

__all__ = ["FeatureTrunk", "TrunkCommon", "forward_feature_blocks", "resolve_feature_names"]
