"""Trunks: one module per family, each registering itself by name when imported.

Every module in this package is imported here, so adding a family is adding a file. Modules must
not import optional dependencies (timm) at import time: do it inside the builder.
"""

import importlib
import pkgutil

from .base import FeatureInfo, FeatureTrunk, Trunk, TrunkCommon, forward_feature_blocks, resolve_feature_names

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["FeatureInfo", "FeatureTrunk", "Trunk", "TrunkCommon", "forward_feature_blocks", "resolve_feature_names"]
