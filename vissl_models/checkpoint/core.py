"""The one loading core: every route that puts weights into a model is a policy over it.

A load has three steps, and only the last one changes the model:

1. **plan**: match the checkpoint's keys to the model's (``trunk.``/``heads.`` names; a
   feature extractor's ``base_model.``, a ``module.`` or ``_feature_blocks.`` prefix added or
   removed; a torchvision, timm or classy_vision trunk layout converted to VISSL's names when
   that matches the model better), then sort every model key into loaded, missing, skipped or
   mismatched;
2. **validate**: every value that would be copied is a plain dense strided tensor of a real
   dtype of the target's kind (floating into floating, integer into integer, bool into bool)
   and the target's shape; meta, sparse, quantized and nested tensors, numpy arrays, lists,
   strings, placeholders and complex values for real weights are refused, all before the first
   copy;
3. **apply**: values are first cast to the target's device and dtype, then copied; if anything
   fails (or the copy is interrupted) every tensor already written is restored, so the model is
   either fully loaded or exactly as before.

The routes (``load_weights``, ``load_checkpoint``, ``set_classy_state``, ``MODEL.WEIGHTS_INIT``)
differ only in their :class:`LoadPolicy`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import CheckpointError, InvalidValueError, StateMismatchError
from .layouts import detect_key_layout
from .safe_pickle import Placeholder
from ..distributed.tensors import shard_like, sharded_target

LIBRARY_SOURCES = ("torchvision", "timm", "classy_vision")


@dataclass
class LoadReport:
    """What a load did: keys loaded, missing from the file, unused from the file, skipped.

    ``shape_mismatch`` describes keys whose checkpoint value does not fit the model
    (``"key: checkpoint (a, b) vs model (c, d)"``); ``shape_mismatch_skipped`` lists the keys
    that a lenient load left as they were for that reason. ``checkpoint`` says what was read;
    ``converted`` names an on-the-fly layout conversion (``"torchvision resnet -> vissl"``) and
    ``dropped`` the file's keys that conversion left out on purpose (a classifier the model has
    no place for).
    """

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    shape_mismatch_skipped: List[str] = field(default_factory=list)
    shape_mismatch: List[str] = field(default_factory=list)
    checkpoint: str = ""
    converted: str = ""
    dropped: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected and not self.shape_mismatch

    def details(self) -> str:
        """The conversion and the non-empty key lists, each as ``; N <what>: k1, k2, ...``."""

        def part(name: str, keys: Sequence[str]) -> str:
            if not keys:
                return ""
            shown = ", ".join(keys[:5]) + (f", ... (+{len(keys) - 5})" if len(keys) > 5 else "")
            return f"; {len(keys)} {name}: {shown}"

        return (
            (f"; converted {self.converted}" if self.converted else "")
            + part("missing from checkpoint", self.missing)
            + part("unexpected in checkpoint", self.unexpected)
            + part("shape mismatches", self.shape_mismatch)
            + part("skipped on purpose", self.skipped)
            + part("skipped for shape", self.shape_mismatch_skipped)
            + part("dropped by the conversion", self.dropped)
        )

    def summary(self) -> str:
        return f"loaded {len(self.loaded)} keys{self.details()}"

    __str__ = summary


@dataclass(frozen=True)
class LoadPolicy:
    """How strict one route is; everything else about a load is shared.

    ``strict``: missing and unexpected keys raise, except under the ``partial`` key prefixes
    (reported only). Shape mismatches raise unless ``skip_mismatched`` or the key is under
    ``skip_mismatched_under`` (then skipped and reported). Keys containing a ``skip`` entry or
    under a ``skip_under`` prefix are left alone on purpose. ``adapt(key, value, target)`` may
    reshape a value before the shape check (position-embedding interpolation). ``convert``
    allows converting a torchvision/timm/classy_vision trunk layout. ``advice`` ends the error.
    """

    strict: bool = True
    partial: Tuple[str, ...] = ()
    skip_mismatched: bool = False
    skip_mismatched_under: Tuple[str, ...] = ()
    skip: Tuple[str, ...] = ()
    skip_under: Tuple[str, ...] = ()
    adapt: Optional[Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]] = None
    convert: bool = True
    advice: str = ""


# ----------------------------------------------------------------------------- validation
def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating"
    return "integer"


def invalid_reason(value: Any, target: torch.Tensor) -> Optional[str]:
    """Why ``value`` cannot be copied into ``target`` (shape aside), or ``None`` when it can."""
    if isinstance(value, Placeholder) or (isinstance(value, type) and issubclass(value, Placeholder)):
        return f"an object of class {value.class_name}, which is not allowlisted"
    if not isinstance(value, torch.Tensor):
        module = type(value).__module__
        name = type(value).__name__ if module in ("builtins", None) else f"{module}.{type(value).__name__}"
        return f"a {name}, not a tensor"
    if type(value) not in (torch.Tensor, nn.Parameter) and type(value) is not type(target):
        return f"a tensor subclass ({type(value).__name__}), not a plain tensor"
    if value.is_nested:
        return "a nested tensor"
    if value.layout != torch.strided:
        return f"a {str(value.layout).replace('torch.', '')} tensor, not a dense one"
    if value.is_quantized:
        return "a quantized tensor"
    if value.is_meta or value.device.type == "meta":
        return "a meta tensor (it holds no values)"
    have, want = _kind(value.dtype), _kind(target.dtype)
    if have == "complex" and want != "complex":
        return f"complex ({value.dtype}) for a real {target.dtype} weight (the imaginary part would be lost)"
    if have != want:
        return f"{have} ({value.dtype}) for a {want} {target.dtype} weight"
    return None


def _shape_text(key: str, value: torch.Tensor, target: torch.Tensor) -> str:
    return f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}"


# ----------------------------------------------------------------------------- key matching
def _strip_common(state: Mapping[str, Any], prefix: str) -> Optional[Dict[str, Any]]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return None


def _score(trunk: Mapping[str, Any], own_trunk: Mapping[str, Any]) -> Tuple[int, int]:
    matched = sum(1 for k in trunk if k in own_trunk)
    return matched, -(len(trunk) - matched)


def _convert_trunk(trunk: Dict[str, Any], source: str, own: Mapping[str, torch.Tensor], heads_empty: bool):
    """``(trunk, heads, description, dropped)`` for ``trunk`` converted to VISSL's names, or a reason."""
    from . import convert as converter  # a sibling package that imports this one; load it lazily

    convert_weights = getattr(converter, "convert_weights", None)
    clf_w = own.get("heads.0.clf.0.weight")
    keep = heads_empty and clf_w is not None and "heads.0.clf.0.bias" in own and len(
        [k for k in own if k.startswith("heads.")]) == 2
    try:
        if convert_weights is None:
            return converter.convert_state_dict(trunk, source, "vissl"), {}, f"{source} -> vissl", []
        try:
            result = convert_weights(trunk, source, "vissl", keep_classifier=keep)
        except ValueError:
            if not keep:
                raise
            result = convert_weights(trunk, source, "vissl")
    except (ValueError, ImportError, KeyError) as e:
        return " ".join(str(e).split())[:200]
    heads = dict(result.heads)
    if any(f"heads.{k}" not in own or tuple(v.shape) != tuple(own[f"heads.{k}"].shape) for k, v in heads.items()):
        # The classifier does not fit the model's head: convert again, leaving it out (and listed).
        result, heads = convert_weights(trunk, source, "vissl"), {}
    dropped = list(result.dropped)
    text = f"{result.src} {result.family} -> vissl"
    if heads:
        text += " (the classifier became head 0)"
    return result.state, heads, text, dropped


