"""Safe reading of checkpoint files and recognition of their layout.

Reading never executes code from the file. A first pass uses ``torch.load(weights_only=True)``
(tensors, plain containers, numpy arrays and scalars). If the file holds other objects (meters,
hook or loss states, an ``argparse.Namespace``, custom classes), a second pass reads it through
torch's loader with the restricted unpickler of :mod:`.safe_pickle`: those objects become inert
:class:`~.safe_pickle.Placeholder` objects that record the class name they stood for, while
tensors come through exactly. Model weights that would need such an object are refused.

Layouts recognised by :func:`load_checkpoint` (``LoadedCheckpoint.layout``):

* ``vissl_classy``: VISSL's trainer checkpoint, ``{"classy_state_dict": {"base_model": {"model":
  {"trunk", "heads"}, "meta"}, ...}, "type": "consolidated"}`` (DINO/iBOT/MSN runs also keep the
  momentum teacher in the loss state; an EMA run keeps ``ema_model``);
* ``vissl_shard``: one rank's file of an FSDP run, complete only when the run had one rank;
* ``vissl_shard_list``: an FSDP run's main file listing one file per rank (stitched together here);
* ``vissl_slice_list``: a file per parameter, listed by a main file;
* ``vissl_base_model`` (``{"base_model": {"model": ...}}``) and ``classy_state``
  (``{"model": {"trunk", "heads"}}``, what ``get_classy_state`` returns);
* ``teacher_student``: DINO/iBOT-style ``{"teacher": ..., "student": ...}`` (MSN's
  ``target_encoder``/``encoder`` too), with ``module.``/``backbone.``/``head.`` prefixes;
* ``model_state_dict``, ``state_dict``, ``model``, ``state_dict_ema``, ``model_ema``: a flat
  state dict under that key; ``state_dict`` also for a bare state dict.

Whose key names the trunk uses is reported separately (``source``/``arch``, e.g.
``torchvision``/``resnet``, ``timm``/``vit``); renaming them is :mod:`.convert`'s job.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    short_repr,
)
from .layouts import detect_key_layout, key_layout_name
from .safe_pickle import RESTRICTED_PICKLE, Placeholder, RefusedByAllowlist, TooDeepError, find_placeholders
from .sharded import (
    assemble_flat,
    assemble_vissl_model,
    is_fsdp_metadata,
    read_slices,
    resolve_members,
)

# "base": the model the trainer optimised (the student when there is a teacher), as WEIGHTS_INIT reads it.
WHICH_CHOICES = (None, "teacher", "student", "ema", "base")


# ----------------------------------------------------------------------------- reading files
def _is_torchscript_archive(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in z.namelist())
    except Exception:  # not a zip, or a damaged one (bad names raise UnicodeDecodeError...): torch.load decides
        return False


def _unreadable(path: str, e: BaseException) -> CheckpointError:
    text = " ".join(str(e).split())
    return CorruptCheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, damaged or another "
                                  f"format): {type(e).__name__}: {text[:300]}", path=path)


def check_structure(obj: Any, path: str) -> List[Tuple[str, str]]:
    """The placeholders in ``obj`` (``(where, class)``); raises :class:`UnsafeCheckpointError` when
    its containers nest deeper than any checkpoint does (a bomb, not a checkpoint)."""
    try:
        return find_placeholders(obj)
    except TooDeepError as e:
        raise UnsafeCheckpointError(f"{path}: refused: {e}", path=path) from None


def safe_torch_load(path: str, map_location: Any = "cpu", allow_placeholders: bool = True) -> Any:
    """``torch.load`` that never executes code from the file.

    The file is read by torch's own loader (tensors are rebuilt exactly as torch rebuilds them)
    with a restricted unpickler: only allowlisted globals are reachable, constructors only take
    containers stored in the file (nothing can expand a few bytes into unbounded time or
    memory), and objects outside the allowlist come back as :class:`Placeholder` objects
    (``allow_placeholders=True``) or make the load fail. Torch's process-wide safe-globals list
    is neither read nor changed, so loads in other threads are unaffected.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist (also a ``FileNotFoundError``).
        CorruptCheckpointError: the file is empty, truncated, damaged or not a PyTorch file.
        UnsafeCheckpointError: a TorchScript archive, a refused construct, containers nested too
            deep, or (with ``allow_placeholders=False``) objects outside the allowlist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: checkpoint file not found", path=path)
    if os.path.getsize(path) == 0:
        raise CorruptCheckpointError(f"{path}: the file is empty", path=path)
    if _is_torchscript_archive(path):
        raise UnsafeCheckpointError(f"{path}: a TorchScript archive, not a checkpoint; refused (loading it runs "
                                    "its code)", path=path)
    try:
        with warnings.catch_warnings():
            # Plain pickles of a newer protocol draw a warning: noise here.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
                # The user demands torch's own weights-only loader (it refuses any pickle_module).
                obj = torch.load(path, map_location=map_location, weights_only=True)
            else:
                obj = torch.load(path, map_location=map_location, weights_only=False,
                                 pickle_module=RESTRICTED_PICKLE)
    except RefusedByAllowlist as e:
        raise UnsafeCheckpointError(f"{path}: refused to load ({' '.join(str(e).split())[:300]}); nothing from the "
                                    "file was executed", path=path) from None
    except RecursionError:
        raise UnsafeCheckpointError(f"{path}: refused: containers nested too deep to load", path=path) from None
    except MemoryError:
        raise UnsafeCheckpointError(f"{path}: refused: the file asks for more memory than is available",
                                    path=path) from None
    except Exception as e:  # torch and pickle raise many types for damaged files; all mean the same here
        raise _unreadable(path, e) from None
    placeholders = check_structure(obj, path)
    if placeholders and not allow_placeholders:
        shown = "; ".join(f"{p}: {c}" for p, c in placeholders[:3])
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain "
            f"containers ({shown}), and nothing from it was executed", path=path)
    return obj


