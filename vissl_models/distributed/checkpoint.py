"""Checkpoints of sharded models: full VISSL-layout states and ``torch.distributed.checkpoint`` (DCP).

A DCP directory written here holds the model state under ``model.<key>`` with the original's keys
(``model.trunk.*``, ``model.heads.*``), so any number of ranks (or one process, no process group)
can load it, and it converts to and from a consolidated VISSL file
(``{"classy_state_dict": {"base_model": {"model": {"trunk": ..., "heads": ...}}}}``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import nn

from .fsdp import is_sharded

_PREFIX = "model."


def _split_trunk_heads(flat: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    trunk = {k[len("trunk."):]: v for k, v in flat.items() if k.startswith("trunk.")}
    heads = {k[len("heads."):]: v for k, v in flat.items() if k.startswith("heads.")}
    other = sorted(k for k in flat if not k.startswith(("trunk.", "heads.")))
    if other:
        raise KeyError(f"model state keys outside trunk./heads.: {other[:5]}")
    return {"model": {"trunk": trunk, "heads": heads}}


def _flat_classy(state: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    try:
        trunk, heads = state["model"]["trunk"], state["model"]["heads"]
    except (KeyError, TypeError):
        raise KeyError("expected {'model': {'trunk': ..., 'heads': ...}}") from None
    return {**{f"trunk.{k}": v for k, v in trunk.items()}, **{f"heads.{k}": v for k, v in heads.items()}}


def full_model_state_dict(model: nn.Module, rank0_only: bool = True) -> Dict[str, torch.Tensor]:
    """The unsharded state dict of a (sharded or plain) model on CPU, unsharded keys.

    A collective on a sharded model. ``rank0_only``: other ranks get ``{}`` (saves memory there).
    """
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=rank0_only))


def sharded_get_classy_state(model: nn.Module, rank0_only: bool = True) -> Dict[str, Any]:
    """``{"model": {"trunk": ..., "heads": ...}}`` of a sharded model, full tensors, the same keys as
    the unsharded model. A collective; with ``rank0_only`` the other ranks get empty parts."""
    flat = full_model_state_dict(model, rank0_only=rank0_only)
    return _split_trunk_heads(flat)


# ---------------------------------------------------------------------------------------------- DCP
def save_dcp(model: nn.Module, dcp_dir: str) -> None:
    """Save the model state with ``torch.distributed.checkpoint`` (each rank writes its shards).

    A collective on a sharded model; a plain model in one process saves without a process group.
    """
    import torch.distributed.checkpoint as dcp

    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model)
    else:
        state = model.state_dict()
    with _quiet():
        dcp.save({"model": state}, checkpoint_id=os.fspath(dcp_dir), no_dist=not _dist_ready())


def load_dcp(model: nn.Module, dcp_dir: str) -> None:
    """Load a DCP directory written by :func:`save_dcp` (or :func:`vissl_to_dcp`) on any number of
    ranks: resharded for a sharded model, full for a plain one. Every key must be present."""
    import torch.distributed.checkpoint as dcp

    _check_dcp_dir(dcp_dir)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        state = get_model_state_dict(model)
        with _quiet():
            dcp.load({"model": state}, checkpoint_id=os.fspath(dcp_dir), no_dist=not _dist_ready())
        set_model_state_dict(model, state)
        return
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with _quiet():
        dcp.load({"model": state}, checkpoint_id=os.fspath(dcp_dir), no_dist=not _dist_ready())
    model.load_state_dict(state)


@contextlib.contextmanager
def _quiet():
    # DCP warns that it assumes one process when there is no process group; here that is the intent.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _check_dcp_dir(dcp_dir: str) -> None:
    if not os.path.isdir(dcp_dir):
        raise FileNotFoundError(f"{dcp_dir}: not a directory")
    if not os.path.isfile(os.path.join(dcp_dir, ".metadata")):
        raise FileNotFoundError(f"{dcp_dir}: not a torch.distributed.checkpoint directory (no .metadata file)")


def is_dcp_dir(path: str) -> bool:
    """Whether ``path`` is a ``torch.distributed.checkpoint`` directory."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))


