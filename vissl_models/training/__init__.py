"""Training helpers around the model layer: mixed precision from ``MODEL.AMP_PARAMS``,
``TEMP_FROZEN_PARAMS_ITER_MAP``, optimizer parameter groups and the EMA (momentum) teacher.

Losses, data and the training loop stay with the user (see ``examples/``).
"""

from .amp import autocast, autocast_dtype, grad_scaler, needs_grad_scaler
from .ema import MomentumTeacher, cosine_momentum, teacher_model_config
from .freeze import TempFrozenParams, clean_param_name
from .optim import (
    complete_optimizer_config,
    get_optimizer_param_groups,
    larc_step_,
    restore_weight_decay_,
    schedule_start_value,
)

__all__ = [
    "MomentumTeacher",
    "TempFrozenParams",
    "autocast",
    "autocast_dtype",
    "clean_param_name",
    "complete_optimizer_config",
    "cosine_momentum",
    "get_optimizer_param_groups",
    "grad_scaler",
    "larc_step_",
    "needs_grad_scaler",
    "restore_weight_decay_",
    "schedule_start_value",
    "teacher_model_config",
]