def match_keys(own: Mapping[str, torch.Tensor], trunk: Mapping[str, Any], heads: Mapping[str, Any],
               unassigned: Mapping[str, Any] = None, *, convert: bool = True
               ) -> Tuple[Dict[str, Any], str, List[str], str]:
    """The checkpoint's weights under the model's ``state_dict`` names.

    ``trunk``/``heads`` are keyed without ``trunk.``/``heads.``. The trunk's names are matched
    to the model's: a feature extractor's ``base_model.`` added or removed, a ``module.``
    prefix removed, ``_feature_blocks.`` added or removed, or (``convert``) a
    torchvision/timm/classy_vision layout converted to VISSL's, whichever matches the model's
    trunk keys best (ties keep the names as they are). Returns ``(state, converted, dropped,
    why_not_converted)``.
    """
    own_trunk = {k[len("trunk."):]: v for k, v in own.items() if k.startswith("trunk.")}
    trunk = dict(trunk)
    heads = dict(heads)
    extractor = any(k.startswith("base_model.") for k in own_trunk)
    base = _strip_common(trunk, "base_model.")
    if base is not None:
        trunk = base
    inner = {k[len("base_model."):]: v for k, v in own_trunk.items()} if extractor else own_trunk

    candidates: List[Tuple[Dict[str, Any], Dict[str, Any], str, List[str]]] = [(trunk, {}, "", [])]
    for prefix in ("module.", "_feature_blocks."):
        stripped = _strip_common(trunk, prefix)
        if stripped is not None:
            candidates.append((stripped, {}, "", []))
    if trunk and not any(k.startswith("_feature_blocks.") for k in trunk):
        candidates.append(({f"_feature_blocks.{k}": v for k, v in trunk.items()}, {}, "", []))
    why_not = ""
    source = detect_key_layout(trunk.keys())[0] if trunk else "unknown"
    if convert and source in LIBRARY_SOURCES and not all(k in inner for k in trunk):
        converted = _convert_trunk(trunk, source, own, not heads)
        if isinstance(converted, str):
            why_not = converted
        else:
            state, new_heads, text, dropped = converted
            candidates.append((dict(state), new_heads, text, dropped))
    # The best match wins; on a tie the earlier candidate (the names as they are) does.
    best = max(range(len(candidates)), key=lambda i: (_score(candidates[i][0], inner), -i))
    trunk, new_heads, converted_text, dropped = candidates[best]
    heads = heads or new_heads
    if extractor:
        trunk = {f"base_model.{k}": v for k, v in trunk.items()}
    state = {f"trunk.{k}": v for k, v in trunk.items()}
    state.update({f"heads.{k}": v for k, v in heads.items()})
    for k, v in (unassigned or {}).items():
        state.setdefault(k, v)
    return state, converted_text, dropped, why_not


