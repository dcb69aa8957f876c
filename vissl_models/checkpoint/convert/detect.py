"""Which family and side a state dict is, from its keys (or from a library model name)."""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Tuple

import torch

from .keymaps import _ARCH_PATTERNS, _LAYOUTS, FAMILIES, SIDES, VISSL, State


def _family_of_arch(side: str, arch: str) -> str:
    if arch in _LAYOUTS:
        return arch
    if side == VISSL:
        raise ValueError(f"arch {arch!r}: for the vissl side give a trunk family, one of {list(FAMILIES)}")
    name = arch.split(".")[0] if side == "timm" else arch
    for family, pattern in _ARCH_PATTERNS[side].items():
        if re.fullmatch(pattern, name):
            return family
    raise ValueError(
        f"arch {arch!r} is not a {side} model this converter knows; {side} names by family: "
        f"{_ARCH_PATTERNS[side]} (or give the family: {list(FAMILIES)})"
    )


def _detect_families(state: Mapping[str, torch.Tensor], side: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """Families whose ``side`` layout recognises every key, and each family's unknown keys."""
    found, unknown = [], {}
    for family, sides in _LAYOUTS.items():
        if side not in sides:
            continue
        canonical, bad, _ = sides[side].to_canonical(state)
        unknown[family] = bad
        if canonical and not bad:
            found.append(family)
    return found, unknown


def detect_side(state: Mapping[str, torch.Tensor]) -> List[Tuple[str, str]]:
    """Every ``(side, family)`` whose key layout recognises all keys of ``state``.

    Some layouts coincide (torchvision and timm ResNets; VISSL and timm ViTs without a
    classifier), so more than one pair can come back.
    """
    return [
        (side, family)
        for side in SIDES
        for family in _detect_families(state, side)[0]
    ]


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> State:
    """Drop a ``module.`` (DDP) or ``base_model.`` (VISSL feature extractor) prefix on every key."""
    state = dict(state)
    for prefix in ("module.", "base_model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
