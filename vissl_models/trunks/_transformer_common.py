"""Config reading the ViT-like trunks share (vision_transformer, xcit, swin, beit, convit, classy_vit).

Their sections (``VISION_TRANSFORMERS``, ``XCIT``, ``SWIN_TRANSFORMER``, ``BEIT``, ``CONVIT``) key
each option by its upper-cased name (``drop_path_rate`` is ``DROP_PATH_RATE``) and share many of
them; :func:`read_options` parses a family's list of options in its order (so the first bad value
is the one reported), the shared ones with their usual check.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..config import options as opt
from ..config.loader import ConfigError

from ..config.options import (  # noqa: F401  (re-exported for the trunk modules)
    Field,
    Parser,
    choice_of,
    non_negative_float,
    non_negative_int,
    positive_int,
    probability,
)


def optional_qk_scale(key: str, value: Any) -> Optional[float]:
    """``QK_SCALE``: null, false and 0 mean the default ``head_dim ** -0.5`` (None), as the
    original's ``qk_scale or default``; anything else must be a number."""
    if value is None or value is False:
        return None
    return opt.as_float(key, value) or None


def dropout_rate(key: str, value: Any) -> float:
    """A dropout, attention-dropout or drop-path rate: a number in ``[0, 1)`` (1 would drop everything)."""
    rate = opt.as_float(key, value)
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{key}: got {rate}, expected a rate in [0, 1)")
    return rate


#: The usual check of each option the sections share.
SHARED_PARSERS: Dict[str, Parser] = {
    "image_size": positive_int,
    "patch_size": positive_int,
    "num_layers": positive_int,
    "num_heads": positive_int,
    "hidden_dim": positive_int,
    "mlp_dim": positive_int,
    "mlp_ratio": non_negative_float,
    "dropout_rate": dropout_rate,
    "attention_dropout_rate": dropout_rate,
    "drop_path_rate": dropout_rate,
    "qkv_bias": opt.as_bool,
    "qk_scale": optional_qk_scale,
}


def read_options(section: Mapping, key: str, fields: Sequence[Field]) -> Dict[str, Any]:
    """:func:`vissl_models.config.options.read_options` with :data:`SHARED_PARSERS` for bare names."""
    return opt.read_options(section, key, fields, SHARED_PARSERS)


def check_divisible(key: str, name: str, value: int, by_name: str, by: int) -> None:
    """``{key}{name}: {value} is not divisible by {by_name} {by}`` unless it is."""
    if value % by:
        raise ConfigError(f"{key}{name}: {value} is not divisible by {by_name} {by}")


def check_patch_fits(key: str, image_size, patch_size) -> None:
    """Raise naming ``{key}PATCH_SIZE`` when a patch is larger than the image (no patch would fit).

    Sizes are integers or ``(height, width)`` pairs.
    """
    image, patch = _pair(image_size), _pair(patch_size)
    if patch[0] > image[0] or patch[1] > image[1]:
        raise ConfigError(
            f"{key}PATCH_SIZE: got {_shown(patch_size)}, larger than IMAGE_SIZE {_shown(image_size)}: "
            "not a single patch fits in the image"
        )


def _pair(size) -> tuple:
    return (size, size) if isinstance(size, int) else tuple(size)


def _shown(size):
    return size if isinstance(size, int) else list(size)


def check_width_fits_heads(key: str, hidden_dim: int, num_heads: int) -> None:
    """``HIDDEN_DIM`` must be a multiple of ``NUM_HEADS`` (XCiT's and BEiT's message)."""
    if hidden_dim % num_heads != 0:
        raise ConfigError(f"{key}HIDDEN_DIM: got {hidden_dim}, expected a multiple of NUM_HEADS ({num_heads})")


def check_rgb_or_bgr(input_type: str, trunk: str) -> None:
    """The trunk's stem takes three channels as given: ``MODEL.INPUT_TYPE`` must be rgb or bgr."""
    if input_type not in ("rgb", "bgr"):
        raise ConfigError(f"MODEL.INPUT_TYPE: got {input_type!r}, the {trunk} trunk takes 'rgb' or 'bgr' input")


# ---------------------------------------------------------------- the trunk contract, for token trunks
OUTPUT_FORMATS = ("NCHW", "NLC")


def take_indices(count: int, indices: Optional[Union[int, Sequence[int]]]) -> Tuple[List[int], int]:
    """timm's ``feature_take_indices``: which of ``count`` blocks/stages ``forward_intermediates`` returns.

    None means all of them, an int ``n`` the last ``n``, a sequence those indices (negative ones count
    from the end). Returns the absolute indices in the order given and the largest one.
    """
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices: the last {indices} of {count} cannot be taken (expected 1 to {count})")
        taken = list(range(count - indices, count))
    else:
        taken = []
        for i in indices:
            j = count + i if i < 0 else i
            if not 0 <= j < count:
                raise ValueError(f"indices: {i} is out of range for {count} (expected {-count} to {count - 1})")
            taken.append(j)
        if not taken:
            raise ValueError("indices: an empty list selects nothing")
    return taken, max(taken)


def check_output_fmt(output_fmt: str, allowed: Sequence[str] = OUTPUT_FORMATS) -> None:
    if output_fmt not in allowed:
        raise ValueError(f"output_fmt: got {output_fmt!r}, expected one of {list(allowed)}")


def tokens_to_map(tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """``(B, H*W, C)`` patch tokens to a ``(B, C, H, W)`` map."""
    B, N, C = tokens.shape
    if N != grid[0] * grid[1]:
        raise ValueError(f"{N} patch tokens do not fill a {grid[0]}x{grid[1]} grid (were tokens dropped?)")
    return tokens.reshape(B, grid[0], grid[1], C).permute(0, 3, 1, 2).contiguous()