# ----------------------------------------------------------------------------- plan, apply
def plan(own: Mapping[str, torch.Tensor], state: Mapping[str, Any], policy: LoadPolicy, path: str,
         report: Optional[LoadReport] = None) -> Tuple[LoadReport, List[Tuple[str, torch.Tensor]]]:
    """Sort ``state`` against the model's ``own`` state dict and validate every value to copy.

    Returns the report and the ``(key, value)`` pairs to copy; changes nothing. Raises
    :class:`InvalidValueError` for a value that is not a loadable tensor and
    :class:`StateMismatchError` for what ``policy`` does not allow (both name the file and keys).
    """
    report = report or LoadReport()
    skip = tuple(s for s in policy.skip if s)

    def skipped(key: str) -> bool:
        return (bool(skip) and any(s in key for s in skip)) or key.startswith(policy.skip_under)

    to_copy: List[Tuple[str, torch.Tensor]] = []
    invalid: List[Tuple[str, str]] = []
    for key, target in own.items():
        if skipped(key):
            report.skipped.append(key)
            continue
        if key not in state:
            report.missing.append(key)
            continue
        value = state[key]
        reason = invalid_reason(value, target)
        if reason is not None:
            invalid.append((key, reason))
            continue
        if policy.adapt is not None and tuple(value.shape) != tuple(target.shape):
            try:
                value = policy.adapt(key, value, target)
            except Exception as e:
                raise CheckpointError(f"{path}: {key}: cannot adapt the checkpoint's {tuple(value.shape)} to the "
                                      f"model's {tuple(target.shape)}: {e}", path=path, key=key) from None
        if tuple(value.shape) != tuple(target.shape):
            report.shape_mismatch.append(_shape_text(key, value, target))
            if policy.skip_mismatched or key.startswith(policy.skip_mismatched_under):
                report.shape_mismatch_skipped.append(key)
            continue
        to_copy.append((key, value))
    for key in state:
        if key not in own:
            (report.skipped if skipped(key) else report.unexpected).append(key)
    if invalid:
        shown = "; ".join(f"{k} is {why}" for k, why in invalid[:5])
        more = f" (+{len(invalid) - 5} more)" if len(invalid) > 5 else ""
        raise InvalidValueError(f"{path}: {len(invalid)} checkpoint value(s) cannot be loaded: {shown}{more}; "
                                "nothing was loaded", path=path, key=invalid[0][0])

    partial = tuple(policy.partial)
    bad_missing = [k for k in report.missing if policy.strict and not k.startswith(partial)]
    bad_unexpected = [k for k in report.unexpected if policy.strict and not k.startswith(partial)]
    bad_shapes = [k for k in report.shape_mismatch if k.split(": ", 1)[0] not in report.shape_mismatch_skipped]
    if bad_missing or bad_unexpected or bad_shapes:
        first = (bad_missing + bad_unexpected + [s.split(": ", 1)[0] for s in bad_shapes])[0]
        raise StateMismatchError(
            f"{path}: the checkpoint{(' (' + report.checkpoint.split(': ', 1)[-1] + ')') if report.checkpoint else ''}"
            f" does not match the model, nothing was loaded{report.details()}"
            + (f"; {policy.advice}" if policy.advice else ""), report, path=path, key=first)
    return report, to_copy


