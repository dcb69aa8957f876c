"""What a model expects of its input images: ``PretrainedCfg`` (timm's ``pretrained_cfg``, for VISSL models).

A model zoo entry names a preprocessing preset of ``zoo.yaml`` (the test transforms the original's
linear-evaluation benchmark used to measure the published top-1); a model built from a config alone
gets the preset its trunk family was evaluated with. ``create_model`` sets ``model.pretrained_cfg``.

Channel order is that of the image given to the model: the original's data pipeline always
decoded images to RGB, trunks with ``MODEL.INPUT_TYPE: bgr`` flip channels themselves, and its
Caffe2 conversions were written with the first convolution already flipped to RGB (the documented
``--bgr2rgb True`` of its conversion scripts). Colorization models take Lab images instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from .config import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNEL_ORDERS = ("rgb", "bgr", "lab")
CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("bilinear", "bicubic")
TOP1_EVALS = ("linear", "knn")


@dataclass(frozen=True)
class PretrainedCfg:
    """Input preprocessing a model was evaluated with, and the accuracy it reached.

    ``mean``/``std`` apply to images scaled to [0, 1] (a [0, 255] input normalised by a mean alone
    is ``std = 1/255``). ``input_size`` is ``(channels, height, width)``; the eval transform resizes
    to ``size / crop_pct`` (the shorter side for ``crop_mode="center"``, both sides for
    ``"squash"``) with ``interpolation`` and center-crops ``size``. ``channel_order`` is ``rgb``,
    ``bgr`` or ``lab`` (the original's OpenCV Lab: L scaled to [-50, 50], a and b to [-128, 127],
    no mean/std). ``top1`` is the published ImageNet-1K top-1 (%) measured with ``top1_eval``
    (``linear`` or ``knn``); ``None`` when the model is not a published one. ``source`` names
    where the values come from (a zoo entry, or ``config``).
    """

    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    input_size: Tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    crop_mode: str = "center"
    interpolation: str = "bilinear"
    channel_order: str = "rgb"
    top1: Optional[float] = None
    top1_eval: Optional[str] = None
    source: str = ""

    def __post_init__(self) -> None:
        def fail(key: str, value: Any, allowed: str) -> None:
            raise ConfigError(f"pretrained_cfg.{key}: got {value!r}, expected {allowed}")

        for key in ("mean", "std"):
            value = getattr(self, key)
            if not (isinstance(value, tuple) and len(value) == 3 and all(_finite(v) for v in value)):
                fail(key, value, "three finite numbers")
        if not all(v > 0 for v in self.std):
            fail("std", self.std, "three positive numbers")
        size = self.input_size
        if not (isinstance(size, tuple) and len(size) == 3 and all(_int(v) and v > 0 for v in size)):
            fail("input_size", size, "(channels, height, width) positive integers")
        if not (_finite(self.crop_pct) and 0 < self.crop_pct <= 1):
            fail("crop_pct", self.crop_pct, "a number in (0, 1]")
        for key, allowed in (("crop_mode", CROP_MODES), ("interpolation", INTERPOLATIONS),
                             ("channel_order", CHANNEL_ORDERS)):
            if getattr(self, key) not in allowed:
                fail(key, getattr(self, key), f"one of {list(allowed)}")
        if self.top1 is not None and not (_finite(self.top1) and 0 <= self.top1 <= 100):
            fail("top1", self.top1, "a percentage or None")
        if self.top1_eval not in (None,) + TOP1_EVALS:
            fail("top1_eval", self.top1_eval, f"None or one of {list(TOP1_EVALS)}")

    @property
    def image_size(self) -> int:
        """The crop's side (``input_size`` is square for every shipped model)."""
        return self.input_size[-1]

    @property
    def resize_size(self) -> int:
        """The side the image is resized to before the center crop (``image_size / crop_pct``)."""
        return int(math.floor(self.image_size / self.crop_pct + 0.5))

    def transform(self):
        """The evaluation transform as a torchvision ``Compose``: PIL image -> normalised tensor.

        Resize (shorter side, or both sides for ``squash``) to ``resize_size``, center-crop
        ``image_size``, scale to [0, 1], reorder channels for ``bgr``, normalise with
        ``mean``/``std``. Lab models raise ``ConfigError``: their input is the original's OpenCV
        Lab conversion, which this transform does not reproduce.
        """
        from torchvision import transforms

        if self.channel_order == "lab":
            raise ConfigError(
                "pretrained_cfg.channel_order is 'lab': these models take the original's OpenCV Lab "
                "conversion (L*100/255-50, a-128, b-128 of cv2.COLOR_BGR2LAB on 8-bit images), not an RGB transform"
            )
        mode = getattr(transforms.InterpolationMode, self.interpolation.upper())
        size = self.resize_size if self.crop_mode == "center" else (self.resize_size, self.resize_size)
        steps = [transforms.Resize(size, interpolation=mode), transforms.CenterCrop(self.image_size),
                 transforms.ToTensor()]
        if self.channel_order == "bgr":
            steps.append(transforms.Lambda(_flip_channels))
        steps.append(transforms.Normalize(self.mean, self.std))
        return transforms.Compose(steps)

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (lists for tuples), JSON-ready."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> "PretrainedCfg":
        """Build from a mapping (e.g. YAML); unknown keys raise ``ConfigError`` naming the valid ones."""
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"pretrained_cfg: unknown keys {unknown}; valid keys: {sorted(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if source:
            values.setdefault("source", source)
        return cls(**values)


def _flip_channels(x):
    return x.flip(0)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Trunk families the original evaluated with bicubic resizing (its ViT/DeiT, XCiT and BEiT
# benchmark configs); the others used its default ResNet/AlexNet test transform.
_BICUBIC_TRUNKS = ("vision_transformer", "xcit", "beit", "convit", "classy_vit")


def default_pretrained_cfg(model_config: Mapping[str, Any], source: str = "config") -> PretrainedCfg:
    """The preset for a model built from ``MODEL`` alone: its trunk family's usual eval transform."""
    trunk = str(model_config["TRUNK"]["NAME"])
    cfg = PretrainedCfg(source=source)
    if any(trunk == t or trunk.startswith(t + "_") for t in _BICUBIC_TRUNKS):
        cfg = replace(cfg, interpolation="bicubic")
    if str(model_config.get("INPUT_TYPE", "rgb")).lower() == "lab":
        cfg = replace(cfg, channel_order="lab", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return cfg


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PretrainedCfg", "default_pretrained_cfg"]
