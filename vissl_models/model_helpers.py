"""Reading MODEL.FEATURE_EVAL_SETTINGS and the multi-input mapping into typed options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Tuple

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
        num_heads = len(model_config["HEAD"]["PARAMS"])
        keys, feats, heads, extra = [], [], [], []
        for idx, entry in enumerate(entries):
            where = f"MODEL.MULTI_INPUT_HEAD_MAPPING[{idx}]"
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise ConfigError(f"{where}: got {entry!r}, expected [input_key, [features]] or "
                                  "[input_key, {feat_names, head_index, additional_keys}]")
            key, spec = entry
            if key in keys:
                raise ValueError(f"duplicate key {key} specified for MODEL.MULTI_INPUT_HEAD_MAPPING.")
            default_head = min(idx, num_heads - 1)
            if isinstance(spec, Mapping):
                unknown = set(spec) - {"feat_names", "head_index", "additional_keys"}
                if unknown or "feat_names" not in spec:
                    raise ConfigError(f"{where}: options {sorted(spec)}; expected feat_names and optionally "
                                      "head_index, additional_keys")
                names, head, more = spec["feat_names"], spec.get("head_index", default_head), spec.get("additional_keys", [])
            else:
                names, head, more = spec, default_head, []
            if not 0 <= head < max(num_heads, 1) or num_heads == 0:
                raise ConfigError(f"{where}: head index {head} but MODEL.HEAD.PARAMS has {num_heads} heads")
            keys.append(str(key))
            feats.append(tuple(names))
            heads.append(int(head))
            extra.append(tuple(more))
        return cls(tuple(keys), tuple(feats), tuple(heads), tuple(extra))

    def __bool__(self) -> bool:
        return len(self.input_keys) > 0
