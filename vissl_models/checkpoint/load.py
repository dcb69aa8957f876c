"""Loading weights into a model with one readable report instead of a wall of log lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from .io import CheckpointError, raw_state, safe_torch_load, split_trunk_heads


@dataclass
class LoadReport:
    """What a load did: keys loaded, missing from the file, unused from the file, skipped."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    shape_mismatch_skipped: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

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
            + part("skipped on purpose", self.skipped)
            + part("skipped for shape", self.shape_mismatch_skipped)
        )

    def summary(self) -> str:
        return f"loaded {len(self.loaded)} keys{self.details()}"

    __str__ = summary


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


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], label: str, strict: bool) -> LoadReport:
    """Load ``state`` into ``module`` after ``check_module_state``, so a bad state changes nothing."""
    report = check_module_state(module, state, label, strict)
    own = set(report.loaded)
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return report


def _as_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def weights_init_state(model, weights_init: Mapping, path: str) -> Dict[str, torch.Tensor]:
    """The flat ``trunk.*``/``heads.*`` state that MODEL.WEIGHTS_INIT selects from ``path``."""
    raw = safe_torch_load(path)
    key_name = weights_init.get("STATE_DICT_KEY_NAME") or ""
    extractor = model.eval_settings.is_feature_extractor
    if key_name == "classy_state_dict":
        classy = raw_state(raw, key_name, path)
        try:
            trunk, heads = dict(classy["base_model"]["model"]["trunk"]), dict(classy["base_model"]["model"]["heads"])
        except (KeyError, TypeError):
            raise CheckpointError(f"{path}: 'classy_state_dict' has no base_model.model.trunk/heads") from None
        already = bool(trunk) and all(k.startswith("base_model.") for k in trunk)
        if extractor and not already:
            trunk = {f"base_model.{k}": v for k, v in trunk.items()}
        elif not extractor:
            trunk = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in trunk.items()}
        state = {f"trunk.{k}": v for k, v in trunk.items()}
        state.update({f"heads.{k}": v for k, v in heads.items()})
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
    return dict(state)


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


__all__ = ["LoadReport", "apply_weights_init", "check_module_state", "load_module_state", "split_trunk_heads", "weights_init_state"]
