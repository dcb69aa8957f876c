"""Loading weights into a model with one readable report instead of a wall of log lines."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .core import LIBRARY_SOURCES, LoadPolicy, LoadReport, apply, load_parts, plan
from .errors import CheckpointError, StateMismatchError
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


def _module_policy(strict: bool) -> LoadPolicy:
    return LoadPolicy(strict=strict, convert=False)


def check_module_state(module: nn.Module, state: Mapping[str, Any], label: str, strict: bool) -> LoadReport:
    """What loading ``state`` into ``module`` would do; raises (naming ``label`` and the keys) on
    values that are not loadable tensors, shape mismatches, and, when ``strict``, missing or
    unexpected keys. Changes nothing."""
    report, _ = plan(module.state_dict(), state, _module_policy(strict), label)
    return report


def load_module_state(module: nn.Module, state: Mapping[str, Any], label: str, strict: bool,
                      report: Optional[LoadReport] = None) -> LoadReport:
    """Load ``state`` into one module through the loading core: every value validated before
    the first copy, all or nothing. (``report`` is accepted for older callers and ignored: the
    plan is always made again, so a state changed since cannot slip through.)"""
    own = module.state_dict()
    report, to_copy = plan(own, state, _module_policy(strict), label)
    return apply(own, to_copy, label, report)


def _trunk_heads_for_weights_init(raw: Any, key_name: str, path: str) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """The base model's trunk and heads when WEIGHTS_INIT reads a VISSL checkpoint: a
    ``classy_state_dict`` file (FSDP-local states consolidated), or a shard or slice list (whose
    ``classy_state_dict`` maps names to files, not to weights)."""
    if isinstance(raw, Mapping) and raw.get("type") in ("shard_list", "slice_list"):
        loaded = find_model_state(raw, path, which="base")
        return loaded.trunk, loaded.heads
    if key_name != "classy_state_dict":
        return None
    classy = raw_state(raw, key_name, path)
    model = classy.get("base_model") if isinstance(classy, Mapping) else None
    # Converted files in the original's model zoo may carry a trunk only; their heads count as missing.
    if not (isinstance(model, Mapping) and isinstance(model.get("model"), Mapping) and "trunk" in model["model"]):
        raise CheckpointError(f"{path}: 'classy_state_dict' has no base_model.model.trunk", path=path)
    return assemble_vissl_model([{"model": model["model"], "meta": model.get("meta") or {}}], path)


def _library_file(raw: Any, path: str) -> Optional[LoadedCheckpoint]:
    """A torchvision/timm/classy_vision weights file, found the way ``load_checkpoint`` finds it."""
    try:
        loaded = find_model_state(raw, path)
    except CheckpointError:
        return None
    return loaded if loaded.source in LIBRARY_SOURCES and not loaded.heads else None


def weights_init_parts(weights_init: Mapping, path: str) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """``(trunk, heads, other)`` that MODEL.WEIGHTS_INIT selects from ``path``, read as the
    original did (STATE_DICT_KEY_NAME, REMOVE_PREFIX, APPEND_PREFIX). A torchvision, timm or
    classy_vision weights file (no such key, or no ``trunk.`` names after the prefixes) is taken
    as the trunk's weights, for the loading core to convert."""
    raw = safe_torch_load(path)
    key_name = weights_init.get("STATE_DICT_KEY_NAME") or ""
    if key_name and isinstance(raw, Mapping) and key_name not in raw and raw.get("type") not in (
            "shard_list", "slice_list"):
        library = _library_file(raw, path)
        if library is not None:
            return dict(library.trunk), {}, {}
    found = _trunk_heads_for_weights_init(raw, key_name, path)
    if found is not None:
        trunk, heads = found
        refuse_placeholder_weights({"trunk": trunk, "heads": heads}, path)
        return dict(trunk), dict(heads), {}
    state = raw_state(raw, key_name, path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict under {key_name!r}, got {type(state).__name__}",
                              path=path)
    if not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: the state dict under {key_name!r} has keys that are not strings", path=path)
    remove, append = weights_init.get("REMOVE_PREFIX") or "", weights_init.get("APPEND_PREFIX") or ""
    if remove:
        state = {(k[len(remove):] if k.startswith(remove) else k): v for k, v in state.items()}
    if append:
        state = {f"{append}{k}": v for k, v in state.items()}
    if not any(k.startswith(("trunk.", "heads.")) for k in state):
        library = _library_file(dict(state), path)
        if library is not None:
            return dict(library.trunk), {}, {}
        raise CheckpointError(
            f"{path}: no key starts with 'trunk.' or 'heads.' after MODEL.WEIGHTS_INIT prefixes "
            f"(REMOVE_PREFIX={remove!r}, APPEND_PREFIX={append!r}); first keys: {list(state)[:5]}", path=path)
    refuse_placeholder_weights(dict(state), path)
    trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    heads = {k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")}
    other = {k: v for k, v in state.items() if not k.startswith(("trunk.", "heads."))}
    return trunk, heads, other


def _interpolate_position_embedding(model, key: str, value: torch.Tensor) -> torch.Tensor:
    """Resize a checkpoint's position embedding with the trunk's own method (fine-tuning at
    another resolution), as the original did; trunks without the method keep the value."""
    trunk = getattr(model.trunk, "base_model", model.trunk)
    interp = getattr(trunk, "interpolate_position_embedding", None)
    if not callable(interp):
        return value
    return interp(value)


def apply_weights_init(model, weights_init: Mapping) -> LoadReport:
    """Initialise ``model`` from ``MODEL.WEIGHTS_INIT`` (PARAMS_FILE and its key/prefix options).

    Keys containing any SKIP_LAYERS entry are left as built. Heads load unless evaluation mode is
    on without EVAL_TRUNK_AND_HEAD. Missing and unused keys are reported, as in the original. A
    shape mismatch raises before anything is copied, except on heads when
    ASSERT_HEAD_LAYER_SHAPE_INIT is off (those are skipped and reported). A torchvision, timm or
    classy_vision file is converted on the fly when the model matches (``report.converted``).
    """
    path = weights_init["PARAMS_FILE"]
    trunk, heads, other = weights_init_parts(weights_init, path)
    settings = model.eval_settings
    load_heads = not settings.eval_mode_on or settings.eval_trunk_and_head

    def adapt(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _interpolate_position_embedding(model, key, value) if "pos_embedding" in key else value

    policy = LoadPolicy(
        strict=False,
        skip=tuple(s for s in (weights_init.get("SKIP_LAYERS") or []) if s),
        skip_under=() if load_heads else ("heads.",),
        skip_mismatched_under=() if settings.assert_head_layer_shape_init else ("heads.",),
        adapt=adapt,
        advice="MODEL.WEIGHTS_INIT.SKIP_LAYERS leaves keys out on purpose",
    )
    return load_parts(model, trunk, heads, other, policy=policy, path=path,
                      checkpoint=f"{path}: MODEL.WEIGHTS_INIT")


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


def load_weights(model: nn.Module, source: Union[LoadedCheckpoint, str, "os.PathLike[str]", Mapping[str, Any]],
                 strict: bool = True, skip: Sequence[str] = (), which: Optional[str] = None,
                 partial: Sequence[str] = ()) -> LoadReport:
    """Load a checkpoint (a :class:`LoadedCheckpoint`, a path, or a checkpoint dict) into ``model``.

    Every value is validated before anything is copied, and the copy is all or nothing. With
    ``strict=True`` any missing, unexpected or shape-mismatched key raises
    :class:`StateMismatchError` (its ``report`` lists them all) and the model is unchanged; keys
    under a ``partial`` prefix (e.g. ``"heads."``) may be missing or unexpected (reported). With
    ``strict=False`` the keys that fit are loaded and the rest reported. Keys containing any
    ``skip`` entry are left alone and listed as skipped. ``which`` picks teacher/student/ema when
    ``source`` is a path or dict. A torchvision/timm/classy_vision trunk layout is converted to
    VISSL's names when that matches the model (``report.converted`` says so).
    """
    if isinstance(skip, str):
        skip = (skip,)
    if isinstance(partial, str):
        partial = (partial,)
    loaded = as_loaded_checkpoint(source, which)
    policy = LoadPolicy(strict=strict, partial=tuple(partial), skip_mismatched=not strict, skip=tuple(skip),
                        advice="load with strict=False to take what fits, or skip=(...) to leave keys out on purpose")
    return load_parts(model, loaded.trunk, loaded.heads, loaded.unassigned, policy=policy, path=loaded.path,
                      checkpoint=loaded.describe())


__all__ = [
    "LoadPolicy",
    "LoadReport",
    "StateMismatchError",
    "apply_weights_init",
    "as_loaded_checkpoint",
    "check_module_state",
    "load_module_state",
    "load_weights",
    "split_trunk_heads",
    "weights_init_parts",
]
