"""Checkpoints: safe reading, layout detection, WEIGHTS_INIT, conversion and loading with a report.

Every route that puts weights into a model goes through one core (:mod:`.core`): keys matched
(prefixes, teacher/student, on-the-fly layout conversion), every value validated, then applied
all or nothing. Every failure is a :class:`CheckpointError` naming the file (and key).
"""

from .core import LoadPolicy, LoadReport
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidValueError,
    StateMismatchError,
    UnsafeCheckpointError,
)
from .io import LoadedCheckpoint, find_model_state, load_checkpoint, safe_torch_load
from .layouts import detect_key_layout
from .load import apply_weights_init, load_module_state, load_weights
from .safe_pickle import Placeholder

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "InvalidValueError",
    "LoadPolicy",
    "LoadReport",
    "LoadedCheckpoint",
    "Placeholder",
    "StateMismatchError",
    "UnsafeCheckpointError",
    "apply_weights_init",
    "detect_key_layout",
    "find_model_state",
    "load_checkpoint",
    "load_module_state",
    "load_weights",
    "safe_torch_load",
]