def read_dcp_model_state(dcp_dir: str) -> Dict[str, torch.Tensor]:
    """The full model state (``trunk.*``, ``heads.*`` keys) of a DCP directory, in one process.

    Tensors are allocated from the directory's metadata and filled by ``dcp.load`` without a
    process group. (DCP's metadata file is a pickle written by PyTorch: read only directories you trust.)
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    _check_dcp_dir(dcp_dir)
    meta = dcp.FileSystemReader(os.fspath(dcp_dir)).read_metadata()
    state: Dict[str, torch.Tensor] = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith(_PREFIX) and isinstance(md, TensorStorageMetadata):
            state[key[len(_PREFIX):]] = torch.empty(md.size, dtype=md.properties.dtype)
    if not state:
        raise KeyError(f"{dcp_dir}: no 'model.*' tensors (keys: {sorted(meta.state_dict_metadata)[:5]})")
    with _quiet():
        dcp.load({"model": state}, checkpoint_id=os.fspath(dcp_dir), no_dist=True)
    return state


def dcp_to_vissl(dcp_dir: str, out_file: str) -> Tuple[int, int]:
    """Consolidate a DCP directory into one VISSL checkpoint file (classy layout, the original's
    keys), written atomically. Returns (trunk keys, head keys)."""
    from ..fileio import atomic_write, check_output_path

    check_output_path(out_file, [dcp_dir])
    state = _split_trunk_heads(read_dcp_model_state(dcp_dir))
    with atomic_write(os.fspath(out_file)) as f:
        torch.save({"classy_state_dict": {"base_model": state}}, f)
    return len(state["model"]["trunk"]), len(state["model"]["heads"])


def vissl_to_dcp(in_file: str, dcp_dir: str) -> Tuple[int, int]:
    """Write a VISSL checkpoint (any layout ``load_checkpoint`` reads, sharded ones included) as a DCP
    directory that :func:`load_dcp` loads on any number of ranks. Refuses a non-empty ``dcp_dir``.
    Returns (trunk keys, head keys)."""
    import torch.distributed.checkpoint as dcp

    from ..checkpoint.io import load_checkpoint

    if os.path.exists(dcp_dir) and (not os.path.isdir(dcp_dir) or os.listdir(dcp_dir)):
        raise FileExistsError(f"{dcp_dir}: exists and is not an empty directory; refusing to overwrite it")
    loaded = load_checkpoint(os.fspath(in_file))
    flat = _flat_classy(loaded.classy_state())
    tensors = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(flat):
        bad = sorted(k for k in flat if k not in tensors)
        raise TypeError(f"{in_file}: non-tensor model entries {bad[:5]}")
    with _quiet():
        dcp.save({"model": tensors}, checkpoint_id=os.fspath(dcp_dir), no_dist=True)
    return len(loaded.trunk), len(loaded.heads)


def run_dcp_convert(args: Any, out: Any) -> Any:
    """The DCP cases of ``vissl-models convert``: IN a DCP directory -> one VISSL file (``--to``
    omitted or ``vissl``), or ``--to dcp`` -> a DCP directory OUT. Returns the exit code, or
    ``None`` when neither applies (the layout converters take over)."""
    import sys

    src_is_dcp = is_dcp_dir(args.input)
    if not src_is_dcp and args.to != "dcp":
        if args.to is None:
            print(f"vissl-models convert: error: --to is required ({args.input} is not a "
                  "torch.distributed.checkpoint directory)", file=sys.stderr)
            return 2
        return None
    if src_is_dcp and args.to not in (None, "vissl"):
        print(f"vissl-models convert: error: {args.input} is a torch.distributed.checkpoint directory; it converts "
              f"to one VISSL file (--to vissl), not --to {args.to}", file=sys.stderr)
        return 2
    try:
        if src_is_dcp:
            n_trunk, n_heads = dcp_to_vissl(args.input, args.output)
            what = f"DCP directory {args.input} -> VISSL file {args.output}"
        else:
            n_trunk, n_heads = vissl_to_dcp(args.input, args.output)
            what = f"{args.input} -> DCP directory {args.output}"
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, TypeError, OSError) as e:
        print(f"vissl-models convert: error: {e}", file=sys.stderr)
        return 2
    print(f"converted {what}: {n_trunk} trunk and {n_heads} head tensors", file=out)
    return 0
