"""Loading weights into a model with one readable report instead of a wall of log lines."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import CheckpointError
from .io import (
    LoadedCheckpoint,
    find_model_state,
    load_checkpoint,
    raw_state,
    refuse_placeholder_weights,
    safe_torch_load,
    split_trunk_heads,
)
from .sharded import assemble_vissl_model


@dataclass
class LoadReport:
    """What a load did: keys loaded, missing from the file, unused from the file, skipped.

    ``shape_mismatch`` describes keys whose checkpoint value does not fit the model
    (``"key: checkpoint (a, b) vs model (c, d)"``); ``shape_mismatch_skipped`` lists the keys
    that a non-strict load left as they were for that reason. ``checkpoint`` says what was read.
    """

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    shape_mismatch_skipped: List[str] = field(default_factory=list)
    shape_mismatch: List[str] = field(default_factory=list)
    checkpoint: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected and not self.shape_mismatch

    def details(self) -> str:
        """The non-empty key lists, each as ``; N <what>: k1, k2, ...``."""

        def part(name: str, keys: Sequence[str]) -> str:
            if not keys:
                return ""
            shown = ", ".join(keys[:5]) + (f", ... (+{len(keys) - 5})" if len(keys) > 5 else "")
            return f"; {len(keys)} {name}: {shown}"

        return (
            part("missing from checkpoint", self.missing)
            + part("unexpected in checkpoint", self.unexpected)
            + part("shape mismatches", self.shape_mismatch)
            + part("skipped on purpose", self.skipped)
            + part("skipped for shape", self.shape_mismatch_skipped)
        )

    def summary(self) -> str:
        return f"loaded {len(self.loaded)} keys{self.details()}"

    __str__ = summary


class StateMismatchError(CheckpointError):
    """A strict load found missing, unexpected or shape-mismatched keys; ``report`` has them all.
    The model was not changed."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


def _shape_mismatches(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> List[str]:
    return [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in source.items()
        if k in target and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(target[k].shape)
    ]


def check_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], label: str, strict: bool) -> LoadReport:
    """What loading ``state`` into ``module`` would do; raises on shape mismatches, and on missing
    or unexpected keys when ``strict``. Changes nothing."""
    own = module.state_dict()
    bad = _shape_mismatches(own, state)
    if bad:
        raise ValueError(f"{label}: {len(bad)} shape mismatches: " + "; ".join(bad[:10]))
    report = LoadReport(
        loaded=[k for k in own if k in state],
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
    )
    if strict and not report.ok:
        raise KeyError(f"{label}: state does not match the model: {report.summary()}")
    return report


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], label: str, strict: bool,
                      report: Optional[LoadReport] = None) -> LoadReport:
    """Load ``state`` into ``module`` after ``check_module_state`` (or with the ``report`` it gave),
    so a bad state changes nothing."""
    report = report or check_module_state(module, state, label, strict)
    own = set(report.loaded)
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return report


def _as_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _trunk_heads_for_weights_init(raw: Any, key_name: str, path: str) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """The base model's trunk and heads when WEIGHTS_INIT reads a VISSL checkpoint: a
    ``classy_state_dict`` file (FSDP-local states consolidated), or a shard or slice list."""
    if isinstance(raw, Mapping) and raw.get("type") in ("shard_list", "slice_list") and "classy_state_dict" not in raw:
        loaded = find_model_state(raw, path, which="base")
        return loaded.trunk, loaded.heads
    if key_name != "classy_state_dict":
        return None
    classy = raw_state(raw, key_name, path)
    model = classy.get("base_model") if isinstance(classy, Mapping) else None
    # Converted files in the original's model zoo may carry a trunk only; their heads count as missing.
    if not (isinstance(model, Mapping) and isinstance(model.get("model"), Mapping) and "trunk" in model["model"]):
        raise CheckpointError(f"{path}: 'classy_state_dict' has no base_model.model.trunk")
    return assemble_vissl_model([{"model": model["model"], "meta": model.get("meta") or {}}], path)


