"""FSDP-sharded and sliced VISSL checkpoints: member files, and stitching shards back together.

Formats, as VISSL wrote them:

* ``shard_list``: ``{"type": "shard_list", "shards": [file per rank]}``; each shard file is a
  whole training checkpoint (``"type": "shard"``) whose ``classy_state_dict.base_model`` holds
  the rank's *local* FSDP state (``model.trunk``/``model.heads``) and the FSDP metadata needed to
  rebuild full tensors offline (``meta.trunk``/``meta.heads``). Shard paths are relative to the
  main file's folder unless absolute.
* FSDP metadata (fairscale's ``local_metadata_dict``): ``{"param_metadata": [...], "buffer_names":
  [...]}``, one ``param_metadata`` entry per FSDP instance with its ``fsdp_path`` and ``params``:
  backing (flat) parameter name -> ``{"names", "shapes", "numels", "padding"}``. A backing
  parameter is a 1-D tensor, split evenly across ranks with ``padding`` zeros at the end of each
  rank's piece; concatenating the unpadded pieces in rank order and splitting by ``numels`` gives
  the original parameters. Instances with ``no_broadcast_optim_state`` are not sharded (rank 0's
  copy is the full one). Buffers are replicated; rank 0's are used.
* ``slice_list``: ``classy_state_dict.base_model.model.{trunk,heads}`` map each parameter name to
  a file ``{"type": "slice", "weight": tensor}`` (older files keep that map under ``"layers"``).
  VISSL wrote absolute paths; a set moved to another folder is found next to the main file
  (``<main file without extension>_layers/``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .errors import CheckpointError, short_repr


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else (prefix or name)


def is_fsdp_metadata(meta: Any) -> bool:
    """True for fairscale's ``local_metadata_dict`` (a sharded local state needs it to consolidate)."""
    return isinstance(meta, Mapping) and "param_metadata" in meta


def consolidate_fsdp_shards(
    states: Sequence[Mapping[str, torch.Tensor]], metas: Sequence[Mapping[str, Any]], where: str
) -> Dict[str, torch.Tensor]:
    """Full state dict from each rank's local FSDP state and metadata (in rank order).

    Raises:
        CheckpointError: a shard lacks a tensor its metadata names, the metadata is malformed,
            or the pieces do not add up to the parameters' sizes (a shard missing or from
            another run).
    """
    if not states or len(states) != len(metas):
        raise CheckpointError(f"{where}: {len(states)} shard states but {len(metas)} shard metadata entries")
    try:
        return _consolidate(states, metas, where)
    except CheckpointError:
        raise
    except Exception as e:  # any malformed entry (wrong types, bad shapes): one named error
        text = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{where}: malformed FSDP shard metadata ({type(e).__name__}: {text})") from None


