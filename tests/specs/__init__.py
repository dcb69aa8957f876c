"""Tiny build specs for every registered trunk and head, one file per family.

Each module here defines ``TRUNK_SPECS`` and/or ``HEAD_SPECS`` lists; ``tests/test_trunks.py`` and
``tests/test_heads.py`` run the same checks on all of them and fail for a registered name that
has no spec.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass
class TrunkSpec:
    """A tiny config for one trunk name, and what its features look like on a batch of 2."""

    name: str  # registered trunk name (MODEL.TRUNK.NAME)
    model: Dict[str, Any]  # MODEL overrides, nested like the YAML (TRUNK.NAME is filled in)
    input_size: Any = 32  # int, or (H, W)
    in_chans: int = 3
    # feature name -> expected shape of that feature without the batch dimension
    features: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    # second input size for multi-crop (transformers: positional embedding interpolation)
    crop_size: Optional[int] = None
    # parameter names (substrings) that legitimately get no gradient from the default output
    no_grad_ok: Sequence[str] = ()
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or self.name


@dataclass
class HeadSpec:
    """A tiny head: its name, options and the input it takes (batch first)."""

    name: str
    kwargs: Dict[str, Any]
    input_shape: Tuple[int, ...]
    model: Dict[str, Any] = field(default_factory=dict)  # MODEL overrides (e.g. HEAD.*)
    no_grad_ok: Sequence[str] = ()
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or self.name


def _collect(attr: str) -> List[Any]:
    out: List[Any] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        out.extend(getattr(module, attr, []))
    return out


TRUNK_SPECS: List[TrunkSpec] = _collect("TRUNK_SPECS")
HEAD_SPECS: List[HeadSpec] = _collect("HEAD_SPECS")
