"""EfficientNet trunk (``efficientnet``) built by classy_vision, with the original's feature blocks.

``MODEL.TRUNK.EFFICIENT_NETS`` (open section) needs ``model_version`` (B0..B7), ``bn_momentum``,
``bn_epsilon``, ``drop_connect_rate``, ``width_divisor``, ``min_width`` and ``use_se``: the
original passed them to classy_vision's constructor, which has no defaults.

Feature names: ``conv1`` (stem conv, BN, swish), ``block0``..``block{N-1}`` (every MBConv block in
order), ``conv_final`` (head conv, BN, swish), ``avgpool``, ``flatten`` and ``dropout``
(the default output). Features come back in the requested order, as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..config import ConfigError
from ..config import options as opt
from ..layers import Flatten
from ..layers.checkpointing import checkpoint_without_bn_double_update
from ..registry import register_model_trunk
from .base import FeatureTrunk, TrunkCommon, map_info, vector_info

SECTION = "MODEL.TRUNK.EFFICIENT_NETS"
MODEL_VERSIONS = ("B0", "B1", "B2", "B3", "B4", "B5", "B6", "B7")
# What the original's configs set, quoted when a key is missing.
USUAL_VALUES = {
    "model_version": "B0",
    "bn_momentum": 0.01,
    "bn_epsilon": 0.001,
    "drop_connect_rate": 0.2,
    "width_divisor": 8,
    "min_width": None,
    "use_se": True,
}


@dataclass(frozen=True)
class EfficientNetOptions:
    """``MODEL.TRUNK.EFFICIENT_NETS``."""

    model_version: str = "B0"
    bn_momentum: float = 0.01
    bn_epsilon: float = 0.001
    drop_connect_rate: float = 0.2
    width_divisor: int = 8
    min_width: Optional[int] = None
    use_se: bool = True

    @classmethod
    def from_config(cls, section: Mapping) -> "EfficientNetOptions":
        section = dict(section or {})
        unknown = sorted(set(section) - set(USUAL_VALUES))
        if unknown:
            raise ConfigError(f"{SECTION}: unknown keys {unknown}; valid keys: {list(USUAL_VALUES)}")
        missing = [k for k in USUAL_VALUES if k not in section]
        if missing:
            raise ConfigError(
                f"{SECTION}: missing {missing}; all of {list(USUAL_VALUES)} are required "
                f"(the original's configs use {USUAL_VALUES})"
            )
        fields = [
            ("model_version", opt.choice_of(MODEL_VERSIONS)),
            ("bn_momentum", opt.non_negative_float),
            ("bn_epsilon", opt.non_negative_float),
            ("drop_connect_rate", opt.non_negative_float),
            ("width_divisor", opt.positive_int),
            ("min_width", _optional_positive_int),
            ("use_se", opt.as_bool),
        ]
        return cls(**opt.read_options(section, SECTION + ".", fields, key_case="as_is"))


def _optional_positive_int(key: str, value) -> Optional[int]:
    # null keeps classy_vision's rule: channels never below the width divisor.
    return None if value is None else opt.positive_int(key, value)


class EfficientNet(FeatureTrunk):
    """classy_vision's EfficientNet with its layers exposed as feature blocks (classifier dropped).

    Block ``i`` of ``N`` drops its residual branch with rate ``drop_connect_rate * i / N`` in training.
    The default feature is ``flatten`` (the pooled vector); ``forward`` without names returns the
    last block (``dropout`` when the model version has one), as the original. Intermediates are the
    last block of each resolution (timm's EfficientNet feature levels). With grad checkpointing
    each block is recomputed on its own in backward.
    """

    requested_order = True  # the original returned features in the order asked

    def __init__(self, options: EfficientNetOptions = EfficientNetOptions(), common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        from classy_vision.models.efficientnet import MODEL_PARAMS
        from classy_vision.models.efficientnet import EfficientNet as ClassyEfficientNet

        self.options = options
        model = ClassyEfficientNet(
            # The classifier is not kept; classy_vision needs a size to build it.
            num_classes=1000,
            model_params=MODEL_PARAMS[options.model_version],
            bn_momentum=options.bn_momentum,
            bn_epsilon=options.bn_epsilon,
            width_divisor=options.width_divisor,
            min_width=options.min_width,
            drop_connect_rate=options.drop_connect_rate,
            use_se=options.use_se,
        )
        mb_blocks = list(model.blocks.children())
        blocks = [("conv1", nn.Sequential(model.conv_stem, model.bn0, nn.SiLU()))]
        blocks += [(f"block{i}", b) for i, b in enumerate(mb_blocks)]
        blocks += [
            ("conv_final", nn.Sequential(model.conv_head, model.bn1, nn.SiLU())),
            ("avgpool", model.avg_pooling),
            ("flatten", Flatten(1)),
        ]
        if model.dropout is not None:
            blocks.append(("dropout", model.dropout))
        self._feature_blocks = nn.ModuleDict(blocks)
        self.num_blocks = len(mb_blocks)
        # Per block: its drop-connect rate; None for the layers that take none.
        rate = options.drop_connect_rate
        self._drop_rates: List[Optional[float]] = [None] + [rate * i / self.num_blocks for i in range(self.num_blocks)]
        self._drop_rates += [None] * (len(self._feature_blocks) - len(self._drop_rates))
        self._set_contract(model.conv_stem.out_channels, mb_blocks, model.conv_head.out_channels)

    def _set_contract(self, stem_width: int, mb_blocks: Sequence[nn.Module], head_width: int) -> None:
        reduction = 2  # the stem conv
        info = [map_info("conv1", stem_width, reduction, "conv1")]
        level_end = {}
        for i, block in enumerate(mb_blocks):
            reduction *= block.stride
            info.append(map_info(f"block{i}", block.output_filters, reduction, f"block{i}"))
            level_end[reduction] = f"block{i}"
        info.append(map_info("conv_final", head_width, reduction, "conv_final"))
        info.append(map_info("avgpool", head_width, None, "avgpool"))
        info.append(vector_info("flatten", head_width, "flatten"))
        if "dropout" in self._feature_blocks:
            info.append(vector_info("dropout", head_width, "dropout"))
        self.feature_info = info
        self.default_feature = "flatten"
        self.final_feature = "conv_final"
        self.intermediate_features = list(level_end.values())

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        # The original ignores MODEL.INPUT_TYPE here ('bgr' is accepted but the input is not flipped).
        names = list(names) if names else [self.default_feature]
        wanted = set(self._blocks_for(names))
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        found: Dict[str, torch.Tensor] = {}
        for name, rate in zip(self._feature_blocks.keys(), self._drop_rates):
            block = self._feature_blocks[name]
            if rate is None:
                x = checkpoint_without_bn_double_update(block, x) if checkpointed else block(x)
            elif checkpointed:
                x = checkpoint_without_bn_double_update(partial(block, drop_connect_rate=rate), x, modules=[block])
            else:
                x = block(x, drop_connect_rate=rate)
            if name in wanted:
                found[name] = x
                if len(found) == len(wanted):
                    break
        return {n: found[n] for n in names}


@register_model_trunk("efficientnet")
def build_efficientnet(model_config: Mapping, model_name: str = "efficientnet") -> EfficientNet:
    """Build the ``efficientnet`` trunk from ``MODEL`` (reads ``TRUNK.EFFICIENT_NETS`` and the common options).

    ``MODEL.INPUT_TYPE`` may be ``rgb`` or ``bgr`` and, as in the original, is not applied.
    """
    common = TrunkCommon.from_config(model_config, model_name, ("rgb", "bgr"), apply_input_type=False)
    return EfficientNet(EfficientNetOptions.from_config(model_config["TRUNK"]["EFFICIENT_NETS"]), common)
