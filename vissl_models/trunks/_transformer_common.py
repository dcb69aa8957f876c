"""What the ViT-like trunks share (vision_transformer, xcit, swin, beit, convit, classy_vit): config
reading and checks, and :class:`TransformerTrunk`, the trunk contract's timm-style
``forward_intermediates`` over blocks.

Their sections (``VISION_TRANSFORMERS``, ``XCIT``, ``SWIN_TRANSFORMER``, ``BEIT``, ``CONVIT``) key
each option by its upper-cased name (``drop_path_rate`` is ``DROP_PATH_RATE``) and share many of
them; :func:`read_options` parses a family's list of options in its order (so the first bad value
is the one reported), the shared ones with their usual check.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch

from ..config import options as opt
from ..config.loader import ConfigError
from .base import Trunk, TrunkCommon, take_indices

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
    if value is True:
        raise ConfigError(f"{key}: got true, expected false (the default scale) or a number")
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


def check_no_hybrid(section: Mapping, key: str) -> None:
    """``HYBRID`` (a CNN stem before the patch embedding) must be unset: no trunk here builds one,
    and the original could not build one either."""
    hybrid = section.get("HYBRID", None)
    if hybrid:
        raise ConfigError(
            f"{key}HYBRID: got {hybrid!r}; these trunks have no convolutional (hybrid) patch embedding; use null"
        )


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


# ---------------------------------------------------------------- the trunk contract, for token trunks
#: ``forward_intermediates`` output formats: maps channels first or last, or patch tokens.
OUTPUT_FORMATS = ("NCHW", "NHWC", "NLC")

#: The input types these trunks take: three channels used as given (the original did not flip bgr).
RGB_OR_BGR = ("rgb", "bgr")


def common_options(model_config: Mapping, trunk: str) -> TrunkCommon:
    """The shared ``MODEL`` options of a transformer trunk: rgb or bgr input, used as given."""
    return TrunkCommon.from_config(model_config, trunk, RGB_OR_BGR, apply_input_type=False)


def check_image_batch(x: torch.Tensor, trunk: str) -> None:
    """The transformer trunks take a batch of images: ``x`` must be N x C x H x W."""
    if x.ndim != 4:
        raise ValueError(f"the {trunk} trunk takes N x C x H x W images, got a tensor of shape {tuple(x.shape)}")


def check_output_fmt(output_fmt: str) -> None:
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_fmt: got {output_fmt!r}, expected one of {list(OUTPUT_FORMATS)}")


def format_tokens(tokens: torch.Tensor, grid: Tuple[int, int], output_fmt: str) -> torch.Tensor:
    """``(B, H*W, C)`` patch tokens of an ``H x W`` grid as ``output_fmt`` (see :data:`OUTPUT_FORMATS`)."""
    if output_fmt == "NLC":
        return tokens
    B, N, C = tokens.shape
    if N != grid[0] * grid[1]:
        raise ValueError(
            f"{N} patch tokens do not fill the {grid[0]}x{grid[1]} grid (were tokens dropped?); use output_fmt='NLC'"
        )
    nhwc = tokens.reshape(B, grid[0], grid[1], C)
    return nhwc if output_fmt == "NHWC" else nhwc.permute(0, 3, 1, 2).contiguous()


class TransformerTrunk(Trunk):
    """:class:`Trunk` for the transformer families, with timm's ``forward_intermediates`` of ViTs.

    ``intermediate_features`` names the blocks (Swin: the stages) ``forward_intermediates``
    indexes. A subclass implements :meth:`_intermediates`; this class picks the indices and the
    output format. As in timm, ``norm`` applies the final norm to the intermediates (Swin: to the
    last stage only, the norm's width). As :class:`Trunk` defines it for every trunk, with
    ``stop_early`` nothing after the last block taken runs and the final output is that last
    intermediate; without it the final output is ``forward_features``.
    """

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = True,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """``(final, intermediates)``, or the intermediates alone with ``intermediates_only``.

        ``indices``: None for every block, an int n for the last n, or a list of block indices.
        ``output_fmt``: ``NCHW`` / ``NHWC`` maps of the patch tokens (prefix tokens dropped), or
        ``NLC`` tokens. ``stop_early``: see the class docstring.
        """
        check_output_fmt(output_fmt)
        taken, last = take_indices(len(self.intermediate_features), indices)
        want_final = not (intermediates_only or stop_early)
        final, found = self._intermediates(x, set(taken), last if stop_early else None, norm, want_final)
        out = [format_tokens(tokens, grid, output_fmt) for tokens, grid in found]
        if intermediates_only:
            return out
        return (out[-1] if stop_early else final), out

    def _intermediates(
        self, x: torch.Tensor, taken: Set[int], stop: Optional[int], norm: bool, want_final: bool
    ) -> Tuple[Optional[torch.Tensor], List[Tuple[torch.Tensor, Tuple[int, int]]]]:
        """Run up to block ``stop`` (None: all); return ``forward_features``'s output (if
        ``want_final``, which implies ``stop`` None) and, for each block in ``taken`` in order, its
        patch tokens ``(B, L, C)`` and their grid."""
        raise NotImplementedError
