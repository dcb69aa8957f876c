"""What every trunk shares: common options from MODEL, and the feature-block forward.

A trunk keeps its layers in an ``nn.ModuleDict`` named ``_feature_blocks`` (the original's key
layout) and maps public feature names (``res5``, ``res5avg``, ...) to block names. ``forward(x,
out_feat_keys)`` returns one tensor per requested feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import options as opt
from ..layers import INPUT_TYPES, transform_input_type
from ..layers.checkpointing import checkpoint_without_bn_double_update


#: What a feature tensor looks like: ``map`` N x C x H x W, ``vector`` N x C, ``tokens`` N x L x C.
FEATURE_KINDS = ("map", "vector", "tokens")


@dataclass(frozen=True)
class FeatureInfo:
    """One public feature of a trunk, as ``trunk.feature_info`` lists them (timm's ``feature_info``).

    ``channels`` is the size of dim 1 for a ``map`` or ``vector`` and of the last dim for ``tokens``:
    the width a head sees. ``reduction`` is the spatial stride relative to the input (None for
    pooled vectors). ``module`` is the block that produces it (``_feature_blocks`` name or similar).
    """

    name: str
    channels: int
    reduction: Optional[int]
    kind: str
    module: str = ""


@dataclass(frozen=True)
class TrunkCommon:
    """Options every trunk reads from ``MODEL`` besides its own section."""

    input_type: str = "rgb"
    use_checkpointing: bool = False
    checkpointing_splits: int = 2

    @classmethod
    def from_config(cls, model_config: Mapping) -> "TrunkCommon":
        ac = model_config["ACTIVATION_CHECKPOINTING"]
        return cls(
            input_type=opt.choice("MODEL.INPUT_TYPE", model_config["INPUT_TYPE"], INPUT_TYPES),
            use_checkpointing=opt.as_bool(
                "MODEL.ACTIVATION_CHECKPOINTING.USE_ACTIVATION_CHECKPOINTING",
                ac["USE_ACTIVATION_CHECKPOINTING"],
            ),
            checkpointing_splits=opt.as_int(
                "MODEL.ACTIVATION_CHECKPOINTING.NUM_ACTIVATION_CHECKPOINTING_SPLITS",
                ac["NUM_ACTIVATION_CHECKPOINTING_SPLITS"],
                minimum=1,
            ),
        )


def resolve_feature_names(
    out_feat_keys: Optional[Sequence[str]],
    block_names: Sequence[str],
    feature_mapping: Mapping[str, str],
) -> Tuple[List[str], int]:
    """Map requested feature names to block names; return them and the last block index needed.

    No names means the last block. Public names go through ``feature_mapping``; block names are
    accepted as they are. An unknown name raises a ``ValueError`` listing the valid ones.
    """
    if not out_feat_keys:
        return [block_names[-1]], len(block_names) - 1
    resolved = []
    for key in out_feat_keys:
        block = feature_mapping.get(key, key)
        if block not in block_names:
            valid = list(feature_mapping) + [b for b in block_names if b not in feature_mapping]
            raise ValueError(f"feature {key!r} does not exist in this trunk; valid names: {valid}")
        resolved.append(block)
    return resolved, max(block_names.index(b) for b in resolved)


def forward_feature_blocks(
    x: torch.Tensor,
    feature_blocks: nn.ModuleDict,
    out_feat_keys: Optional[Sequence[str]],
    feature_mapping: Mapping[str, str],
    checkpointing_splits: int = 0,
    requested_order: bool = False,
) -> List[torch.Tensor]:
    """Run ``feature_blocks`` in order, stopping after the last requested feature.

    Output order follows the original's shared helper: requested order when a name repeats,
    network order when all names are distinct (heads were trained against that pairing, so it is
    kept). Trunks whose original always returned the requested order pass ``requested_order``.
    ``checkpointing_splits > 0`` recomputes activations in that many segments during backward.
    """
    names = list(feature_blocks.keys())
    wanted, last = resolve_feature_names(out_feat_keys, names, feature_mapping)
    wanted_set = set(wanted)
    if checkpointing_splits > 0 and torch.is_grad_enabled():
        found = _checkpointed_forward(x, feature_blocks, names[: last + 1], wanted_set, checkpointing_splits)
    else:
        found: Dict[str, torch.Tensor] = {}
        for name in names[: last + 1]:
            x = feature_blocks[name](x)
            if name in wanted_set:
                found[name] = x
    if len(wanted_set) == len(wanted) and not requested_order:
        return [found[n] for n in names if n in found]
    return [found[n] for n in wanted]


def _units(feature_blocks: nn.ModuleDict, names: Sequence[str]) -> List[Tuple[nn.Module, Optional[str]]]:
    """Flatten blocks into checkpointable units; a unit carries the block name it completes."""
    units: List[Tuple[nn.Module, Optional[str]]] = []
    for name in names:
        block = feature_blocks[name]
        parts = list(block.children()) if isinstance(block, nn.Sequential) and len(block) > 0 else [block]
        for i, part in enumerate(parts):
            units.append((part, name if i == len(parts) - 1 else None))
    return units


def _segments(units, wanted, splits: int):
    """Cut units at every requested feature, then halve the longest segment until ``splits``."""
    segments, current = [], []
    for unit in units:
        current.append(unit)
        if unit[1] in wanted:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    while len(segments) < splits:
        longest = max(range(len(segments)), key=lambda i: len(segments[i]))
        seg = segments[longest]
        if len(seg) < 2:
            break
        half = len(seg) // 2
        segments[longest : longest + 1] = [seg[:half], seg[half:]]
    return segments


def _checkpointed_forward(x, feature_blocks, names, wanted, splits):
    found: Dict[str, torch.Tensor] = {}
    for segment in _segments(_units(feature_blocks, names), wanted, splits):
        x = checkpoint_without_bn_double_update([m for m, _ in segment], x)
        for m, name in segment:
            if name in wanted:
                found[name] = x
    return found


def check_single_feature(trunk: str, out_feat_keys: Optional[Sequence[str]]) -> None:
    """These trunks compute one feature and, like the original, ignore its name; more than one raise."""
    if out_feat_keys is not None and len(out_feat_keys) > 1:
        raise ValueError(
            f"trunk {trunk!r} returns a single feature (the original ignored out_feat_keys); "
            f"got {len(out_feat_keys)} names: {list(out_feat_keys)}"
        )


def requested_features(
    trunk: str, out_feat_keys: Optional[Sequence[str]], valid: Sequence[str], note: str = ""
) -> List[str]:
    """``out_feat_keys`` as a list (``valid[0]`` when empty), checked against ``valid``.

    For trunks with a fixed set of feature names that return them in the requested order,
    repeats included. An unknown name raises a ``ValueError`` naming the trunk and the valid names.
    """
    names = list(out_feat_keys) if out_feat_keys else [valid[0]]
    unknown = [n for n in names if n not in valid]
    if unknown:
        suffix = f" {note}" if note else ""
        raise ValueError(f"features {unknown} do not exist in the {trunk} trunk; valid names: {list(valid)}{suffix}")
    return names


class FeatureTrunk(nn.Module):
    """Base for trunks built from ``_feature_blocks`` plus a public-name mapping.

    Subclasses fill ``self._feature_blocks`` and ``self.feat_eval_mapping``; input type
    conversion and activation checkpointing come from ``common``.
    """

    def __init__(self, common: TrunkCommon) -> None:
        super().__init__()
        self.input_type = common.input_type
        self.checkpointing_splits = common.checkpointing_splits if common.use_checkpointing else 0
        self.feat_eval_mapping: Dict[str, str] = {}

    @property
    def feature_names(self) -> List[str]:
        """Names accepted in ``out_feat_keys``: public names, then block names."""
        blocks = list(self._feature_blocks.keys())
        return list(self.feat_eval_mapping) + [b for b in blocks if b not in self.feat_eval_mapping]

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        x = transform_input_type(x, self.input_type)
        return forward_feature_blocks(
            x, self._feature_blocks, out_feat_keys, self.feat_eval_mapping, self.checkpointing_splits
        )
