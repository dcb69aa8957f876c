"""Safe reading of VISSL checkpoint files and detection of their layout.

Checkpoints are pickles. They are read with ``torch.load(weights_only=True)``: tensors, plain
containers and an explicit allowlist of numpy types load; any other object in the file makes the
load fail with :class:`CheckpointError` and nothing from the file is executed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or understood; the message names the file."""


def _numpy_safe_globals() -> List[Any]:
    """numpy types that VISSL training checkpoints contain (arrays and scalars in meters/state)."""
    try:
        import numpy as np
    except ImportError:  # numpy is a dependency, but the loader does not need it for tensors
        return []
    safe: List[Any] = [np.ndarray, np.dtype]
    for mod_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = __import__(mod_name, fromlist=["_reconstruct", "scalar"])
        except ImportError:
            continue
        safe += [getattr(mod, "_reconstruct"), getattr(mod, "scalar")]
        break
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        safe += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return safe


def safe_torch_load(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` that never unpickles arbitrary objects.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is empty, truncated, not a PyTorch file, or holds objects
            outside the allowlist (the message names the first such object).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for bad files; all mean the same here
        text = " ".join(str(e).split())
        if "Unsupported global" in text or "weights_only" in text.lower():
            raise CheckpointError(
                f"{path}: refused to load: the file holds objects other than tensors and plain "
                f"containers, and nothing from it was executed ({text[:300]})"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another format): "
                              f"{type(e).__name__}: {text[:300]}") from None


@dataclass
class LoadedCheckpoint:
    """Trunk and head state dicts found in a checkpoint file, and how they were found."""

    path: str
    layout: str
    trunk: Dict[str, torch.Tensor]
    heads: Dict[str, torch.Tensor]
    other_keys: List[str] = field(default_factory=list)

    def classy_state(self) -> Dict[str, Any]:
        """``{"model": {"trunk": ..., "heads": ...}}`` for ``set_classy_state``."""
        return {"model": {"trunk": self.trunk, "heads": self.heads}}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip(d: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in d.items()}


def split_trunk_heads(state: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split a flat ``trunk.*``/``heads.*`` state dict; keys with neither prefix go to the trunk."""
    state = _strip(state, "module.") if all(k.startswith("module.") for k in state) else dict(state)
    trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    heads = {k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")}
    if not trunk and not heads:
        return dict(state), {}
    return trunk, heads


def find_model_state(obj: Any, path: str = "<memory>") -> LoadedCheckpoint:
    """Find the trunk and head weights in a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top of the checkpoint, got {type(obj).__name__}")
    other = [str(k) for k in obj.keys()]
    if "classy_state_dict" in obj:
        classy = obj["classy_state_dict"]
        base = classy.get("base_model", classy) if isinstance(classy, Mapping) else None
        model = base.get("model") if isinstance(base, Mapping) else None
        if not (isinstance(model, Mapping) and "trunk" in model):
            raise CheckpointError(f"{path}: 'classy_state_dict' has no base_model.model.trunk")
        return LoadedCheckpoint(path, "vissl_classy", dict(model["trunk"]), dict(model.get("heads", {})), other)
    if isinstance(obj.get("base_model"), Mapping) and isinstance(obj["base_model"].get("model"), Mapping):
        model = obj["base_model"]["model"]
        return LoadedCheckpoint(path, "vissl_base_model", dict(model["trunk"]), dict(model.get("heads", {})), other)
    if isinstance(obj.get("model"), Mapping) and "trunk" in obj["model"]:
        model = obj["model"]
        return LoadedCheckpoint(path, "classy_state", dict(model["trunk"]), dict(model.get("heads", {})), other)
    for key in ("model_state_dict", "state_dict"):
        if _is_state_dict(obj.get(key)):
            trunk, heads = split_trunk_heads(obj[key])
            return LoadedCheckpoint(path, key, trunk, heads, other)
    if _is_state_dict(obj):
        trunk, heads = split_trunk_heads(obj)
        return LoadedCheckpoint(path, "state_dict", trunk, heads, [])
    raise CheckpointError(
        f"{path}: no model weights found; top-level keys are {other[:20]} (expected 'classy_state_dict', "
        "'model_state_dict', 'state_dict', or a dict of tensors)"
    )


def load_checkpoint(path: str, map_location: Any = "cpu") -> LoadedCheckpoint:
    """Read a VISSL checkpoint (consolidated classy, ``model_state_dict`` or bare state dict).

    Returns the trunk and head state dicts (keys without the ``trunk.``/``heads.`` prefixes) and
    the layout that was recognised. Loading never executes code from the file.
    """
    return find_model_state(safe_torch_load(path, map_location), os.fspath(path))


def raw_state(obj: Any, key_name: Optional[str], path: str) -> Any:
    """``obj[key_name]`` with an error that lists the keys when it is missing."""
    if not key_name:
        return obj
    if not isinstance(obj, Mapping) or key_name not in obj:
        keys = list(obj.keys())[:20] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: no key {key_name!r} (MODEL.WEIGHTS_INIT.STATE_DICT_KEY_NAME); found {keys}")
    return obj[key_name]