# ----------------------------------------------------------------------------- result
@dataclass
class LoadedCheckpoint:
    """Trunk and head state dicts found in a checkpoint file, and how they were found.

    ``layout`` is the container (see the module doc); ``source``/``arch`` say whose key names
    the trunk uses; ``type`` is the file's own ``"type"`` field; ``model`` is ``"teacher"``,
    ``"student"`` or ``"ema"`` when the file held several models (``available`` lists them);
    ``other_keys`` are the file's top-level keys besides the weights; ``unassigned`` holds weights
    that belong to neither trunk nor heads; ``placeholders`` lists ``"where: class"`` for every
    object replaced by a placeholder; ``files`` every file read; ``info`` the file's scalar
    progress fields (phase_idx, iteration, epoch, ...).
    """

    path: str
    layout: str
    trunk: Dict[str, Any]
    heads: Dict[str, Any]
    other_keys: List[str] = field(default_factory=list)
    source: str = "unknown"
    arch: Optional[str] = None
    type: Optional[str] = None
    model: Optional[str] = None
    available: List[str] = field(default_factory=list)
    prefixes_removed: List[str] = field(default_factory=list)
    unassigned: Dict[str, Any] = field(default_factory=dict)
    placeholders: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def key_layout(self) -> str:
        """Whose key names the trunk uses: ``"vissl_resnet"``, ``"torchvision_resnet"``, ``"timm_vit"``..."""
        return key_layout_name(self.source, self.arch)

    def classy_state(self) -> Dict[str, Any]:
        """``{"model": {"trunk": ..., "heads": ...}}`` for ``set_classy_state``."""
        return {"model": {"trunk": self.trunk, "heads": self.heads}}

    def describe(self) -> str:
        """One line: layout, key names, model, sizes, placeholders."""
        parts = [f"layout {self.layout}", f"keys {self.key_layout}"]
        if self.type:
            parts.append(f"type {self.type}")
        if self.model:
            parts.append(f"model {self.model} (of {', '.join(self.available)})")
        parts.append(f"{len(self.trunk)} trunk / {len(self.heads)} head tensors")
        if self.unassigned:
            parts.append(f"{len(self.unassigned)} unassigned")
        if self.prefixes_removed:
            parts.append("prefixes removed " + ", ".join(self.prefixes_removed))
        if self.placeholders:
            parts.append(f"{len(self.placeholders)} placeholder(s): " + "; ".join(self.placeholders[:3]))
        return f"{self.path}: " + ", ".join(parts)