def apply(own: Mapping[str, torch.Tensor], to_copy: Sequence[Tuple[str, torch.Tensor]], path: str,
          report: LoadReport) -> LoadReport:
    """Copy validated values into the model, all or nothing.

    Every value is first cast to its target's device and dtype (where a failure changes
    nothing); during the copies each target is saved before it is written, and on any failure or
    interrupt the saved values are put back before the error propagates.
    """
    staged: List[Tuple[str, torch.Tensor, torch.Tensor]] = []
    key = ""
    try:
        for key, value in to_copy:
            target = own[key]
            value = value.detach().to(device=target.device, dtype=target.dtype)
            if sharded_target(target):  # an FSDP2 model: keep this rank's shard of the full value
                value = shard_like(value, target)
            staged.append((key, target, value))
    except Exception as e:
        raise CheckpointError(f"{path}: {key}: cannot prepare the checkpoint value ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}); nothing was loaded", path=path, key=key) from None
    saved: List[Tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        try:
            for key, target, value in staged:
                saved.append((target, target.clone()))
                target.copy_(value)
        except BaseException as e:
            for target, old in reversed(saved):
                target.copy_(old)
            if isinstance(e, Exception):
                raise CheckpointError(f"{path}: {key}: copying failed ({type(e).__name__}: {e}); the model was "
                                      "restored as it was", path=path, key=key) from None
            raise
    report.loaded.extend(key for key, _, _ in staged)
    return report


def load_parts(model: nn.Module, trunk: Mapping[str, Any], heads: Mapping[str, Any],
               unassigned: Optional[Mapping[str, Any]] = None, *, policy: LoadPolicy, path: str,
               checkpoint: str = "") -> LoadReport:
    """Match, validate and apply a checkpoint's trunk and head weights (see the module doc)."""
    for part, mapping in (("trunk", trunk), ("heads", heads), ("other", unassigned or {})):
        if not isinstance(mapping, Mapping):
            raise InvalidValueError(f"{path}: the {part} weights are a {type(mapping).__name__}, not a state dict",
                                    path=path)
        bad = [k for k in mapping if not isinstance(k, str)]
        if bad:
            raise InvalidValueError(f"{path}: the {part} state dict has {len(bad)} key(s) that are not strings "
                                    f"(e.g. a {type(bad[0]).__name__}); nothing was loaded", path=path)
    own = model.state_dict()
    state, converted, dropped, why_not = match_keys(own, trunk, heads, unassigned, convert=policy.convert)
    report = LoadReport(checkpoint=checkpoint, converted=converted, dropped=dropped)
    if why_not and not converted:
        policy = dataclasses.replace(policy, advice=f"{policy.advice} (the trunk's layout was not converted: "
                                                    f"{why_not})".strip())
    report, to_copy = plan(own, state, policy, path, report)
    return apply(own, to_copy, path, report)


def load_state(model: nn.Module, state: Mapping[str, Any], *, policy: LoadPolicy, path: str,
               checkpoint: str = "") -> LoadReport:
    """:func:`load_parts` for a flat state dict keyed like ``model.state_dict()``."""
    trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    heads = {k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")}
    rest = {k: v for k, v in state.items() if not k.startswith(("trunk.", "heads."))}
    return load_parts(model, trunk, heads, rest, policy=policy, path=path, checkpoint=checkpoint)


__all__ = [
    "LoadPolicy",
    "LoadReport",
    "apply",
    "invalid_reason",
    "load_parts",
    "load_state",
    "match_keys",
    "plan",
]
