"""vissl_models: VISSL's model layer (trunks, heads, SSL model, checkpoints) on current PyTorch."""

from .checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidValueError,
    LoadedCheckpoint,
    LoadReport,
    StateMismatchError,
    UnsafeCheckpointError,
    load_checkpoint,
)
from .config import AttrDict, ConfigError, ConfigNotFoundError, load_config
from .registry import (
    get_model_head,
    get_model_trunk,
    list_heads,
    list_trunks,
    register_model,
    register_model_head,
    register_model_trunk,
)
from . import heads as _heads  # noqa: F401  (registers the built-in heads)
from . import trunks as _trunks  # noqa: F401  (registers the built-in trunks)
from .model import BaseSSLMultiInputOutputModel, build_model
from .api import UnknownModelError, create_model, list_models
from .pretrained import PretrainedCfg

__version__ = "0.1.0"

__all__ = [
    "AttrDict",
    "BaseSSLMultiInputOutputModel",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "ConfigNotFoundError",
    "CorruptCheckpointError",
    "InvalidValueError",
    "LoadReport",
    "LoadedCheckpoint",
    "PretrainedCfg",
    "StateMismatchError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "build_model",
    "create_model",
    "get_model_head",
    "get_model_trunk",
    "list_heads",
    "list_models",
    "list_trunks",
    "load_checkpoint",
    "load_config",
    "register_model",
    "register_model_head",
    "register_model_trunk",
]