# ----------------------------------------------------------------------------- flat state dicts
def _looks_like_state_dict(obj: Any) -> bool:
    """A non-empty str-keyed mapping of tensors (placeholders tolerated, refused later)."""
    if not isinstance(obj, Mapping) or not obj:
        return False
    if not all(isinstance(k, str) for k in obj):
        return False
    values = list(obj.values())
    return all(isinstance(v, (torch.Tensor, Placeholder)) for v in values) and any(
        isinstance(v, torch.Tensor) for v in values)


def _strip_all(d: Mapping[str, Any], prefix: str) -> Optional[Dict[str, Any]]:
    if d and all(k.startswith(prefix) for k in d):
        return {k[len(prefix):]: v for k, v in d.items()}
    return None


def split_state(state: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any], List[str]]:
    """``(trunk, heads, unassigned, prefixes_removed)`` of a flat state dict.

    A ``module.`` prefix on every key (DDP) is removed. Then ``trunk.*``/``heads.*`` (VISSL) or
    ``backbone.*``/``head.*`` (DINO, iBOT) split the keys; keys with neither go to
    ``unassigned``. Without such prefixes every key is a trunk key.
    """
    removed: List[str] = []
    state = dict(state)
    stripped = _strip_all(state, "module.")
    if stripped is not None:
        state, removed = stripped, ["module."]
    for trunk_prefix, heads_prefix in (("trunk.", "heads."), ("backbone.", "head.")):
        if any(k.startswith(trunk_prefix) for k in state):
            trunk = {k[len(trunk_prefix):]: v for k, v in state.items() if k.startswith(trunk_prefix)}
            heads = {k[len(heads_prefix):]: v for k, v in state.items() if k.startswith(heads_prefix)}
            rest = {k: v for k, v in state.items() if not k.startswith((trunk_prefix, heads_prefix))}
            return trunk, heads, rest, removed + [trunk_prefix] + ([heads_prefix] if heads else [])
    if any(k.startswith("heads.") for k in state):
        heads = {k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")}
        rest = {k: v for k, v in state.items() if not k.startswith("heads.")}
        return {}, heads, rest, removed + ["heads."]
    return state, {}, {}, removed


def split_trunk_heads(state: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(trunk, heads)`` of a flat state dict (see :func:`split_state`; unassigned keys dropped)."""
    trunk, heads, _, _ = split_state(state)
    return trunk, heads


# ----------------------------------------------------------------------------- VISSL containers
def _refuse_placeholder(value: Any, where: str, what: str) -> None:
    if isinstance(value, Placeholder) or (isinstance(value, type) and issubclass(value, Placeholder)):
        raise UnsafeCheckpointError(
            f"{where}: {what} is an object of class {value.class_name}, which is not allowlisted: "
            "refused (nothing from the file was executed)"
        )


def _model_part(container: Any) -> Optional[Dict[str, Any]]:
    """``{"model": ..., "meta": ...}`` when ``container`` is VISSL's ``get_classy_state`` output."""
    if isinstance(container, Mapping) and isinstance(container.get("model"), Mapping) and "trunk" in container["model"]:
        return {"model": container["model"], "meta": container.get("meta") or {}}
    return None


def _teacher_part(loss: Any, where: str) -> Optional[Dict[str, Any]]:
    """The momentum teacher a VISSL DINO/iBOT/MSN loss state keeps, as ``{"flat", "meta"}``."""
    if not isinstance(loss, Mapping):
        return None
    teacher = loss.get("teacher")
    _refuse_placeholder(teacher, where, "the loss state's momentum teacher")
    if isinstance(teacher, Mapping) and teacher:
        return {"flat": teacher, "meta": loss.get("teacher_meta") or {}}
    flat = {k[len("momentum_teacher."):]: v for k, v in loss.items()
            if isinstance(k, str) and k.startswith("momentum_teacher.")}
    return {"flat": flat, "meta": {}} if flat else None


def _vissl_parts(obj: Mapping[str, Any], where: str) -> Dict[str, Dict[str, Any]]:
    """The models in one VISSL checkpoint file: ``model`` (base model), ``teacher``, ``ema``."""
    classy = obj["classy_state_dict"]
    _refuse_placeholder(classy, where, "'classy_state_dict'")
    if not isinstance(classy, Mapping):
        raise CheckpointError(f"{where}: 'classy_state_dict' is a {type(classy).__name__}, expected a dict")
    base = classy.get("base_model", classy)
    _refuse_placeholder(base, where, "'classy_state_dict.base_model'")
    parts: Dict[str, Dict[str, Any]] = {}
    model = _model_part(base)
    if model is not None:
        _refuse_placeholder(model["model"]["trunk"], where, "the trunk state")
        _refuse_placeholder(model["model"].get("heads"), where, "the heads state")
        parts["model"] = model
    ema = _model_part(classy.get("ema_model"))
    if ema is not None:
        parts["ema"] = ema
    for loss in (classy.get("loss"), obj.get("loss")):
        teacher = _teacher_part(loss, where)
        if teacher is not None:
            parts["teacher"] = teacher
            break
    if "model" not in parts and "teacher" not in parts:
        raise CheckpointError(f"{where}: 'classy_state_dict' has no base_model.model.trunk")
    return parts


def _available(names: Sequence[str]) -> List[str]:
    out = ["teacher", "student"] if "teacher" in names else ["model"]
    return out + (["ema"] if "ema" in names else [])


def _choose(names: Sequence[str], which: Optional[str], where: str) -> Tuple[str, Optional[str]]:
    """``(part name, reported model name)`` for ``which`` among the parts a file holds."""
    has_teacher = "teacher" in names
    if which is None:
        if has_teacher:
            return "teacher", "teacher"
        if "model" in names:
            return "model", None
    elif which == "teacher" and has_teacher:
        return "teacher", "teacher"
    elif which == "student" and has_teacher and "model" in names:
        return "model", "student"
    elif which == "ema" and "ema" in names:
        return "ema", "ema"
    elif which == "base" and "model" in names:
        return "model", ("student" if has_teacher else None)
    raise CheckpointError(f"{where}: no {which or 'model'!r} weights in this checkpoint; it holds {_available(names)}")


def _vissl_model(parts_per_file: Sequence[Dict[str, Dict[str, Any]]], which: Optional[str], where: str):
    """Trunk, heads, unassigned, prefixes, model name, available names from per-rank parts."""
    names = list(parts_per_file[0])
    key, label = _choose(names, which, where)
    for i, parts in enumerate(parts_per_file):
        if key not in parts:
            raise CheckpointError(f"{where}: shard {i} has no {key!r} weights while shard 0 does")
    chosen = [parts[key] for parts in parts_per_file]
    if key == "teacher":
        flat = assemble_flat(chosen, f"{where} (teacher)")
        trunk, heads, rest, removed = split_state(flat)
    else:
        trunk, heads = assemble_vissl_model(chosen, where)
        rest, removed = {}, []
    return trunk, heads, rest, removed, label, _available(names)


# ----------------------------------------------------------------------------- other containers
_PAIRS = (("teacher", "student"), ("target_encoder", "encoder"))
_FLAT_KEYS = ("model_state_dict", "state_dict", "model")
_EMA_KEYS = ("state_dict_ema", "model_ema")


def _scalar_info(obj: Mapping[str, Any]) -> Dict[str, Any]:
    info: Dict[str, Any] = {}
    containers = [obj]
    if isinstance(obj.get("classy_state_dict"), Mapping):
        containers.append(obj["classy_state_dict"])
    for container in containers:
        for k, v in container.items():
            if isinstance(k, str) and k != "type" and isinstance(v, (bool, int, float, str)) and k not in info:
                info[k] = v
    return info


def _finish(path: str, obj: Mapping[str, Any], layout: str, trunk: Dict[str, Any], heads: Dict[str, Any], *,
            used: Sequence[str], source: Optional[str] = None, model: Optional[str] = None,
            available: Sequence[str] = (), unassigned: Optional[Dict[str, Any]] = None,
            removed: Sequence[str] = (), files: Sequence[str] = (), placeholders: Sequence[str] = ()
            ) -> LoadedCheckpoint:
    refuse_placeholder_weights({"trunk": trunk, "heads": heads}, path)
    for part, mapping in (("trunk", trunk), ("heads", heads)):
        bad = [k for k in mapping if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"{path}: the {part} state dict has {len(bad)} key(s) that are not strings "
                                  f"(e.g. a {type(bad[0]).__name__})", path=path)
    if not trunk and not heads:
        raise CheckpointError(f"{path}: the {layout} layout was recognised but it holds no weights")
    detected, arch = detect_key_layout(trunk.keys())
    ftype = obj.get("type") if isinstance(obj.get("type"), str) else None
    return LoadedCheckpoint(
        path=path, layout=layout, trunk=trunk, heads=heads,
        other_keys=[str(k) for k in obj.keys() if k not in used and k != "type"],
        source=source or detected, arch=arch, type=ftype, model=model, available=list(available),
        prefixes_removed=list(removed), unassigned=dict(unassigned or {}),
        placeholders=list(placeholders), files=list(files) or [path], info=_scalar_info(obj),
    )


def refuse_placeholder_weights(state: Mapping[str, Any], path: str) -> None:
    """Raise when model weights hold a placeholder (an object outside the allowlist)."""
    bad = check_structure(state, path)
    if bad:
        shown = "; ".join(f"{p} is a {c}" for p, c in bad[:5])
        raise UnsafeCheckpointError(f"{path}: the model weights hold {len(bad)} object(s) whose class is not "
                              f"allowlisted ({shown}): refused (nothing from the file was executed)")


def _placeholder_notes(obj: Any, path: str, label: str = "") -> List[str]:
    return [f"{label}{where}: {cls}" for where, cls in check_structure(obj, path)]


def find_model_state(obj: Any, path: str = "<memory>", which: Optional[str] = None,
                     map_location: Any = "cpu") -> LoadedCheckpoint:
    """Find the trunk and head weights in a loaded checkpoint object (see the module doc).

    ``which`` picks a model when the file holds several: ``"teacher"`` (the default when there is
    one), ``"student"``, ``"ema"``, or ``"base"`` (the trained model: the student when there is a
    teacher, else the only one). Shard and slice files named by ``obj`` are read relative to
    ``path``'s folder.
    """
    if which not in WHICH_CHOICES:
        raise ValueError(f"which={which!r}: expected one of {list(WHICH_CHOICES)}")
    _refuse_placeholder(obj, path, "the whole file")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top of the checkpoint, got {type(obj).__name__}")
    notes = _placeholder_notes(obj, path)
    ftype = obj.get("type") if isinstance(obj.get("type"), str) else None

    if ftype == "shard_list" and "shards" in obj:
        return _from_shard_list(obj, path, which, map_location, notes)
    if ftype == "slice_list":
        return _from_slice_list(obj, path, which, map_location, notes)
    if ftype == "slice":
        raise CheckpointError(f"{path}: one slice of a sliced checkpoint (type 'slice'); load the "
                              "'slice_list' file that lists all slices")
    if "classy_state_dict" in obj:
        parts = _vissl_parts(obj, path)
        sharded = any(is_fsdp_metadata(_nested(p, "meta", "trunk")) or is_fsdp_metadata(p.get("meta"))
                      for p in parts.values())
        try:
            trunk, heads, rest, removed, label, available = _vissl_model([parts], which, path)
        except CheckpointError as e:
            if sharded:
                raise CheckpointError(f"{e} -- this file is one rank's shard of an FSDP checkpoint; load "
                                      "the 'shard_list' file that names every shard") from None
            raise
        return _finish(path, obj, "vissl_shard" if sharded else "vissl_classy", trunk, heads,
                       used=["classy_state_dict"], source="vissl", model=label, available=available,
                       unassigned=rest, removed=removed, placeholders=notes)
    for key, layout in (("base_model", "vissl_base_model"), (None, "classy_state")):
        container = obj.get(key) if key else obj
        model = _model_part(container)
        if model is not None:
            _choose(["model"], which, path)
            trunk, heads = assemble_vissl_model([model], path)
            return _finish(path, obj, layout, trunk, heads, used=[key or "model", "meta"], source="vissl",
                           available=["model"], placeholders=notes)
    for teacher_key, student_key in _PAIRS:
        if isinstance(obj.get(teacher_key), Mapping) and isinstance(obj.get(student_key), Mapping):
            if which == "ema":
                _choose(["teacher", "model"], which, path)
            student = which in ("student", "base")
            key = student_key if student else teacher_key
            _refuse_placeholder(obj[key], path, f"{key!r}")
            trunk, heads, rest, removed = split_state(obj[key])
            return _finish(path, obj, "teacher_student", trunk, heads, used=[teacher_key, student_key],
                           model="student" if student else "teacher",
                           available=["teacher", "student"], unassigned=rest, removed=removed,
                           placeholders=notes)
    keys = _EMA_KEYS if which == "ema" else _FLAT_KEYS
    for key in keys:
        value = obj.get(key)
        if _looks_like_state_dict(value):
            names = ["model"] + (["ema"] if any(_looks_like_state_dict(obj.get(k)) for k in _EMA_KEYS) else [])
            _choose(names, which, path)
            trunk, heads, rest, removed = split_state(value)
            return _finish(path, obj, key, trunk, heads, used=[key], model="ema" if which == "ema" else None,
                           available=names, unassigned=rest,
                           removed=removed, placeholders=notes)
    if which == "ema":
        _choose(["model"], which, path)
    if _looks_like_state_dict(obj):
        if which not in (None, "base"):
            _choose(["model"], which, path)
        trunk, heads, rest, removed = split_state(obj)
        return _finish(path, obj, "state_dict", trunk, heads, used=list(obj.keys()), available=["model"],
                       unassigned=rest, removed=removed, placeholders=notes)
    for key in ("base_model",) + tuple(k for pair in _PAIRS for k in pair) + _FLAT_KEYS + _EMA_KEYS:
        _refuse_placeholder(obj.get(key), path, f"{key!r}")
    other = [str(k) for k in obj.keys()]
    raise CheckpointError(
        f"{path}: no model weights found; top-level keys are {other[:20]} (expected 'classy_state_dict', "
        "'teacher'/'student', 'model_state_dict', 'state_dict', 'model', or a dict of tensors)"
    )


def _nested(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def _from_shard_list(obj: Mapping[str, Any], path: str, which: Optional[str], map_location: Any,
                     notes: List[str]) -> LoadedCheckpoint:
    shards = obj["shards"]
    if not isinstance(shards, (list, tuple)) or not shards:
        raise CheckpointError(f"{path}: 'shards' should list the shard files, got {short_repr(shards)}")
    paths = resolve_members(path, list(shards), "shard")
    parts_per_file = []
    for rank, shard_path in enumerate(paths):
        where = f"{shard_path} (shard {rank} of {len(paths)} listed in {path})"
        try:
            shard = safe_torch_load(shard_path, map_location)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (shard {rank} of {len(paths)} listed in {path})") from None
        if not isinstance(shard, Mapping) or "classy_state_dict" not in shard:
            raise CheckpointError(f"{where}: not a VISSL shard (no 'classy_state_dict')")
        notes = notes + _placeholder_notes(shard, shard_path, f"{os.path.basename(shard_path)}:")
        parts_per_file.append(_vissl_parts(shard, where))
        del shard  # keep only the model parts; the optimizer state of each rank can be large
    trunk, heads, rest, removed, label, available = _vissl_model(parts_per_file, which, path)
    return _finish(path, obj, "vissl_shard_list", trunk, heads, used=["shards"], source="vissl", model=label,
                   available=available, unassigned=rest, removed=removed, files=[path] + paths,
                   placeholders=notes)


def _from_slice_list(obj: Mapping[str, Any], path: str, which: Optional[str], map_location: Any,
                     notes: List[str]) -> LoadedCheckpoint:
    if which is not None:
        _choose(["model"], which, path)
    model = _nested(obj, "classy_state_dict", "base_model", "model")
    if isinstance(model, Mapping) and isinstance(model.get("trunk"), Mapping):
        trunk_map, heads_map, rest_map, removed = dict(model["trunk"]), dict(model.get("heads") or {}), {}, []
        used = ["classy_state_dict"]
    elif isinstance(obj.get("layers"), Mapping):
        trunk_map, heads_map, rest_map, removed = split_state(obj["layers"])
        used = ["layers"]
    else:
        raise CheckpointError(f"{path}: a 'slice_list' checkpoint without classy_state_dict.base_model.model "
                              "or 'layers' (the map from parameter names to slice files)")

    files: List[str] = [path]

    def load(slice_path: str) -> Any:
        files.append(slice_path)
        return safe_torch_load(slice_path, map_location, allow_placeholders=False)

    # Resolve every slice of every part before reading any, so a missing one fails fast.
    for label, mapping in (("trunk", trunk_map), ("heads", heads_map), ("unassigned", rest_map)):
        resolve_members(path, list(mapping.values()), f"{label} slice")
    trunk = read_slices(path, trunk_map, load, "trunk")
    heads = read_slices(path, heads_map, load, "heads")
    rest = read_slices(path, rest_map, load, "unassigned")
    return _finish(path, obj, "vissl_slice_list", trunk, heads, used=used, source="vissl", available=["model"],
                   unassigned=rest, removed=removed, files=files, placeholders=notes)


def load_checkpoint(path: str, map_location: Any = "cpu", which: Optional[str] = None) -> LoadedCheckpoint:
    """Read a checkpoint file in any layout VISSL wrote or published, or a torchvision/timm file.

    Returns the trunk and head state dicts (keys without ``trunk.``/``heads.`` prefixes), the
    layout, whose key names the trunk uses, and what else the file held (see
    :class:`LoadedCheckpoint`). ``which`` picks ``"teacher"`` (default when there is one),
    ``"student"`` or ``"ema"``. Shards and slices are read from the main file's folder.
    Loading never executes code from the file.
    """
    path = os.fspath(path)
    return find_model_state(safe_torch_load(path, map_location), path, which=which, map_location=map_location)


def raw_state(obj: Any, key_name: Optional[str], path: str) -> Any:
    """``obj[key_name]`` with an error that lists the keys when it is missing."""
    if not key_name:
        return obj
    if not isinstance(obj, Mapping) or key_name not in obj:
        keys = list(obj.keys())[:20] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: no key {key_name!r} (MODEL.WEIGHTS_INIT.STATE_DICT_KEY_NAME); found {keys}")
    return obj[key_name]


__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "find_model_state",
    "load_checkpoint",
    "raw_state",
    "refuse_placeholder_weights",
    "safe_torch_load",
    "split_state",
    "split_trunk_heads",
]
