"""RegNet trunk built by classy_vision (``regnet``), and the options the RegNet family shares.

``MODEL.TRUNK.REGNET`` is an open section read in one of three forms, as in the original:

- ``name: <classy RegNet>`` (``regnet_y_8gf``, ``regnet_y_32gf``, ...): the named model, nothing else;
- ``name: anynet`` with ``depths, widths, group_widths, bottleneck_multipliers, strides``;
- the explicit RegNet parameters ``depth, w_0, w_a, w_m, group_width`` (+ ``bottleneck_multiplier``).

The last two also take ``stem_type, stem_width, block_type, activation, use_se, se_ratio,
bn_epsilon, bn_momentum``. ``stage_checkpoints``/``stage_checkpointing`` belong to ``regnet_v2`` and
``regnet_fsdp`` (see ``regnet_fsdp.py``).

Feature names are the block names: ``conv1`` (the stem), ``res2``..``res5`` (one per stage, so an
AnyNet with more stages goes on with ``res6``...), ``avgpool`` and ``flatten``. Keys are
``_feature_blocks.conv1.stem.*`` and ``_feature_blocks.res2.block1-0.*``, so SEER and SwAV RegNet
checkpoints load as they are.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import partial
from typing import Any, List, Mapping, Optional, Tuple

from torch import nn

from ..config import ConfigError
from ..config import options as opt
from ..layers import Flatten
from ..registry import register_model_trunk
from .base import FeatureInfo, FeatureTrunk, TrunkCommon, map_info, vector_info

SECTION = "MODEL.TRUNK.REGNET"

REGNET_REQUIRED = ("depth", "w_0", "w_a", "w_m", "group_width")
ANYNET_REQUIRED = ("depths", "widths", "group_widths", "bottleneck_multipliers", "strides")
# Optional keys and the defaults classy_vision gives them.
SHARED_OPTIONAL = {
    "stem_type": "simple_stem_in",
    "stem_width": 32,
    "block_type": "res_bottleneck_block",
    "activation": "relu",
    "use_se": True,
    "se_ratio": 0.25,
    "bn_epsilon": 1e-5,
    "bn_momentum": 0.1,
}
STAGE_CHECKPOINT_KEYS = ("stage_checkpoints", "stage_checkpointing")

STEM_TYPES = ("res_stem_cifar", "res_stem_in", "simple_stem_in")
BLOCK_TYPES = ("vanilla_block", "res_basic_block", "res_bottleneck_block", "res_bottleneck_linear_block")
ACTIVATIONS = ("relu", "silu")


def classy_regnet_names() -> List[str]:
    """The named RegNets classy_vision registers (``regnet_y_400mf`` ... ``regnet_y_256gf``)."""
    from classy_vision.models import MODEL_REGISTRY, RegNet as ClassyRegNet

    return sorted(
        name
        for name, cls in MODEL_REGISTRY.items()
        if isinstance(cls, type) and issubclass(cls, ClassyRegNet) and name != "regnet"
    )


def _lowered_choice(key: str, value: Any, allowed: Tuple[str, ...]) -> str:
    # classy_vision upper-cases these names before the enum lookup, so any case is accepted.
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"{key}: got {value!r}, expected one of {list(allowed)}")
    return value.lower()


def _float_list(key: str, value: Any) -> Tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key}: got {value!r}, expected a non-empty list of numbers")
    return tuple(opt.as_float(f"{key}[{i}]", v) for i, v in enumerate(value))


def _int_tuple(key: str, value: Any) -> Tuple[int, ...]:
    return tuple(opt.as_int_list(key, value))


def _nested_of(convert) -> opt.Parser:
    return lambda key, value: _nested(key, value, convert)


def _nested(key: str, value: Any, convert) -> Tuple[Tuple[Any, ...], ...]:
    """A list with one list per stage (``[[2], [7], [9, 17], []]``)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (list, tuple)) for v in value):
        raise ConfigError(f"{key}: got {value!r}, expected one list per stage, e.g. [[2], [4], [6, 11], []]")
    return tuple(tuple(convert(f"{key}[{i}][{j}]", x) for j, x in enumerate(v)) for i, v in enumerate(value))


# How each optional key is checked; its default (``SHARED_OPTIONAL``) is already in checked form.
SHARED_PARSERS = {
    "stem_type": partial(_lowered_choice, allowed=STEM_TYPES),
    "stem_width": opt.positive_int,
    "block_type": partial(_lowered_choice, allowed=BLOCK_TYPES),
    "activation": partial(_lowered_choice, allowed=ACTIVATIONS),
    "use_se": opt.as_bool,
    "se_ratio": opt.non_negative_float,
    "bn_epsilon": opt.non_negative_float,
    "bn_momentum": opt.non_negative_float,
}


def _reject_unknown(section: Mapping, allowed: Tuple[str, ...], form: str) -> None:
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{SECTION}.{key}: not an option of {form}; {hint}valid keys: {sorted(allowed)}")


