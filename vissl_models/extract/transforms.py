"""Preprocessing for extraction: resize, center crop, to tensor, normalize, channel order (RGB, BGR,
or the original's Lab for colorization models)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CHANNEL_ORDERS = ("rgb", "bgr", "lab")
CROP_MODES = ("center", "squash")
# The usual evaluation crop: resize the shorter side to 256, crop 224.
DEFAULT_CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class TransformSettings:
    """What ``build_transform`` does: resize the shorter side to ``resize`` (both sides with
    ``crop_mode="squash"``; 0/None: no resize), center crop ``image_size``, scale to [0, 1], then for
    ``channel_order`` ``"rgb"``/``"bgr"`` normalize with ``mean``/``std`` (RGB order) and reverse
    the channels for ``"bgr"``; for ``"lab"`` convert to the original's Lab (``rgb_to_lab``) and
    normalize that with ``mean``/``std``."""

    image_size: int = 224
    resize: Optional[int] = 256
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    normalize: bool = True
    interpolation: str = "bilinear"
    channel_order: str = "rgb"
    crop_mode: str = "center"

    def checked(self) -> "TransformSettings":
        """``self`` if every value is usable; else ``ValueError`` naming the setting."""
        _positive_int("image_size (crop)", self.image_size)
        if self.resize is not None and self.resize != 0:
            _positive_int("resize", self.resize)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation: got {self.interpolation!r}, expected one of {list(INTERPOLATIONS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order: got {self.channel_order!r}, expected one of {list(CHANNEL_ORDERS)}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode: got {self.crop_mode!r}, expected one of {list(CROP_MODES)}")
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


def model_pretrained_cfg(model: Any) -> Any:
    """``model.pretrained_cfg``, else the preset of its trunk family for a model built from a config
    (``vissl_models.pretrained.default_pretrained_cfg``), else ``None``."""
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None:
        return cfg
    model_config = getattr(model, "model_config", None)
    if model_config is None:
        return None
    try:
        from ..pretrained import default_pretrained_cfg
    except ImportError:  # a build without the presets: the plain defaults apply
        return None
    return default_pretrained_cfg(model_config)


def _resize_for(size: int, crop_pct: float) -> int:
    return int(math.floor(size / crop_pct + 0.5))


def settings_for(model: Any, image_size: Optional[int] = None) -> TransformSettings:
    """The default preprocessing for ``model``: its ``pretrained_cfg`` (``model_pretrained_cfg``:
    mean, std, input_size, crop_pct, crop_mode, interpolation, channel_order), else ImageNet's
    mean/std and a 224 crop of the image resized to 256. With ``image_size`` the crop is that size
    and the resize keeps the crop fraction."""
    cfg = model_pretrained_cfg(model)
    size = _field(cfg, "input_size")
    if isinstance(size, (tuple, list)):
        size = size[-1]  # timm's (C, H, W)
    fraction = _field(cfg, "crop_pct") or DEFAULT_CROP_FRACTION
    changes: dict = {}
    if image_size or size:
        changes["image_size"] = int(image_size or size)
        changes["resize"] = _resize_for(changes["image_size"], float(fraction))
    for name in ("mean", "std"):
        value = _field(cfg, name)
        if value is not None:
            changes[name] = tuple(float(v) for v in value)
    for name, allowed in (("channel_order", CHANNEL_ORDERS), ("interpolation", INTERPOLATIONS),
                          ("crop_mode", CROP_MODES)):
        value = _field(cfg, name)
        if value is not None:
            value = str(value).lower()
            if value not in allowed:
                raise ValueError(f"pretrained_cfg.{name}: got {value!r}, expected one of {list(allowed)}")
            changes[name] = value
    return replace(TransformSettings(), **changes)


# sRGB (D65) -> XYZ, and the D65 white point, as OpenCV's documented RGB -> Lab conversion.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE = (0.950456, 1.0, 1.088754)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (``3 x H x W``) -> the original's Lab input: OpenCV's 8-bit Lab (L scaled to
    0..255, a and b offset by 128, rounded), then L mapped to [-50, 50] and a, b to [-128, 127].

    Computed in floating point, so a value may differ from OpenCV's fixed-point tables by one step.
    """
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype)
    xyz = torch.einsum("ij,jhw->ihw", matrix, linear) / torch.tensor(_WHITE, dtype=rgb.dtype)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    y = xyz[1]
    lightness = torch.where(y > 0.008856, 116.0 * f[1] - 16.0, 903.3 * y)
    a = 500.0 * (f[0] - f[1])
    b = 200.0 * (f[1] - f[2])
    l8 = torch.round(lightness * 255.0 / 100.0).clamp(0, 255)
    a8 = torch.round(a + 128.0).clamp(0, 255)
    b8 = torch.round(b + 128.0).clamp(0, 255)
    return torch.stack([l8 * (100.0 / 255.0) - 50.0, a8 - 128.0, b8 - 128.0])


class _RgbToLab(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rgb_to_lab(x)


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
        size = (s.resize, s.resize) if s.crop_mode == "squash" else s.resize
        steps.append(T.Resize(size, interpolation=T.InterpolationMode(s.interpolation)))
    steps += [T.CenterCrop(s.image_size), T.ToTensor()]
    if s.channel_order == "lab":
        steps.append(_RgbToLab())
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
    crop_mode: str = "center",
) -> Callable:
    """PIL image -> tensor: resize the shorter side to ``resize`` (skipped when 0/None), center crop
    ``image_size``, to a float tensor in [0, 1], normalize with ``mean``/``std`` (RGB order), then
    reverse the channels for ``channel_order="bgr"``. Bad values raise ``ValueError``."""
    return transform_from(TransformSettings(image_size, resize, tuple(mean), tuple(std), normalize, interpolation,
                                            channel_order, crop_mode))