def _int(value: Any, what: str, where: str, low: int = 0, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise CheckpointError(f"{where}: malformed FSDP shard metadata: {what} is {short_repr(value)}, "
                              f"expected an int {bound}")
    return value


def _consolidate(states, metas, where) -> Dict[str, torch.Tensor]:
    world = len(states)
    meta0 = metas[0]
    out: Dict[str, torch.Tensor] = {}
    for idx, inst in enumerate(meta0["param_metadata"]):
        fsdp_path = inst.get("fsdp_path", "") or ""
        ranks = 1 if inst.get("no_broadcast_optim_state", False) else world
        for backing, info in inst["params"].items():
            key = _join(fsdp_path, backing)
            pieces = []
            for rank in range(ranks):
                if key not in states[rank]:
                    raise CheckpointError(f"{where}: shard {rank} has no {key!r}, which its FSDP metadata lists")
                flat = states[rank][key]
                if not isinstance(flat, torch.Tensor):
                    raise CheckpointError(f"{where}: shard {rank}'s {key!r} is a {type(flat).__name__}, not a tensor")
                flat = flat.reshape(-1)
                pad = _int(metas[rank]["param_metadata"][idx]["params"][backing]["padding"],
                           f"shard {rank}'s padding of {key!r}", where, 0, flat.numel())
                pieces.append(flat[: flat.numel() - pad] if pad > 0 else flat)
            full = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
            numels = [_int(n, f"a numel of {key!r}", where) for n in info["numels"]]
            names, shapes = list(info["names"]), [tuple(_int(d, f"a size of {key!r}", where) for d in shape)
                                                  for shape in info["shapes"]]
            if not (len(names) == len(numels) == len(shapes)):
                raise CheckpointError(f"{where}: malformed FSDP shard metadata: {key!r} lists {len(names)} names, "
                                      f"{len(numels)} numels and {len(shapes)} shapes")
            for name, n, shape in zip(names, numels, shapes):
                if math.prod(shape) != n:
                    raise CheckpointError(f"{where}: malformed FSDP shard metadata: {_join(fsdp_path, name)!r} has "
                                          f"shape {shape} but numel {n}")
            if sum(numels) != full.numel():
                raise CheckpointError(
                    f"{where}: {key!r} holds {full.numel()} values in {len(pieces)} shard(s) but its "
                    f"parameters need {sum(numels)}: a shard is missing, or the shards come from different runs"
                )
            for name, piece, shape in zip(names, full.split(numels), shapes):
                out[_join(fsdp_path, name)] = piece.view(tuple(shape))
    # Tied parameters are stored once; every FSDP instance lists its own ties.
    for inst in meta0["param_metadata"]:
        fsdp_path = inst.get("fsdp_path", "") or ""
        for src, dst in inst.get("shared_param_info", ()) or ():
            src_key = _join(fsdp_path, src) if _join(fsdp_path, src) in out else src
            if src_key not in out:
                raise CheckpointError(f"{where}: tied parameter {dst!r} refers to {src!r}, which no shard holds")
            out[_join(fsdp_path, dst)] = out[src_key]
    for name in meta0.get("buffer_names", ()):
        if name not in states[0]:
            raise CheckpointError(f"{where}: shard 0 has no buffer {name!r}, which its FSDP metadata lists")
        out[name] = states[0][name]
    return out


def _meta_of(part: Mapping[str, Any], name: str) -> Any:
    meta = part.get("meta") or {}
    return meta.get(name) if isinstance(meta, Mapping) else None


def assemble_vissl_model(parts: Sequence[Mapping[str, Any]], where: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Trunk and head state dicts from per-rank ``{"model": {"trunk", "heads"}, "meta": {...}}``
    (one entry for a consolidated file). Parts without FSDP metadata are full copies: the first
    is used. Heads saved as a list (one local state per FSDP head) come back as ``"<i>.<key>"``."""
    try:
        trunk_metas = [_meta_of(p, "trunk") for p in parts]
        trunk_states = [p["model"]["trunk"] for p in parts]
        if is_fsdp_metadata(trunk_metas[0]):
            trunk = consolidate_fsdp_shards(trunk_states, trunk_metas, f"{where} (trunk)")
        else:
            trunk = dict(trunk_states[0])
        heads0 = parts[0]["model"].get("heads", {})
        if isinstance(heads0, (list, tuple)):
            heads: Dict[str, Any] = {}
            for i in range(len(heads0)):
                metas_i = [(list(_meta_of(p, "heads") or []) + [{}] * (i + 1))[i] for p in parts]
                states_i = [p["model"]["heads"][i] for p in parts]
                if is_fsdp_metadata(metas_i[0]):
                    head = consolidate_fsdp_shards(states_i, metas_i, f"{where} (head {i})")
                else:
                    head = dict(states_i[0])
                heads.update({f"{i}.{k}": v for k, v in head.items()})
        else:
            heads = dict(heads0)
    except CheckpointError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        text = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{where}: the shards do not share one model layout ({type(e).__name__}: {text})") from None
    return trunk, heads


def assemble_flat(parts: Sequence[Mapping[str, Any]], where: str) -> Dict[str, Any]:
    """A flat state dict from per-rank ``{"flat": state, "meta": fsdp metadata or {}}``."""
    if is_fsdp_metadata(parts[0].get("meta")):
        return consolidate_fsdp_shards([p["flat"] for p in parts], [p["meta"] for p in parts], where)
    return dict(parts[0]["flat"])


def resolve_member(main_path: str, member: str) -> Optional[str]:
    """Where a shard or slice file named in ``main_path`` is: as written (absolute, or relative to
    the main file's folder), else by its file name next to the main file or in its ``_layers``
    folder (a checkpoint folder moved since it was written). ``None`` if nowhere."""
    folder = os.path.dirname(os.path.abspath(main_path))
    base = os.path.basename(member)
    candidates = [member if os.path.isabs(member) else os.path.join(folder, member),
                  os.path.join(folder, base),
                  os.path.join(os.path.splitext(os.path.abspath(main_path))[0] + "_layers", base),
                  os.path.join(folder, os.path.basename(os.path.dirname(member)), base)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return None


def resolve_members(main_path: str, members: Sequence[Any], what: str) -> List[str]:
    """Every member file's path; raises naming the missing ones (nothing is read before that)."""
    resolved, missing = [], []
    for i, member in enumerate(members):
        if not isinstance(member, str) or not member:
            raise CheckpointError(f"{main_path}: {what} {i} is {short_repr(member)}, not a file path")
        path = resolve_member(main_path, member)
        if path is None:
            missing.append(member)
        else:
            resolved.append(path)
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... (+{len(missing) - 5})" if len(missing) > 5 else "")
        raise CheckpointError(
            f"{main_path}: {len(missing)} of {len(members)} {what} files are missing: {shown} "
            f"(looked as written, and in {os.path.dirname(os.path.abspath(main_path))})"
        )
    return resolved


def read_slices(
    main_path: str, mapping: Mapping[str, Any], load: Callable[[str], Any], label: str
) -> Dict[str, torch.Tensor]:
    """Read every slice file of ``mapping`` (parameter name -> file) into a state dict."""
    names = list(mapping)
    paths = resolve_members(main_path, [mapping[n] for n in names], f"{label} slice")
    out: Dict[str, torch.Tensor] = {}
    for name, path in zip(names, paths):
        try:
            piece = load(path)
        except CheckpointError as e:
            raise CheckpointError(f"{e} ({label} slice {name!r} listed in {main_path})") from None
        if not (isinstance(piece, Mapping) and piece.get("type") == "slice"
                and isinstance(piece.get("weight"), torch.Tensor)):
            raise CheckpointError(f"{path}: not a VISSL slice file (expected {{'type': 'slice', 'weight': "
                                  f"tensor}}) for {label} {name!r} of {main_path}")
        out[name] = piece["weight"]
    return out


__all__ = [
    "assemble_flat",
    "assemble_vissl_model",
    "consolidate_fsdp_shards",
    "is_fsdp_metadata",
    "read_slices",
    "resolve_member",
    "resolve_members",
]