@dataclass(frozen=True)
class RegNetOptions:
    """``MODEL.TRUNK.REGNET`` read once. ``kind`` is ``named``, ``anynet`` or ``regnet`` (explicit)."""

    kind: str = "regnet"
    name: Optional[str] = None
    # explicit RegNet parameters
    depth: int = 0
    w_0: int = 0
    w_a: float = 0.0
    w_m: float = 0.0
    group_width: int = 0
    bottleneck_multiplier: float = 1.0
    # AnyNet parameters, one value per stage
    depths: Tuple[int, ...] = ()
    widths: Tuple[int, ...] = ()
    group_widths: Tuple[int, ...] = ()
    bottleneck_multipliers: Tuple[float, ...] = ()
    strides: Tuple[int, ...] = ()
    # shared by the explicit and AnyNet forms
    stem_type: str = "simple_stem_in"
    stem_width: int = 32
    block_type: str = "res_bottleneck_block"
    activation: str = "relu"
    use_se: bool = True
    se_ratio: float = 0.25
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.1
    # regnet_v2 / regnet_fsdp only: block-group boundaries and their checkpointing, per stage
    stage_checkpoints: Tuple[Tuple[int, ...], ...] = ()
    stage_checkpointing: Tuple[Tuple[bool, ...], ...] = ()

    @classmethod
    def from_config(cls, section: Mapping, allow_stage_checkpoints: bool = False) -> "RegNetOptions":
        section = dict(section or {})
        if section.get("name", "") is None:
            section.pop("name")
        extra = STAGE_CHECKPOINT_KEYS if allow_stage_checkpoints else ()
        name = section.get("name")
        if name is not None and name != "anynet":
            names = classy_regnet_names()
            if name not in names:
                raise ConfigError(f"{SECTION}.name: got {name!r}, expected 'anynet' or one of {names}")
            # The original builds the named model from its name alone: anything else would be ignored.
            others = sorted(k for k in section if k != "name")
            if others:
                raise ConfigError(
                    f"{SECTION}: with name {name!r} the named model is built as it is and {others} "
                    f"would be ignored; remove them, or give the explicit parameters {list(REGNET_REQUIRED)} "
                    "instead of a name"
                )
            return cls(kind="named", name=name)

        if not section:
            raise ConfigError(
                f"{SECTION} is empty: give 'name' (a classy_vision RegNet such as 'regnet_y_8gf', or 'anynet') "
                f"or the explicit parameters {list(REGNET_REQUIRED)}"
            )
        anynet = name == "anynet"
        required = ANYNET_REQUIRED if anynet else REGNET_REQUIRED
        optional = tuple(SHARED_OPTIONAL) + (() if anynet else ("bottleneck_multiplier",))
        allowed = (("name",) if anynet else ()) + required + optional + extra
        form = "an AnyNet" if anynet else "an explicit RegNet"
        if not allow_stage_checkpoints and any(k in section for k in STAGE_CHECKPOINT_KEYS):
            raise ConfigError(
                f"{SECTION}: {list(STAGE_CHECKPOINT_KEYS)} are options of the regnet_v2 and regnet_fsdp "
                "trunks; the regnet trunk has none"
            )
        _reject_unknown(section, allowed, form)
        missing = [k for k in required if k not in section]
        if missing:
            raise ConfigError(f"{SECTION}: {form} needs {list(required)}; missing {missing}")

        key = SECTION + "."
        shared = opt.read_options(section, key, [
            (name, SHARED_PARSERS[name], default) for name, default in SHARED_OPTIONAL.items()
        ] + [
            ("stage_checkpoints", _nested_of(opt.as_int), ()),
            ("stage_checkpointing", _nested_of(opt.as_bool), ()),
        ], key_case="as_is")
        if anynet:
            lists = opt.read_options(section, key, [
                ("depths", _int_tuple), ("widths", _int_tuple), ("group_widths", _int_tuple),
                ("bottleneck_multipliers", _float_list), ("strides", _int_tuple),
            ], key_case="as_is")
            lengths = {k: len(v) for k, v in lists.items()}
            if len(set(lengths.values())) != 1:
                # classy_vision zips them, silently dropping the stages of the longer lists.
                raise ConfigError(f"{SECTION}: the AnyNet lists need one value per stage; got lengths {lengths}")
            for k in ("depths", "widths", "group_widths", "strides"):
                if min(lists[k]) < 1:
                    raise ConfigError(f"{key}{k}: got {list(lists[k])}, expected integers >= 1")
            return cls(kind="anynet", name="anynet", **lists, **shared)

        # The growth parameters are checked together before the rest is read, so that check
        # reports first whatever else is wrong.
        growth = opt.read_options(section, key, [
            ("w_0", opt.positive_int), ("w_a", opt.non_negative_float), ("w_m", opt.as_float),
        ], key_case="as_is")
        if growth["w_0"] % 8 != 0 or growth["w_m"] <= 1:
            raise ConfigError(
                f"{SECTION}: expected w_0 a multiple of 8 and w_m > 1; got w_0={growth['w_0']}, w_m={growth['w_m']}"
            )
        rest = opt.read_options(section, key, [
            ("depth", opt.positive_int),
            ("group_width", opt.positive_int),
            ("bottleneck_multiplier", opt.non_negative_float, 1.0),
        ], key_case="as_is")
        return cls(kind="regnet", **growth, **rest, **shared)

    def classy_params(self):
        """classy_vision's ``RegNetParams`` / ``AnyNetParams`` for the explicit and AnyNet forms."""
        from classy_vision.models.anynet import ActivationType, AnyNetParams, BlockType, StemType
        from classy_vision.models.regnet import RegNetParams

        shared = dict(
            stem_type=StemType[self.stem_type.upper()],
            stem_width=self.stem_width,
            block_type=BlockType[self.block_type.upper()],
            activation=ActivationType[self.activation.upper()],
            use_se=self.use_se,
            se_ratio=self.se_ratio,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
        )
        if self.kind == "anynet":
            return AnyNetParams(
                depths=list(self.depths),
                widths=list(self.widths),
                group_widths=list(self.group_widths),
                bottleneck_multipliers=list(self.bottleneck_multipliers),
                strides=list(self.strides),
                **shared,
            )
        if self.kind == "regnet":
            return RegNetParams(
                depth=self.depth,
                w_0=self.w_0,
                w_a=self.w_a,
                w_m=self.w_m,
                group_width=self.group_width,
                bottleneck_multiplier=self.bottleneck_multiplier,
                **shared,
            )
        raise ValueError(f"a named RegNet ({self.name!r}) is built by classy_vision from its name")


