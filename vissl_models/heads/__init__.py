"""Heads: one module per family, each registering itself by name on import."""

from . import identity, mlp, siamese, swav  # noqa: F401  (register the heads)
from .common import HeadCommon
from .mlp import MLP, LinearEvalMLP, MLPResidual
from .siamese import SiameseConcatView
from .swav import SwAVPrototypesHead

__all__ = ["HeadCommon", "LinearEvalMLP", "MLP", "MLPResidual", "SiameseConcatView", "SwAVPrototypesHead"]
