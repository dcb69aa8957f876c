"""``MODEL.AMP_PARAMS`` -> a ``torch.autocast`` dtype (and whether a gradient scaler is needed).

The original ran apex AMP (``AMP_TYPE: apex``, ``AMP_ARGS.opt_level``) or ``torch.cuda.amp.autocast``
(``AMP_TYPE: pytorch``, float16). Apex is gone; its opt levels map onto torch autocast:
O0 -> no autocast, O1 -> float16 autocast, O2/O3 -> float16 autocast (the half-precision master
weights of O2/O3 are not reproduced; a warning says so). ``AMP_ARGS.dtype`` (``float16``,
``bfloat16``) picks the autocast dtype for either type; bfloat16 needs no gradient scaler.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Mapping, Optional

import torch

from ..config import ConfigError

AMP_TYPES = ("apex", "pytorch")
APEX_OPT_LEVELS = ("O0", "O1", "O2", "O3")
_DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def _amp_params(model_config: Mapping) -> Mapping:
    # Accept the MODEL section or the AMP_PARAMS section itself.
    return model_config["AMP_PARAMS"] if "AMP_PARAMS" in model_config else model_config


def autocast_dtype(model_config: Mapping, warn: bool = True) -> Optional[torch.dtype]:
    """The autocast dtype ``MODEL.AMP_PARAMS`` asks for, or ``None`` for full precision.

    Args:
        model_config: the ``MODEL`` section (or its ``AMP_PARAMS``).
        warn: warn when an apex setting is mapped onto torch autocast.

    Raises:
        ConfigError: an unknown ``AMP_TYPE``, ``AMP_ARGS.opt_level`` or ``AMP_ARGS.dtype``.
    """
    amp = _amp_params(model_config)
    if not amp.get("USE_AMP", False):
        return None
    amp_type = str(amp.get("AMP_TYPE", "apex")).lower()
    if amp_type not in AMP_TYPES:
        raise ConfigError(f"MODEL.AMP_PARAMS.AMP_TYPE: got {amp.get('AMP_TYPE')!r}, allowed: {list(AMP_TYPES)}")
    args = dict(amp.get("AMP_ARGS") or {})
    dtype_name = args.get("dtype")
    dtype = None
    if dtype_name is not None:
        dtype = _DTYPES.get(str(dtype_name).lower().replace("torch.", ""))
        if dtype is None:
            raise ConfigError(f"MODEL.AMP_PARAMS.AMP_ARGS.dtype: got {dtype_name!r}, allowed: {sorted(_DTYPES)}")
    if amp_type == "pytorch":
        # The original's torch.cuda.amp.autocast() default: float16.
        return dtype or torch.float16
    level = str(args.get("opt_level", "O1")).upper()
    if level not in APEX_OPT_LEVELS:
        raise ConfigError(
            f"MODEL.AMP_PARAMS.AMP_ARGS.opt_level: got {args.get('opt_level')!r}, allowed: {list(APEX_OPT_LEVELS)}"
        )
    if level == "O0":
        return None
    dtype = dtype or torch.float16
    if warn:
        extra = "" if level == "O1" else f" (apex {level}'s half-precision model and master weights are not reproduced)"
        warnings.warn(
            f"MODEL.AMP_PARAMS: apex AMP opt_level {level} runs as torch.autocast({str(dtype)[6:]}){extra}; "
            "set AMP_TYPE: pytorch to silence this",
            stacklevel=2,
        )
    return dtype


def autocast(model_config: Mapping, device_type: str = "cuda", warn: bool = True):
    """A ``torch.autocast`` context for ``MODEL.AMP_PARAMS`` (a null context when AMP is off)."""
    dtype = autocast_dtype(model_config, warn=warn)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def needs_grad_scaler(model_config: Mapping) -> bool:
    """True when the autocast dtype is float16 (its gradients underflow without loss scaling)."""
    return autocast_dtype(model_config, warn=False) == torch.float16


def grad_scaler(model_config: Mapping, device_type: str = "cuda") -> "torch.amp.GradScaler":
    """A ``torch.amp.GradScaler``, enabled only when float16 autocast needs one."""
    return torch.amp.GradScaler(device_type, enabled=needs_grad_scaler(model_config))
