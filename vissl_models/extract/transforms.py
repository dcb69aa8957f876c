"""Preprocessing for extraction: resize, center crop, to tensor, normalize, channel order."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CHANNEL_ORDERS = ("rgb", "bgr")
# The usual evaluation crop: resize the shorter side to 256, crop 224.
DEFAULT_CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class TransformSettings:
    """What ``build_transform`` does: resize the shorter side to ``resize`` (0/None: no resize),
    center crop ``image_size``, scale to [0, 1], normalize with ``mean``/``std`` (RGB order), and
    reverse the channels when ``channel_order`` is ``"bgr"``."""

    image_size: int = 224
    resize: Optional[int] = 256
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    normalize: bool = True
    interpolation: str = "bilinear"
    channel_order: str = "rgb"

    def checked(self) -> "TransformSettings":
        """``self`` if every value is usable; else ``ValueError`` naming the setting."""
        _positive_int("image_size (crop)", self.image_size)
        if self.resize is not None and self.resize != 0:
            _positive_int("resize", self.resize)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation: got {self.interpolation!r}, expected one of {list(INTERPOLATIONS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order: got {self.channel_order!r}, expected one of {list(CHANNEL_ORDERS)}")
        if self.normalize:
            mean, std = list(self.mean), list(self.std)
            if len(mean) != 3 or len(std) != 3:
                raise ValueError(f"mean and std need 3 values (one per RGB channel), got {mean} and {std}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean + std):
                raise ValueError(f"mean and std must be finite numbers, got {mean} and {std}")
            if any(v <= 0 for v in std):
                raise ValueError(f"std: every value must be positive (it divides the pixels), got {std}")
        return self


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")


def _field(cfg: Any, name: str) -> Any:
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        return cfg.get(name)
    return getattr(cfg, name, None)


def settings_for(model: Any, image_size: Optional[int] = None) -> TransformSettings:
    """The default preprocessing for ``model``: its ``pretrained_cfg`` (mean, std, input_size,
    crop_pct, channel_order, interpolation) where it has one, else ImageNet's mean/std, a 224 crop of
    the image resized to 256 (or ``image_size`` with the same crop fraction)."""
    cfg = getattr(model, "pretrained_cfg", None)
    settings = TransformSettings()
    size = _field(cfg, "input_size")
    if isinstance(size, (tuple, list)):
        size = size[-1]  # timm's (C, H, W)
    if image_size:
        size = image_size
    fraction = _field(cfg, "crop_pct") or DEFAULT_CROP_FRACTION
    changes: dict = {}
    if size:
        changes["image_size"] = int(size)
        changes["resize"] = int(math.floor(int(size) / float(fraction)))
    for name in ("mean", "std"):
        value = _field(cfg, name)
        if value is not None:
            changes[name] = tuple(float(v) for v in value)
    order = _field(cfg, "channel_order")
    if order:
        changes["channel_order"] = str(order).lower()
    interpolation = _field(cfg, "interpolation")
    if interpolation in INTERPOLATIONS:
        changes["interpolation"] = interpolation
    return replace(settings, **changes)


class _ReverseChannels(torch.nn.Module):
    """RGB -> BGR on a C x H x W tensor (the original's caffe2-converted models take BGR)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(0)


def transform_from(settings: TransformSettings) -> Callable:
    """PIL image -> tensor following ``settings`` (checked first)."""
    from torchvision import transforms as T

    s = settings.checked()
    steps: List[Callable] = []
    if s.resize:
        steps.append(T.Resize(s.resize, interpolation=T.InterpolationMode(s.interpolation)))
    steps += [T.CenterCrop(s.image_size), T.ToTensor()]
    if s.normalize:
        steps.append(T.Normalize(list(s.mean), list(s.std)))
    if s.channel_order == "bgr":
        steps.append(_ReverseChannels())
    return T.Compose(steps)


def build_transform(
    image_size: int = 224,
    resize: Optional[int] = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
    interpolation: str = "bilinear",
    channel_order: str = "rgb",
) -> Callable:
    """PIL image -> tensor: resize the shorter side to ``resize`` (skipped when 0/None), center crop
    ``image_size``, to a float tensor in [0, 1], normalize with ``mean``/``std`` (RGB order), then
    reverse the channels for ``channel_order="bgr"``. Bad values raise ``ValueError``."""
    return transform_from(TransformSettings(image_size, resize, tuple(mean), tuple(std), normalize, interpolation,
                                            channel_order))
