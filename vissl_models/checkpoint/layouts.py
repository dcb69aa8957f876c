"""Recognising whose key names a state dict uses (VISSL, torchvision, timm, classy_vision).

Only recognition lives here; renaming keys from one library's layout to another's is the job
of ``vissl_models.checkpoint.convert``. Where two libraries use the same names (VISSL's, DINO's
and timm's ViT; torchvision's and timm's ResNet) the answer names the more common source of
bare files, and a container that says where it came from (a VISSL checkpoint) overrides it.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Tuple

_TIMM_REGNET_STAGE = re.compile(r"^s\d+\.b\d+\.")


def detect_key_layout(keys: Iterable[str]) -> Tuple[str, Optional[str]]:
    """``(source, arch)`` for a trunk's state-dict keys.

    ``source`` is ``"vissl"``, ``"torchvision"``, ``"timm"``, ``"classy_vision"`` or ``"unknown"``;
    ``arch`` is ``"resnet"``, ``"vit"``, ``"deit"``, ``"xcit"``, ``"regnet"`` or ``None``. A
    feature-extractor prefix (``base_model.``) is ignored.
    """
    ks = {k[len("base_model."):] if k.startswith("base_model.") else k for k in keys}
    if not ks:
        return "unknown", None

    def has_prefix(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in ks)

    if has_prefix("_feature_blocks."):
        if has_prefix("_feature_blocks.layer1.") and "_feature_blocks.conv1.weight" in ks:
            return "vissl", "resnet"
        if has_prefix("_feature_blocks.conv1.stem.") or has_prefix("_feature_blocks.res2.block1-0."):
            return "vissl", "regnet"
        return "vissl", None
    if "conv1.weight" in ks and "bn1.weight" in ks and has_prefix("layer1.0."):
        return "torchvision", "resnet"
    if has_prefix("cls_attn_blocks.") or any(".local_mp." in k for k in ks):
        # facebookresearch/xcit (and DINO, VISSL) call the positional encoder ``pos_embeder``.
        if has_prefix("pos_embeder."):
            return "vissl", "xcit"
        return "timm", "xcit"
    if ("cls_token" in ks and "patch_embed.proj.weight" in ks and has_prefix("blocks.0.attn.qkv.")
            and not any("relative_position" in k for k in ks)):
        return "timm", ("deit" if "dist_token" in ks else "vit")
    if "stem.conv.weight" in ks and any(_TIMM_REGNET_STAGE.match(k) for k in ks):
        return "timm", "regnet"
    if has_prefix("trunk_output.block1."):
        if has_prefix("stem.stem."):
            return "classy_vision", "regnet"
        if "stem.0.weight" in ks:
            return "torchvision", "regnet"
    return "unknown", None


def key_layout_name(source: str, arch: Optional[str]) -> str:
    """``"torchvision_resnet"``, ``"timm_vit"``, ...; just the source when the arch is unknown."""
    return f"{source}_{arch}" if arch else source


__all__ = ["detect_key_layout", "key_layout_name"]
