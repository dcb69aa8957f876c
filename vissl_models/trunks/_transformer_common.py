"""Config reading the ViT-like trunks share (vision_transformer, xcit, swin, beit, convit, classy_vit).

Their sections (``VISION_TRANSFORMERS``, ``XCIT``, ``SWIN_TRANSFORMER``, ``BEIT``, ``CONVIT``) key
each option by its upper-cased name (``drop_path_rate`` is ``DROP_PATH_RATE``) and share many of
them; :func:`read_options` parses a family's list of options in its order (so the first bad value
is the one reported), the shared ones with their usual check.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..config import options as opt
from ..config.loader import ConfigError

Parser = Callable[[str, Any], Any]


def positive_int(key: str, value: Any) -> int:
    return opt.as_int(key, value, minimum=1)


def non_negative_int(key: str, value: Any) -> int:
    return opt.as_int(key, value, minimum=0)


def non_negative_float(key: str, value: Any) -> float:
    return opt.as_float(key, value, minimum=0.0)


def choice_of(allowed: Collection[Any]) -> Parser:
    """A parser accepting only the values in ``allowed``."""
    return lambda key, value: opt.choice(key, value, allowed)


def probability(key: str, value: Any) -> float:
    """A number in ``[0, 1]``."""
    rate = opt.as_float(key, value, minimum=0.0)
    if rate > 1.0:
        raise ConfigError(f"{key}: got {rate}, expected a probability in [0, 1]")
    return rate


def optional_qk_scale(key: str, value: Any) -> Optional[float]:
    """``QK_SCALE``: null, false and 0 mean the default ``head_dim ** -0.5`` (None), as the
    original's ``qk_scale or default``; anything else must be a number."""
    if value is None or value is False:
        return None
    return opt.as_float(key, value) or None


#: The usual check of each option the sections share.
SHARED_PARSERS: Dict[str, Parser] = {
    "image_size": positive_int,
    "patch_size": positive_int,
    "num_layers": positive_int,
    "num_heads": positive_int,
    "hidden_dim": positive_int,
    "mlp_dim": positive_int,
    "mlp_ratio": non_negative_float,
    "dropout_rate": non_negative_float,
    "attention_dropout_rate": non_negative_float,
    "drop_path_rate": non_negative_float,
    "qkv_bias": opt.as_bool,
    "qk_scale": optional_qk_scale,
}


def read_options(section: Mapping, key: str, fields: Sequence[Union[str, Tuple[str, Parser]]]) -> Dict[str, Any]:
    """``{name: parsed value}`` for ``fields``, read in that order from ``section`` (whose full name,
    with a trailing dot, is ``key``). A field is a name of :data:`SHARED_PARSERS` or a
    ``(name, parser)`` pair; option ``name`` is read from key ``NAME``."""
    out: Dict[str, Any] = {}
    for field in fields:
        name, parse = (field, SHARED_PARSERS[field]) if isinstance(field, str) else field
        out[name] = parse(key + name.upper(), section[name.upper()])
    return out


def check_divisible(key: str, name: str, value: int, by_name: str, by: int) -> None:
    """``{key}{name}: {value} is not divisible by {by_name} {by}`` unless it is."""
    if value % by:
        raise ConfigError(f"{key}{name}: {value} is not divisible by {by_name} {by}")


def check_width_fits_heads(key: str, hidden_dim: int, num_heads: int) -> None:
    """``HIDDEN_DIM`` must be a multiple of ``NUM_HEADS`` (XCiT's and BEiT's message)."""
    if hidden_dim % num_heads != 0:
        raise ConfigError(f"{key}HIDDEN_DIM: got {hidden_dim}, expected a multiple of NUM_HEADS ({num_heads})")


def check_rgb_or_bgr(input_type: str, trunk: str) -> None:
    """The trunk's stem takes three channels as given: ``MODEL.INPUT_TYPE`` must be rgb or bgr."""
    if input_type not in ("rgb", "bgr"):
        raise ConfigError(f"MODEL.INPUT_TYPE: got {input_type!r}, the {trunk} trunk takes 'rgb' or 'bgr' input")
