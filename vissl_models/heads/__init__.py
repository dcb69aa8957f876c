"""Heads: one module per family, each registering itself by name when imported.

Every module in this package is imported here, so adding a family is adding a file.
"""

import importlib
import pkgutil

from .common import HeadCommon

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "common":
        importlib.import_module(f"{__name__}.{_info.name}")

from .mlp import MLP, LinearEvalMLP, MLPResidual  # noqa: E402
from .siamese import SiameseConcatView  # noqa: E402
from .swav import SwAVPrototypesHead  # noqa: E402

__all__ = ["HeadCommon", "LinearEvalMLP", "MLP", "MLPResidual", "SiameseConcatView", "SwAVPrototypesHead"]