def weights_init_state(model, weights_init: Mapping, path: str) -> Dict[str, torch.Tensor]:
    """The flat ``trunk.*``/``heads.*`` state that MODEL.WEIGHTS_INIT selects from ``path``."""
    raw = safe_torch_load(path)
    key_name = weights_init.get("STATE_DICT_KEY_NAME") or ""
    extractor = model.eval_settings.is_feature_extractor
    found = _trunk_heads_for_weights_init(raw, key_name, path)
    if found is not None:
        trunk, heads = found
        already = bool(trunk) and all(k.startswith("base_model.") for k in trunk)
        if extractor and not already:
            trunk = {f"base_model.{k}": v for k, v in trunk.items()}
        elif not extractor:
            trunk = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in trunk.items()}
        state = {f"trunk.{k}": v for k, v in trunk.items()}
        state.update({f"heads.{k}": v for k, v in heads.items()})
        refuse_placeholder_weights(state, path)
        return state
    state = raw_state(raw, key_name, path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict under {key_name!r}, got {type(state).__name__}")
    remove, append = weights_init.get("REMOVE_PREFIX") or "", weights_init.get("APPEND_PREFIX") or ""
    if remove:
        state = {(k[len(remove):] if k.startswith(remove) else k): v for k, v in state.items()}
    if append:
        state = {f"{append}{k}": v for k, v in state.items()}
    if not any(k.startswith(("trunk.", "heads.")) for k in state):
        raise CheckpointError(
            f"{path}: no key starts with 'trunk.' or 'heads.' after MODEL.WEIGHTS_INIT prefixes "
            f"(REMOVE_PREFIX={remove!r}, APPEND_PREFIX={append!r}); first keys: {list(state)[:5]}"
        )
    if extractor:
        state = {(f"trunk.base_model.{k[len('trunk.'):]}" if k.startswith("trunk.") and not
                  k.startswith("trunk.base_model.") else k): v for k, v in state.items()}
    state = dict(state)
    refuse_placeholder_weights(state, path)
    return state


def _interpolate_position_embedding(model, key: str, value: torch.Tensor) -> torch.Tensor:
    """Resize a checkpoint's position embedding with the trunk's own method (fine-tuning at
    another resolution), as the original did; trunks without the method keep the value."""
    trunk = getattr(model.trunk, "base_model", model.trunk)
    interp = getattr(trunk, "interpolate_position_embedding", None)
    if not callable(interp):
        return value
    try:
        return interp(value)
    except Exception as e:
        raise ValueError(f"{key}: cannot interpolate the checkpoint's position embedding "
                         f"{tuple(value.shape)} to the model's: {e}") from e


def apply_weights_init(model, weights_init: Mapping) -> LoadReport:
    """Initialise ``model`` from ``MODEL.WEIGHTS_INIT`` (PARAMS_FILE and its key/prefix options).

    Keys containing any SKIP_LAYERS entry are left as built. Heads load unless evaluation mode is
    on without EVAL_TRUNK_AND_HEAD. A shape mismatch raises before anything is copied, except on
    heads when ASSERT_HEAD_LAYER_SHAPE_INIT is off (those are skipped and reported).
    """
    path = weights_init["PARAMS_FILE"]
    state = weights_init_state(model, weights_init, path)
    settings = model.eval_settings
    load_heads = not settings.eval_mode_on or settings.eval_trunk_and_head
    skip_layers = list(weights_init.get("SKIP_LAYERS") or [])
    own = model.state_dict()
    report = LoadReport()
    to_copy: List[Tuple[str, torch.Tensor]] = []
    errors = []
    for key, target in own.items():
        if skip_layers and any(s in key for s in skip_layers):
            report.skipped.append(key)
            continue
        if key not in state:
            report.missing.append(key)
            continue
        if key.startswith("heads.") and not load_heads:
            report.skipped.append(key)
            continue
        value = _as_tensor(state[key])
        if "pos_embedding" in key and tuple(value.shape) != tuple(target.shape):
            value = _interpolate_position_embedding(model, key, value)
        if tuple(value.shape) != tuple(target.shape):
            if key.startswith("heads.") and not settings.assert_head_layer_shape_init:
                report.shape_mismatch_skipped.append(key)
                continue
            errors.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        to_copy.append((key, value))
    if errors:
        raise ValueError(f"{path}: {len(errors)} shape mismatches: " + "; ".join(errors[:10]))
    with torch.no_grad():
        for key, value in to_copy:
            own[key].copy_(value)
            report.loaded.append(key)
    report.unexpected = [k for k in state if k not in own]
    return report


def as_loaded_checkpoint(source: Union[LoadedCheckpoint, str, "os.PathLike[str]", Mapping[str, Any]],
                         which: Optional[str] = None) -> LoadedCheckpoint:
    """A :class:`LoadedCheckpoint` from itself, a file path, or an in-memory checkpoint object."""
    if isinstance(source, LoadedCheckpoint):
        if which is not None and which != source.model:
            raise ValueError(f"which={which!r} given with an already loaded checkpoint holding {source.model!r}; "
                             "pass which to load_checkpoint instead")
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_checkpoint(source, which=which)
    if isinstance(source, Mapping):
        return find_model_state(source, "<memory>", which=which)
    raise TypeError(f"expected a LoadedCheckpoint, a checkpoint path or a checkpoint dict, got {type(source).__name__}")


def model_keyed_state(loaded: LoadedCheckpoint, model_keys: Sequence[str]) -> Dict[str, Any]:
    """The checkpoint's weights under the model's ``state_dict`` names (``trunk.*``, ``heads.*``).

    The trunk gains or loses the feature extractor's ``base_model.`` prefix to match the model
    (a pre-training checkpoint into a linear-evaluation model and back). Weights that belong to
    neither trunk nor heads keep their names (and so are reported as unexpected).
    """
    model_is_extractor = any(k.startswith("trunk.base_model.") for k in model_keys)
    trunk = loaded.trunk
    ckpt_is_extractor = bool(trunk) and all(k.startswith("base_model.") for k in trunk)
    if model_is_extractor and not ckpt_is_extractor:
        trunk = {f"base_model.{k}": v for k, v in trunk.items()}
    elif ckpt_is_extractor and not model_is_extractor:
        trunk = {k[len("base_model."):]: v for k, v in trunk.items()}
    state = {f"trunk.{k}": v for k, v in trunk.items()}
    state.update({f"heads.{k}": v for k, v in loaded.heads.items()})
    for k, v in loaded.unassigned.items():
        state.setdefault(k, v)
    return state


def plan_load(own: Mapping[str, torch.Tensor], state: Mapping[str, Any], strict: bool,
              skip: Sequence[str] = ()) -> Tuple[LoadReport, List[Tuple[str, torch.Tensor]]]:
    """Compare ``state`` with a model's ``own`` state dict; change nothing.

    Keys containing any ``skip`` entry are left out on purpose (``report.skipped``). Returns the
    report and the ``(key, value)`` pairs to copy: with ``strict=False`` the keys that fit, with
    ``strict=True`` all of them (the caller raises when the report is not ``ok``).
    """
    skip = tuple(s for s in skip if s)
    report = LoadReport()
    to_copy: List[Tuple[str, torch.Tensor]] = []
    for key, target in own.items():
        if skip and any(s in key for s in skip):
            report.skipped.append(key)
            continue
        if key not in state:
            report.missing.append(key)
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            report.shape_mismatch.append(f"{key}: checkpoint holds a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(target.shape):
            report.shape_mismatch.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
        elif value.is_complex() != target.is_complex():
            report.shape_mismatch.append(f"{key}: checkpoint dtype {value.dtype} vs model {target.dtype}")
        else:
            to_copy.append((key, value))
            continue
        report.shape_mismatch_skipped.append(key)
    for key in state:
        if key in own:
            continue
        if skip and any(s in key for s in skip):
            report.skipped.append(key)
        else:
            report.unexpected.append(key)
    if strict:
        report.shape_mismatch_skipped = []
    return report, to_copy


def load_weights(model: nn.Module, source: Union[LoadedCheckpoint, str, "os.PathLike[str]", Mapping[str, Any]],
                 strict: bool = True, skip: Sequence[str] = (), which: Optional[str] = None) -> LoadReport:
    """Load a checkpoint (a :class:`LoadedCheckpoint`, a path, or a checkpoint dict) into ``model``.

    Everything is checked before anything is copied: with ``strict=True`` any missing,
    unexpected or shape-mismatched key raises :class:`StateMismatchError` (its ``report`` lists
    them all) and the model is unchanged; with ``strict=False`` the keys that fit are loaded and
    the rest reported. Keys containing any ``skip`` entry are left alone and listed as skipped.
    ``which`` picks teacher/student/ema when ``source`` is a path or dict.
    """
    if isinstance(skip, str):
        skip = (skip,)
    loaded = as_loaded_checkpoint(source, which)
    own = model.state_dict()
    state = model_keyed_state(loaded, list(own))
    report, to_copy = plan_load(own, state, strict, skip)
    report.checkpoint = loaded.describe()
    if strict and not report.ok:
        hint = ""
        if loaded.source not in ("vissl", "unknown") and (report.missing or report.unexpected):
            hint = (f" (the trunk keys use the {loaded.key_layout} layout: convert them to VISSL's names with "
                    "vissl_models.checkpoint.convert first)")
        raise StateMismatchError(
            f"{loaded.path}: the checkpoint ({loaded.layout}) does not match the model, nothing was loaded"
            f"{report.details()}{hint}; load with strict=False to take what fits, or skip=(...) to leave "
            "keys out on purpose", report)
    with torch.no_grad():
        for key, value in to_copy:
            own[key].copy_(value)
            report.loaded.append(key)
    return report


__all__ = [
    "LoadReport",
    "StateMismatchError",
    "apply_weights_init",
    "as_loaded_checkpoint",
    "check_module_state",
    "load_module_state",
    "load_weights",
    "model_keyed_state",
    "plan_load",
    "split_trunk_heads",
    "weights_init_state",
]
