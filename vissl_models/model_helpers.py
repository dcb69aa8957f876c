"""Reading MODEL into typed options once: eval settings, multi-input mapping, crop grouping,
head specs and the init seed (``ModelOptions``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from .config import ConfigError
from .config import options as opt

POOL_OP_NAMES = ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "MaxPool2d", "Identity")


@dataclass(frozen=True)
class FeatureEvalSettings:
    """``MODEL.FEATURE_EVAL_SETTINGS``."""

    eval_mode_on: bool = False
    freeze_trunk_only: bool = False
    freeze_trunk_and_head: bool = False
    extract_trunk_features_only: bool = False
    eval_trunk_and_head: bool = False
    assert_head_layer_shape_init: bool = True
    should_flatten_feats: bool = True
    # ((feature_name, pool_op_name, pool_op_args), ...)
    pool_ops: Tuple[Tuple[str, str, tuple], ...] = ()

    @classmethod
    def from_config(cls, model_config: Mapping) -> "FeatureEvalSettings":
        s = model_config["FEATURE_EVAL_SETTINGS"]
        key = "MODEL.FEATURE_EVAL_SETTINGS."
        ops = []
        for i, item in enumerate(s["LINEAR_EVAL_FEAT_POOL_OPS_MAP"]):
            where = f"{key}LINEAR_EVAL_FEAT_POOL_OPS_MAP[{i}]"
            try:
                name, (op, args) = item
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: got {item!r}, expected [feature_name, [pool_op, [args]]]") from None
            opt.choice(f"{where} pool op", op, POOL_OP_NAMES)
            ops.append((str(name), op, tuple(args or ())))
        flags = {
            f: opt.as_bool(key + f, s[f])
            for f in (
                "EVAL_MODE_ON", "FREEZE_TRUNK_ONLY", "FREEZE_TRUNK_AND_HEAD", "EXTRACT_TRUNK_FEATURES_ONLY",
                "EVAL_TRUNK_AND_HEAD", "ASSERT_HEAD_LAYER_SHAPE_INIT", "SHOULD_FLATTEN_FEATS",
            )
        }
        return cls(*flags.values(), pool_ops=tuple(ops))

    @property
    def is_feature_extractor(self) -> bool:
        """Trunk becomes a FeatureExtractorModel: eval mode, a frozen trunk and pool ops given."""
        return (
            self.eval_mode_on
            and (self.freeze_trunk_only or self.freeze_trunk_and_head)
            and len(self.pool_ops) > 0
        )

    @property
    def trunk_features_only(self) -> bool:
        """Forward returns the trunk's features and skips the heads."""
        return self.eval_mode_on and self.extract_trunk_features_only

    @property
    def output_feature_names(self) -> List[str]:
        return [name for name, _, _ in self.pool_ops] if self.is_feature_extractor else []


def is_feature_extractor_model(model_config: Mapping) -> bool:
    """Whether ``MODEL`` builds its trunk as a FeatureExtractorModel (linear evaluation)."""
    return FeatureEvalSettings.from_config(model_config).is_feature_extractor


def get_trunk_output_feature_names(model_config: Mapping) -> List[str]:
    """Feature names the trunk is asked for: those of LINEAR_EVAL_FEAT_POOL_OPS_MAP in
    feature-extractor mode, else none (the trunk's last feature)."""
    return FeatureEvalSettings.from_config(model_config).output_feature_names


@dataclass(frozen=True)
class MultiInputMapping:
    """``MODEL.MULTI_INPUT_HEAD_MAPPING``: which input goes through which features and head.

    Entries are ``[input_key, [feature names]]`` (legacy form; entry i uses head i, or the last
    head when there are fewer heads) or ``[input_key, {"feat_names": [...], "head_index": i,
    "additional_keys": ["mask"]}]``, where additional keys are other inputs of the batch passed
    to the trunk as keyword arguments.
    """

    input_keys: Tuple[str, ...] = ()
    feat_names: Tuple[Tuple[str, ...], ...] = ()
    head_index: Tuple[int, ...] = ()
    additional_keys: Tuple[Tuple[str, ...], ...] = ()

    @classmethod
    def from_config(cls, model_config: Mapping) -> "MultiInputMapping":
        entries = model_config["MULTI_INPUT_HEAD_MAPPING"]
        if not isinstance(entries, (list, tuple)):
            raise ConfigError(f"MODEL.MULTI_INPUT_HEAD_MAPPING: got {entries!r}, expected a list (empty: one input)")
        num_heads = len(model_config["HEAD"]["PARAMS"])
        keys, feats, heads, extra = [], [], [], []
        for idx, entry in enumerate(entries):
            where = f"MODEL.MULTI_INPUT_HEAD_MAPPING[{idx}]"
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise ConfigError(f"{where}: got {entry!r}, expected [input_key, [features]] or "
                                  "[input_key, {feat_names, head_index, additional_keys}]")
            key, spec = entry
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{where}: input key {key!r} is not a non-empty string")
            if key in keys:
                raise ConfigError(f"{where}: input {key!r} is mapped a second time; each input key appears once")
            default_head = min(idx, num_heads - 1)
            if isinstance(spec, Mapping):
                unknown = set(spec) - {"feat_names", "head_index", "additional_keys"}
                if unknown or "feat_names" not in spec:
                    raise ConfigError(f"{where}: options {sorted(spec)}; expected feat_names and optionally "
                                      "head_index, additional_keys")
                names, head, more = spec["feat_names"], spec.get("head_index", default_head), spec.get("additional_keys", [])
            else:
                names, head, more = spec, default_head, []
            head = opt.as_int(f"{where} head_index", head)
            if not 0 <= head < max(num_heads, 1) or num_heads == 0:
                raise ConfigError(f"{where}: head index {head} but MODEL.HEAD.PARAMS has {num_heads} heads")
            keys.append(key)
            feats.append(_names(f"{where} feat_names", names))
            heads.append(head)
            extra.append(_names(f"{where} additional_keys", more))
        return cls(tuple(keys), tuple(feats), tuple(heads), tuple(extra))

    def __bool__(self) -> bool:
        return len(self.input_keys) > 0


