"""Checkpoints: safe reading, layout detection, WEIGHTS_INIT and loading with a report."""

from .io import CheckpointError, LoadedCheckpoint, find_model_state, load_checkpoint, safe_torch_load
from .load import LoadReport, apply_weights_init, load_module_state

__all__ = [
    "CheckpointError",
    "LoadReport",
    "LoadedCheckpoint",
    "apply_weights_init",
    "find_model_state",
    "load_checkpoint",
    "load_module_state",
    "safe_torch_load",
]
