"""Checkpoints: safe reading, layout detection, WEIGHTS_INIT, conversion and loading with a report."""

from .io import CheckpointError, LoadedCheckpoint, find_model_state, load_checkpoint, safe_torch_load
from .layouts import detect_key_layout
from .load import LoadReport, StateMismatchError, apply_weights_init, load_module_state, load_weights
from .safe_pickle import Placeholder

__all__ = [
    "CheckpointError",
    "LoadReport",
    "LoadedCheckpoint",
    "Placeholder",
    "StateMismatchError",
    "apply_weights_init",
    "detect_key_layout",
    "find_model_state",
    "load_checkpoint",
    "load_module_state",
    "load_weights",
    "safe_torch_load",
]