def _names(key: str, value: Any) -> Tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: got {value!r}, expected a list of names")
    return tuple(value)


@dataclass(frozen=True)
class HeadSpec:
    """One ``[name, {options}]`` entry of ``MODEL.HEAD.PARAMS``; ``key`` is where it was read."""

    name: str
    options: Dict[str, Any]
    key: str

    @classmethod
    def parse(cls, key: str, entry: Any) -> "HeadSpec":
        if (not isinstance(entry, (list, tuple)) or not 1 <= len(entry) <= 2 or not isinstance(entry[0], str)
                or not entry[0]):
            raise ConfigError(f"{key}: got {entry!r}, expected [name, {{options}}]")
        options = entry[1] if len(entry) == 2 and entry[1] is not None else {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ConfigError(f"{key}: options of head {entry[0]!r}: got {options!r}, expected a mapping of "
                              "option names to values")
        return cls(entry[0], dict(options), key)


HeadEntry = Union[HeadSpec, Tuple[HeadSpec, ...]]


def parse_head_params(params: Any) -> Tuple[HeadEntry, ...]:
    """``MODEL.HEAD.PARAMS`` checked: one ``HeadSpec`` per head, or a tuple of them for an entry
    that is itself a list of ``[name, options]`` pairs (a chain of head modules run in order)."""
    key = "MODEL.HEAD.PARAMS"
    if not isinstance(params, (list, tuple)):
        raise ConfigError(f"{key}: got {params!r}, expected a list of [name, {{options}}] entries "
                          "(an empty list for a model without heads)")
    heads: List[HeadEntry] = []
    for i, entry in enumerate(params):
        if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], (list, tuple)):
            heads.append(tuple(HeadSpec.parse(f"{key}[{i}][{j}]", p) for j, p in enumerate(entry)))
        else:
            heads.append(HeadSpec.parse(f"{key}[{i}]", entry))
    return tuple(heads)


@dataclass(frozen=True)
class ModelOptions:
    """Everything the model itself reads from ``MODEL``, parsed and checked once at construction."""

    trunk_name: str
    eval_settings: FeatureEvalSettings
    input_mapping: MultiInputMapping
    heads: Tuple[HeadEntry, ...]
    single_pass_every_crop: bool = False
    init_seed: int = 0

    @classmethod
    def from_config(cls, model_config: Mapping) -> "ModelOptions":
        if not isinstance(model_config, Mapping):
            raise ConfigError(f"MODEL: got {model_config!r}, expected a mapping of MODEL options")
        for section in ("TRUNK", "HEAD"):
            if not isinstance(model_config[section], Mapping):
                raise ConfigError(f"MODEL.{section}: got {model_config[section]!r}, expected a mapping")
        trunk_name = model_config["TRUNK"]["NAME"]
        if not isinstance(trunk_name, str) or not trunk_name:
            raise ConfigError(f"MODEL.TRUNK.NAME: got {trunk_name!r}, expected a trunk name")
        heads = parse_head_params(model_config["HEAD"]["PARAMS"])
        return cls(
            trunk_name=trunk_name,
            eval_settings=FeatureEvalSettings.from_config(model_config),
            input_mapping=MultiInputMapping.from_config(model_config),
            heads=heads,
            single_pass_every_crop=opt.as_bool("MODEL.SINGLE_PASS_EVERY_CROP",
                                               model_config.get("SINGLE_PASS_EVERY_CROP", False)),
            init_seed=opt.model_init_seed(model_config),
        )