#: The RegNet stems take 3 channels.
REGNET_INPUT_TYPES = ("rgb", "bgr")


def _stride(module: nn.Module) -> int:
    s = module.stride
    return s[0] if isinstance(s, tuple) else s


def regnet_feature_info(blocks: nn.ModuleDict) -> List[FeatureInfo]:
    """Public features of RegNet ``blocks`` (see :func:`regnet_feature_blocks`), read off the modules.

    A stage's width is the size of its last BatchNorm (every classy_vision block ends with one)
    and its stride the largest conv stride in it; the stem's stride is the product of its conv and
    pooling strides.
    """
    def last_bn_width(module: nn.Module) -> int:
        return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features

    names = list(blocks.keys())
    stem = blocks["conv1"]
    reduction = 1
    for m in stem.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            reduction *= _stride(m)
    info = [map_info("conv1", last_bn_width(stem), reduction, "conv1")]
    for name in names[1:-2]:
        reduction *= max(_stride(m) for m in blocks[name].modules() if isinstance(m, nn.Conv2d))
        info.append(map_info(name, last_bn_width(blocks[name]), reduction, name))
    width = info[-1].channels
    return info + [map_info("avgpool", width, None, "avgpool"), vector_info("flatten", width, "flatten")]


def regnet_feature_blocks(stem: nn.Module, stages: List[Tuple[str, nn.Module]]) -> nn.ModuleDict:
    """``conv1`` (stem), ``res2``.. (one per stage ``block1``..), ``avgpool``, ``flatten``."""
    blocks: List[Tuple[str, nn.Module]] = [("conv1", stem)]
    for name, stage in stages:
        if not name.startswith("block"):
            raise ValueError(f"unexpected RegNet stage name {name!r}")
        blocks.append((f"res{len(blocks) + 1}", stage))
    blocks.append(("avgpool", nn.AdaptiveAvgPool2d((1, 1))))
    blocks.append(("flatten", Flatten(1)))
    return nn.ModuleDict(blocks)


def set_regnet_contract(trunk: FeatureTrunk) -> None:
    """The contract attributes shared by the RegNet trunks, from their ``_feature_blocks``."""
    trunk.feature_info = regnet_feature_info(trunk._feature_blocks)
    stages = [f.name for f in trunk.feature_info if f.name.startswith("res")]
    trunk.default_feature = "flatten"
    trunk.final_feature = stages[-1]
    trunk.intermediate_features = ["conv1"] + stages


class RegNet(FeatureTrunk):
    """RegNet / AnyNet from classy_vision, its stem and stages exposed as feature blocks.

    Feature names: ``conv1, res2, res3, res4, res5, avgpool, flatten`` (more ``res`` for AnyNets
    with more stages); the default feature is ``flatten``. classy_vision builds and initialises the
    network; only its stem and stages are kept.
    """

    def __init__(self, options: RegNetOptions, common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        from classy_vision.models import AnyNet, build_model
        from classy_vision.models import RegNet as ClassyRegNet

        self.options = options
        if options.kind == "named":
            model = build_model({"name": options.name})
        elif options.kind == "anynet":
            model = AnyNet(options.classy_params())
        else:
            model = ClassyRegNet(options.classy_params())
        self.trunk_depth = model.trunk_depth
        self._feature_blocks = regnet_feature_blocks(model.stem, list(model.trunk_output.named_children()))
        set_regnet_contract(self)


@register_model_trunk("regnet")
def build_regnet(model_config: Mapping, model_name: str = "regnet") -> RegNet:
    """Build the ``regnet`` trunk from ``MODEL`` (reads ``TRUNK.REGNET`` and the common options)."""
    common = TrunkCommon.from_config(model_config, "regnet", REGNET_INPUT_TYPES)
    return RegNet(RegNetOptions.from_config(model_config["TRUNK"]["REGNET"]), common)
