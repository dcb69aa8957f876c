"""``MODEL.TRUNK`` settings for VISSL-layout weights, read from their keys and shapes."""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping, Optional

import torch

from .detect import _detect_families, _strip_wrappers
from .keymaps import _LAYOUTS, FAMILIES, VISSL
from .libraries import _build_on_meta


def _resnet_config(state: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    from ...trunks.resnet import BLOCK_CONFIG

    counts = []
    for layer in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"_feature_blocks\.layer{layer}\.(\d+)\.", k))}
        counts.append(len(idx))
    bottleneck = "_feature_blocks.layer1.0.conv3.weight" in state
    depth = next(
        (d for d, (layers, b) in BLOCK_CONFIG.items() if tuple(layers) == tuple(counts) and b == bottleneck), None
    )
    if depth is None:
        raise ValueError(f"blocks per stage {counts} ({'bottleneck' if bottleneck else 'basic'}) match no ResNet depth "
                         f"the resnet trunk builds ({sorted(BLOCK_CONFIG)})")
    stem = state["_feature_blocks.conv1.weight"].shape[0]
    if stem % 64:
        raise ValueError(f"stem width {stem} is not a multiple of 64 (WIDTH_MULTIPLIER)")
    cfg: Dict[str, Any] = {"DEPTH": depth, "WIDTH_MULTIPLIER": stem // 64}
    if bottleneck:
        conv2 = state["_feature_blocks.layer1.0.conv2.weight"]
        width, per_group = conv2.shape[0], conv2.shape[1]
        groups = width // per_group
        width_per_group = per_group * 64 // stem
        if width_per_group * stem != per_group * 64:
            raise ValueError(f"layer1 bottleneck width {width} fits no GROUPS/WIDTH_PER_GROUP for stem width {stem}")
        cfg.update(GROUPS=groups, WIDTH_PER_GROUP=width_per_group)
    if "_feature_blocks.bn1.running_mean" not in state:
        # GroupNorm (with any GROUPNORM_GROUPS) and LayerNorm hold the same tensors: a guess would
        # load strictly and compute other features.
        raise ValueError(
            "the ResNet's norm layers have no running statistics: GroupNorm (how many groups?) or LayerNorm, "
            "which the weights cannot tell apart; set MODEL.TRUNK.RESNETS yourself (convert with --no-config)"
        )
    return {"NAME": "resnet", "RESNETS": cfg}


def _regnet_config(state: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    layout = _LAYOUTS["regnet"][VISSL]
    parsed = {layout.parse(k): v for k, v in state.items()}
    parsed.pop(None, None)
    stages = sorted({c[1] for c in parsed if c[0] == "block"})
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise ValueError(f"RegNet stages {stages} are not numbered 1..n")
    stem = parsed[("stem", "conv", "weight")]
    depths, widths, group_widths, multipliers, se = [], [], [], [], []
    width_in = stem.shape[0]
    for s in stages:
        blocks = sorted({c[2] for c in parsed if c[0] == "block" and c[1] == s})
        b = parsed[("block", s, 0, "b", "weight")]
        w_out = parsed[("block", s, 0, "c_bn", "weight")].shape[0]
        depths.append(len(blocks))
        widths.append(w_out)
        group_widths.append(b.shape[1])
        multipliers.append(b.shape[0] / w_out)
        for j in blocks:
            se1 = parsed.get(("block", s, j, "se1", "weight"))
            se.append(None if se1 is None else (se1.shape[0], width_in if j == 0 else w_out))
        width_in = w_out
    cfg: Dict[str, Any] = {
        "name": "anynet",
        "depths": depths,
        "widths": widths,
        "group_widths": group_widths,
        "bottleneck_multipliers": multipliers,
        "strides": [2] * len(stages),
        "stem_width": stem.shape[0],
    }
    if stem.shape[-1] == 7:
        cfg["stem_type"] = "res_stem_in"
    if all(x is None for x in se):
        cfg["use_se"] = False
    elif any(x is None for x in se):
        raise ValueError("some RegNet blocks have squeeze-excitation and some do not")
    else:
        # classy_vision sizes SE as round(se_ratio * block input width): find one ratio for all blocks.
        for ratio in (0.25, se[0][0] / se[0][1]):
            if all(int(round(ratio * w_in)) == c for c, w_in in se):
                if ratio != 0.25:
                    cfg["se_ratio"] = ratio
                break
        else:
            raise ValueError(f"no single se_ratio gives the SE widths {[c for c, _ in se]}")
    return {"NAME": "regnet", "REGNET": cfg}


def _timm_transformer(arch: Optional[str]):
    if arch is None or arch in _LAYOUTS:
        return None
    return _build_on_meta("timm", arch)


def _vit_config(state: Mapping[str, torch.Tensor], arch: Optional[str], num_heads: Optional[int]) -> Dict[str, Any]:
    proj = state["patch_embed.proj.weight"]
    dim, patch = proj.shape[0], proj.shape[-1]
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    tokens = state["pos_embed"].shape[1] - (1 if "cls_token" in state else 0)
    side = math.isqrt(tokens)
    cfg: Dict[str, Any] = {
        "PATCH_SIZE": patch,
        "HIDDEN_DIM": dim,
        "NUM_LAYERS": layers,
        "MLP_DIM": state["blocks.0.mlp.fc1.weight"].shape[0],
        "QKV_BIAS": "blocks.0.attn.qkv.bias" in state,
    }
    if side * side == tokens:  # a non-square grid needs IMAGE_SIZE [h, w], which weights cannot tell
        cfg["IMAGE_SIZE"] = side * patch
    if "cls_token" not in state:
        cfg["USE_CLASS_TOKEN"] = False
    if "patch_masking.masked_embed" in state:
        cfg["MASKED_IMAGE_MODELING"] = {"NAME": "ibot"}
    model = _timm_transformer(arch)
    heads = model.blocks[0].attn.num_heads if model is not None else num_heads
    if heads is None:
        # The fused qkv projection has the same shape for any head count, and a wrong count still
        # loads strictly while computing other features: refuse rather than guess.
        raise ValueError(
            f"the number of attention heads is not in ViT weights (width {dim}): give --arch with the timm "
            "model name (e.g. vit_small_patch16_224) or --num-heads N"
        )
    cfg["NUM_HEADS"] = _checked_heads(heads, dim)
    return {"NAME": "vision_transformer", "VISION_TRANSFORMERS": cfg}


def _checked_heads(heads: Any, dim: int) -> int:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or dim % heads:
        raise ValueError(f"num_heads={heads!r}: expected a positive integer dividing the width {dim}")
    return heads


def _xcit_config(state: Mapping[str, torch.Tensor], arch: Optional[str], num_heads: Optional[int]) -> Dict[str, Any]:
    convs = sorted(int(k.split(".")[2]) for k in state if re.fullmatch(r"patch_embed\.proj\.\d+\.0\.weight", k))
    dim = state["norm.weight"].shape[0]
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    ca_layers = len({k.split(".")[1] for k in state if k.startswith("cls_attn_blocks.")})
    cfg: Dict[str, Any] = {
        "PATCH_SIZE": 2 ** len(convs),
        "HIDDEN_DIM": dim,
        "NUM_LAYERS": layers,
        "MLP_RATIO": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "QKV_BIAS": "blocks.0.attn.qkv.bias" in state,
    }
    if ca_layers == 2:
        name = "xcit"
    elif ca_layers == layers:
        name = "xcit_fsdp"
    else:
        raise ValueError(f"{ca_layers} class-attention blocks: the xcit trunk has 2, xcit_fsdp NUM_LAYERS ({layers})")
    # Each XCA block learns one temperature per head: (num_heads, 1, 1).
    heads = state["blocks.0.attn.temperature"].shape[0]
    if num_heads is not None and num_heads != heads:
        raise ValueError(f"num_heads={num_heads} but the weights' attention temperatures give {heads} heads")
    cfg["NUM_HEADS"] = _checked_heads(int(heads), dim)
    model = _timm_transformer(arch)
    if model is not None:
        cfg["TOKENS_NORM"] = bool(model.cls_attn_blocks[0].tokens_norm)
        cfg["IMAGE_SIZE"] = model.patch_embed.img_size[0]
    return {"NAME": name, "XCIT": cfg}


def vissl_trunk_config(
    state: Mapping[str, torch.Tensor],
    family: Optional[str] = None,
    arch: Optional[str] = None,
    num_heads: Optional[int] = None,
) -> Dict[str, Any]:
    """``MODEL.TRUNK`` settings that build a trunk these VISSL-layout weights load into.

    Read from the weights' shapes: ResNet depth, width multiplier, groups and width per group;
    RegNet per-stage depths, widths, group widths, bottleneck multipliers and SE ratio (as an
    ``anynet``, which builds any RegNet exactly); transformer sizes, XCiT's head count. What weights
    cannot tell comes from ``arch``, a timm model name, when given: a ViT's head count (or pass
    ``num_heads``; without either a ViT raises ``ValueError``), XCiT's ``TOKENS_NORM`` and image size
    (else the trunk's defaults).
    """
    state = _strip_wrappers(state)
    if family is None:
        found, _ = _detect_families(state, VISSL)
        if not found:
            raise ValueError("not a VISSL trunk state dict of a supported family")
        family = found[0]
    if family == "resnet":
        return _resnet_config(state)
    if family == "regnet":
        return _regnet_config(state)
    if family == "vision_transformer":
        return _vit_config(state, arch, num_heads)
    if family == "xcit":
        return _xcit_config(state, arch, num_heads)
    raise ValueError(f"family {family!r}: expected one of {list(FAMILIES)}")
