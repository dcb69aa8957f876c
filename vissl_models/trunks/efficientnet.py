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
from typing import List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..config import ConfigError
from ..config import options as opt
from ..layers import Flatten
from ..registry import register_model_trunk
from .base import TrunkCommon, resolve_feature_names

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
        key = SECTION + "."
        min_width = section["min_width"]
        return cls(
            model_version=opt.choice(key + "model_version", section["model_version"], MODEL_VERSIONS),
            bn_momentum=opt.as_float(key + "bn_momentum", section["bn_momentum"], minimum=0.0),
            bn_epsilon=opt.as_float(key + "bn_epsilon", section["bn_epsilon"], minimum=0.0),
            drop_connect_rate=opt.as_float(key + "drop_connect_rate", section["drop_connect_rate"], minimum=0.0),
            width_divisor=opt.as_int(key + "width_divisor", section["width_divisor"], minimum=1),
            min_width=None if min_width is None else opt.as_int(key + "min_width", min_width, minimum=1),
            use_se=opt.as_bool(key + "use_se", section["use_se"]),
        )


class EfficientNet(nn.Module):
    """classy_vision's EfficientNet with its layers exposed as feature blocks (classifier dropped).

    Block ``i`` of ``N`` drops its residual branch with rate ``drop_connect_rate * i / N`` in training.
    """

    def __init__(self, options: EfficientNetOptions = EfficientNetOptions()) -> None:
        super().__init__()
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

    @property
    def feature_names(self) -> List[str]:
        """Names accepted in ``out_feat_keys``."""
        return list(self._feature_blocks.keys())

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        # The original ignores MODEL.INPUT_TYPE here ('bgr' is accepted but the input is not flipped).
        names = list(self._feature_blocks.keys())
        wanted, last = resolve_feature_names(out_feat_keys, names, {})
        found = {}
        for name, rate in zip(names[: last + 1], self._drop_rates):
            block = self._feature_blocks[name]
            x = block(x) if rate is None else block(x, drop_connect_rate=rate)
            if name in wanted:
                found[name] = x
        return [found[n] for n in wanted]


@register_model_trunk("efficientnet")
def build_efficientnet(model_config: Mapping, model_name: str = "efficientnet") -> EfficientNet:
    """Build the ``efficientnet`` trunk from ``MODEL`` (reads ``TRUNK.EFFICIENT_NETS``)."""
    common = TrunkCommon.from_config(model_config)
    if common.input_type not in ("rgb", "bgr"):
        raise ConfigError(f"MODEL.INPUT_TYPE: the efficientnet trunk takes 'rgb' or 'bgr', got {common.input_type!r}")
    if common.use_checkpointing:
        raise ConfigError(
            "MODEL.ACTIVATION_CHECKPOINTING.USE_ACTIVATION_CHECKPOINTING: the efficientnet trunk has no "
            "activation checkpointing (the original ignored this option)"
        )
    return EfficientNet(EfficientNetOptions.from_config(model_config["TRUNK"]["EFFICIENT_NETS"]))
