"""Convert trunk weights between VISSL's key layout and torchvision, timm and classy_vision.

Families and the sides each converts between (any two sides of a family form a pair):

- ``resnet``: vissl, torchvision and timm ``resnet18..152``, ``resnext*``, ``wide_resnet*`` (the
  plain 7x7 stem; timm's ``resnet50d``-style stems have other keys);
- ``regnet``: vissl (``regnet``; ``regnet_v2``/``regnet_fsdp`` block groups are read too),
  classy_vision and torchvision ``regnet_[xy]_*``, timm ``regnetx_*``/``regnety_*`` (bottleneck
  blocks with a conv1x1 shortcut);
- ``vision_transformer``: vissl, timm ``vit_*`` and ``deit_*`` (no distillation token);
- ``xcit``: vissl, timm ``xcit_*``.

A conversion renames keys (XCiT also splits or joins the class-attention ``qkv``); tensors are
passed on untouched, so ``vissl -> X -> vissl`` returns the same tensors. Every input key must be
recognised: anything else (a deep stem, a pre-activation RegNet, layer scale, a distillation
token) raises a ``ValueError`` naming the keys, rather than producing a state dict that loads
partially. Classifiers (``fc``, ``head``) go along from one library to another; to VISSL they are
dropped unless kept as an ``mlp`` head, and from VISSL a linear head can become one.

Weights do not encode every option: a trunk trained with ``STANDARDIZE_CONVOLUTIONS``, a RegNet
``res_stem_cifar`` stem or ``res_bottleneck_linear_block`` blocks, or a transformer with a
non-default ``QK_SCALE`` converts key for key but computes something other than the library's model.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Set, Tuple

import torch

from ..fileio import atomic_write

VISSL = "vissl"
LIBRARIES = ("torchvision", "timm", "classy_vision")
SIDES = (VISSL,) + LIBRARIES
TIMM_HINT = 'timm is not installed: pip install "vissl_models[timm]"'

State = Dict[str, torch.Tensor]

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BN = "(?:" + "|".join(_BN_PARAMS) + ")"


class _Layout:
    """One side of a family: turns its state dict into the family's canonical form and back.

    ``to_canonical`` returns the canonical dict, the keys it did not recognise, and the
    classifier tensors (``weight``/``bias``) when the side has one. ``from_canonical`` returns the
    state dict and the canonical entries this side has no place for (they are dropped).
    """

    classifier: Tuple[str, str] = ("", "")

    def to_canonical(self, state: Mapping[str, torch.Tensor]):
        canonical: Dict[Hashable, torch.Tensor] = {}
        unknown: List[str] = []
        classifier: Dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key in self.classifier:
                classifier["weight" if key == self.classifier[0] else "bias"] = value
                continue
            c = self.parse(key)
            if c is None:
                unknown.append(key)
            else:
                canonical[c] = value
        return canonical, unknown, classifier

    def from_canonical(self, canonical: Mapping[Hashable, torch.Tensor]):
        out: State = {}
        dropped: List[Hashable] = []
        for c, value in canonical.items():
            key = self.format(c)
            if key is None:
                dropped.append(c)
            else:
                out[key] = value
        return out, dropped

    def parse(self, key: str) -> Optional[Hashable]:
        raise NotImplementedError

    def format(self, c: Hashable) -> Optional[str]:
        raise NotImplementedError


class _PrefixLayout(_Layout):
    """Canonical keys are the library's own; this side adds ``prefix`` and may accept extras."""

    def __init__(self, pattern: str, prefix: str = "", classifier=("", ""), extra: str = "", drops: str = ""):
        self.pattern = re.compile(pattern)
        self.prefix = prefix
        self.classifier = classifier
        self.extra = re.compile(extra) if extra else None  # keys only this side has
        self.drops = re.compile(drops) if drops else None  # canonical keys this side has no place for

    def parse(self, key: str) -> Optional[str]:
        if not key.startswith(self.prefix):
            return None
        rest = key[len(self.prefix):]
        if self.pattern.fullmatch(rest) or (self.extra is not None and self.extra.fullmatch(rest)):
            return rest
        return None

    def format(self, c: str) -> Optional[str]:
        if self.drops is not None and self.drops.fullmatch(c):
            return None
        return self.prefix + c


# ResNet: canonical keys are torchvision's (timm uses the same names for these models).
_RESNET_KEYS = (
    rf"conv1\.weight|bn1\.{_BN}|layer[1-4]\.\d+\."
    rf"(?:conv[1-3]\.weight|bn[1-3]\.{_BN}|downsample\.0\.weight|downsample\.1\.{_BN})"
)

# ViT: canonical keys are timm's; VISSL adds iBOT's mask token (timm has none: dropped).
_VIT_KEYS = (
    r"cls_token|pos_embed|patch_embed\.proj\.(?:weight|bias)|norm\.(?:weight|bias)|blocks\.\d+\."
    r"(?:norm[12]\.(?:weight|bias)|attn\.(?:qkv|proj)\.(?:weight|bias)|mlp\.fc[12]\.(?:weight|bias))"
)
_VIT_VISSL_ONLY = r"patch_masking\.masked_embed"

# XCiT: canonical keys are VISSL's (the official XCiT names: pos_embeder, fused class-attention qkv).
_XCIT_KEYS = (
    rf"cls_token|norm\.(?:weight|bias)|pos_embeder\.token_projection\.(?:weight|bias)"
    rf"|patch_embed\.proj\.\d+\.0\.weight|patch_embed\.proj\.\d+\.1\.{_BN}"
    rf"|blocks\.\d+\.(?:gamma[123]|norm[123]\.(?:weight|bias)|attn\.temperature"
    rf"|attn\.(?:qkv|proj)\.(?:weight|bias)|mlp\.fc[12]\.(?:weight|bias)"
    rf"|local_mp\.conv[12]\.(?:weight|bias)|local_mp\.bn\.{_BN})"
    rf"|cls_attn_blocks\.\d+\.(?:gamma[12]|norm[12]\.(?:weight|bias)|attn\.(?:qkv|proj)\.(?:weight|bias)"
    rf"|mlp\.fc[12]\.(?:weight|bias))"
)


class _TimmXCiTLayout(_Layout):
    """timm's XCiT: ``pos_embed`` for ``pos_embeder``; class attention has separate q, k, v."""

    classifier = ("head.weight", "head.bias")
    _pattern = re.compile(_XCIT_KEYS)
    _split = re.compile(r"(cls_attn_blocks\.\d+\.attn\.)([qkv])\.(weight|bias)")

    def to_canonical(self, state):
        canonical, unknown, classifier = {}, [], {}
        parts: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key in self.classifier:
                classifier["weight" if key == self.classifier[0] else "bias"] = value
                continue
            m = self._split.fullmatch(key)
            if m:
                group = (m.group(1), m.group(3))
                if group not in parts:
                    canonical[f"{group[0]}qkv.{group[1]}"] = None  # keeps the key order
                parts.setdefault(group, {})[m.group(2)] = value
                continue
            if key.startswith("pos_embeder."):
                unknown.append(key)
                continue
            c = "pos_embeder." + key[len("pos_embed."):] if key.startswith("pos_embed.") else key
            if self._pattern.fullmatch(c):
                canonical[c] = value
            else:
                unknown.append(key)
        for (prefix, param), qkv in parts.items():
            if set(qkv) != {"q", "k", "v"}:
                unknown += [f"{prefix}{n}.{param}" for n in qkv]
                del canonical[f"{prefix}qkv.{param}"]
                continue
            canonical[f"{prefix}qkv.{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
        return canonical, unknown, classifier

    def from_canonical(self, canonical):
        out: State = {}
        for c, value in canonical.items():
            m = re.fullmatch(r"(cls_attn_blocks\.\d+\.attn\.)qkv\.(weight|bias)", c)
            if m:
                # Rows are q, then k, then v (the fused layer's output order).
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{m.group(1)}{name}.{m.group(2)}"] = part
            elif c.startswith("pos_embeder."):
                out["pos_embed." + c[len("pos_embeder."):]] = value
            else:
                out[c] = value
        return out, []


# RegNet: canonical entries are ("stem", part, param) and ("block", stage, index, part, param),
# stage counted from 1 and index from 0. Parts: the stem's conv/bn, and per block the shortcut
# (proj, proj_bn), the bottleneck convs a, b, c with their norms, and the SE convs se1, se2.
_REGNET_PARAMS = {
    "conv": ("weight",),
    "proj": ("weight",),
    "a": ("weight",),
    "b": ("weight",),
    "c": ("weight",),
    "se1": ("weight", "bias"),
    "se2": ("weight", "bias"),
}


def _regnet_params(part: str) -> Tuple[str, ...]:
    return _REGNET_PARAMS.get(part, _BN_PARAMS)


class _RegNetLayout(_Layout):
    """A RegNet naming scheme: stem module names, a block-name pattern and the block's part names."""

    def __init__(
        self, stem: Dict[str, str], block: str, block_fmt, parts: Dict[str, str], classifier=("", ""), first_block=0
    ):
        self.stem = stem
        self.first_block = first_block  # timm numbers blocks from 1
        self.block = re.compile(block)
        self.block_fmt = block_fmt
        self.parts = parts
        self.classifier = classifier
        # Longest names first, so "f.c.0" is tried before "f.c".
        self._by_name = sorted(((name, part) for part, name in parts.items()), key=lambda p: -len(p[0]))

    def parse(self, key: str):
        for part, name in self.stem.items():
            if key.startswith(name + "."):
                param = key[len(name) + 1:]
                return ("stem", part, param) if param in _regnet_params(part) else None
        m = self.block.match(key)
        if not m:
            return None
        stage, index = self._stage_index(m)
        if stage is None:
            return None
        rest = key[m.end():]
        for name, part in self._by_name:
            if rest.startswith(name + "."):
                param = rest[len(name) + 1:]
                return ("block", stage, index, part, param) if param in _regnet_params(part) else None
        return None

    def _stage_index(self, m: re.Match) -> Tuple[Optional[int], int]:
        index = int(m.group("j")) - self.first_block
        return (int(m.group("s")) if index >= 0 else None), index

    def format(self, c) -> str:
        if c[0] == "stem":
            return f"{self.stem[c[1]]}.{c[2]}"
        _, stage, index, part, param = c
        return f"{self.block_fmt(stage, index)}.{self.parts[part]}.{param}"


class _VisslRegNetLayout(_RegNetLayout):
    def _stage_index(self, m: re.Match):
        # res<k> holds block<k-1>; regnet_v2/regnet_fsdp add a "block<k>-part<n>" level.
        stage = int(m.group("s"))
        return (stage if int(m.group("res")) == stage + 1 else None), int(m.group("j"))


_CLASSY_PARTS = {
    "proj": "proj", "proj_bn": "bn", "a": "f.a.0", "a_bn": "f.a.1", "b": "f.b.0", "b_bn": "f.b.1",
    "se1": "f.se.excitation.0", "se2": "f.se.excitation.2", "c": "f.c", "c_bn": "f.final_bn",
}
_TORCHVISION_REGNET_PARTS = {
    "proj": "proj.0", "proj_bn": "proj.1", "a": "f.a.0", "a_bn": "f.a.1", "b": "f.b.0", "b_bn": "f.b.1",
    "se1": "f.se.fc1", "se2": "f.se.fc2", "c": "f.c.0", "c_bn": "f.c.1",
}
_TIMM_REGNET_PARTS = {
    "proj": "downsample.conv", "proj_bn": "downsample.bn", "a": "conv1.conv", "a_bn": "conv1.bn",
    "b": "conv2.conv", "b_bn": "conv2.bn", "se1": "se.fc1", "se2": "se.fc2", "c": "conv3.conv", "c_bn": "conv3.bn",
}

_LAYOUTS: Dict[str, Dict[str, _Layout]] = {
    "resnet": {
        VISSL: _PrefixLayout(_RESNET_KEYS, prefix="_feature_blocks."),
        "torchvision": _PrefixLayout(_RESNET_KEYS, classifier=("fc.weight", "fc.bias")),
        "timm": _PrefixLayout(_RESNET_KEYS, classifier=("fc.weight", "fc.bias")),
    },
    "regnet": {
        VISSL: _VisslRegNetLayout(
            {"conv": "_feature_blocks.conv1.stem.0", "bn": "_feature_blocks.conv1.stem.1"},
            r"_feature_blocks\.res(?P<res>\d+)\.(?:block\d+-part\d+\.)?block(?P<s>\d+)-(?P<j>\d+)\.",
            lambda s, j: f"_feature_blocks.res{s + 1}.block{s}-{j}",
            _CLASSY_PARTS,
        ),
        "classy_vision": _RegNetLayout(
            {"conv": "stem.stem.0", "bn": "stem.stem.1"},
            r"trunk_output\.block(?P<s>\d+)\.block(?P=s)-(?P<j>\d+)\.",
            lambda s, j: f"trunk_output.block{s}.block{s}-{j}",
            _CLASSY_PARTS,
        ),
        "torchvision": _RegNetLayout(
            {"conv": "stem.0", "bn": "stem.1"},
            r"trunk_output\.block(?P<s>\d+)\.block(?P=s)-(?P<j>\d+)\.",
            lambda s, j: f"trunk_output.block{s}.block{s}-{j}",
            _TORCHVISION_REGNET_PARTS,
            classifier=("fc.weight", "fc.bias"),
        ),
        "timm": _RegNetLayout(
            {"conv": "stem.conv", "bn": "stem.bn"},
            r"s(?P<s>\d+)\.b(?P<j>\d+)\.",
            lambda s, j: f"s{s}.b{j + 1}",
            _TIMM_REGNET_PARTS,
            classifier=("head.fc.weight", "head.fc.bias"),
            first_block=1,
        ),
    },
    "vision_transformer": {
        VISSL: _PrefixLayout(_VIT_KEYS, extra=_VIT_VISSL_ONLY),
        "timm": _PrefixLayout(_VIT_KEYS, classifier=("head.weight", "head.bias"), drops=_VIT_VISSL_ONLY),
    },
    "xcit": {
        VISSL: _PrefixLayout(_XCIT_KEYS),
        "timm": _TimmXCiTLayout(),
    },
}

FAMILIES = tuple(_LAYOUTS)


def supported_pairs() -> List[Tuple[str, str, str]]:
    """Every ``(src, dst, family)`` that :func:`convert_state_dict` converts."""
    return [
        (src, dst, family)
        for family, sides in _LAYOUTS.items()
        for src in SIDES
        for dst in SIDES
        if src != dst and src in sides and dst in sides
    ]


def _pairs_text() -> str:
    by_pair: Dict[Tuple[str, str], List[str]] = {}
    for src, dst, family in supported_pairs():
        by_pair.setdefault((src, dst), []).append(family)
    # Pairs with VISSL on one side first, then library to library.
    order = sorted(by_pair, key=lambda p: (VISSL not in p, SIDES.index(p[0]), SIDES.index(p[1])))
    return "; ".join(f"{s} -> {d} ({', '.join(by_pair[(s, d)])})" for s, d in order)


# Model names of each library, by family. timm names may carry a ".tag" (pretrained weights).
_ARCH_PATTERNS = {
    "torchvision": {
        "resnet": r"resnet\d+|resnext\d+_\d+x\d+d|wide_resnet\d+_\d+",
        "regnet": r"regnet_[xy]_\w+",
    },
    "timm": {
        "resnet": r"resnet\d+|resnext\d+_\d+x\d+d|wide_resnet\d+_\d+",
        "regnet": r"regnet[xy]_\d+(?:_tv)?",
        "vision_transformer": r"(?:vit|deit)_\w+",
        "xcit": r"xcit_\w+",
    },
    "classy_vision": {"regnet": r"regnet_[xyz]_[\w.]+"},
}


def _family_of_arch(side: str, arch: str) -> str:
    if arch in _LAYOUTS:
        return arch
    if side == VISSL:
        raise ValueError(f"arch {arch!r}: for the vissl side give a trunk family, one of {list(FAMILIES)}")
    name = arch.split(".")[0] if side == "timm" else arch
    for family, pattern in _ARCH_PATTERNS[side].items():
        if re.fullmatch(pattern, name):
            return family
    raise ValueError(
        f"arch {arch!r} is not a {side} model this converter knows; {side} names by family: "
        f"{_ARCH_PATTERNS[side]} (or give the family: {list(FAMILIES)})"
    )


def _detect_families(state: Mapping[str, torch.Tensor], side: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """Families whose ``side`` layout recognises every key, and each family's unknown keys."""
    found, unknown = [], {}
    for family, sides in _LAYOUTS.items():
        if side not in sides:
            continue
        canonical, bad, _ = sides[side].to_canonical(state)
        unknown[family] = bad
        if canonical and not bad:
            found.append(family)
    return found, unknown


def detect_side(state: Mapping[str, torch.Tensor]) -> List[Tuple[str, str]]:
    """Every ``(side, family)`` whose key layout recognises all keys of ``state``.

    Some layouts coincide (torchvision and timm ResNets; VISSL and timm ViTs without a
    classifier), so more than one pair can come back.
    """
    return [
        (side, family)
        for side in SIDES
        for family in _detect_families(state, side)[0]
    ]


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> State:
    """Drop a ``module.`` (DDP) or ``base_model.`` (VISSL feature extractor) prefix on every key."""
    state = dict(state)
    for prefix in ("module.", "base_model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _build_on_meta(side: str, arch: str):
    """The library's model built without allocating weights, or None where the library cannot."""
    try:
        with torch.device("meta"):
            if side == "timm":
                try:
                    import timm
                except ImportError:
                    raise ImportError(TIMM_HINT) from None
                if not timm.is_model(arch.split(".")[0]):
                    raise ValueError(f"timm has no model {arch!r}")
                return timm.create_model(arch.split(".")[0], pretrained=False)
            if side == "torchvision":
                import torchvision

                if arch not in torchvision.models.list_models(module=torchvision.models):
                    raise ValueError(f"torchvision has no classification model {arch!r}")
                return torchvision.models.get_model(arch)
            if side == "classy_vision":
                from classy_vision.models import MODEL_REGISTRY, build_model

                if arch not in MODEL_REGISTRY:
                    raise ValueError(f"classy_vision has no model {arch!r}")
                return build_model({"name": arch})
    except (NotImplementedError, RuntimeError):
        # Models that read tensor values while being built (torchvision's RegNets compute their
        # widths with tensors) cannot be built on the meta device: they are not checked.
        return None
    raise ValueError(f"no {side} models to build")


def _check_against(
    side: str, arch: str, state: Mapping[str, torch.Tensor], classifier: Sequence[str], filled: Set[str]
) -> State:
    """Compare ``state`` with ``arch``'s own keys and shapes; drop filled-in keys it lacks.

    ``pos_embed`` may differ in length (another image size); classifiers are not compared.
    """
    model = _build_on_meta(side, arch)
    if model is None:
        return state
    reference = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in classifier}
    state = {k: v for k, v in state.items() if not (k in filled and k not in reference)}
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference and k not in classifier]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {reference[k]}"
        for k in reference
        if k in state and k != "pos_embed" and tuple(state[k].shape) != reference[k]
    ]
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("not in the model", unexpected), ("shape differs", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what}: " + ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else ""))
        raise ValueError(f"the weights do not fit {side} {arch!r}: " + "; ".join(parts))
    return state


def _fill_zero_biases(family: str, dst: str, state: State) -> Set[str]:
    """timm's transformers default to qkv biases: a trunk trained without them gets zeros (exact)."""
    if dst != "timm" or family not in ("vision_transformer", "xcit"):
        return set()
    filled = set()
    for key in list(state):
        m = re.fullmatch(r"(.*\.(?:qkv|[qkv]))\.weight", key)
        if m and f"{m.group(1)}.bias" not in state and ".attn." in key:
            weight = state[key]
            state[f"{m.group(1)}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
            filled.add(f"{m.group(1)}.bias")
    return filled


def _linear_head(head: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The weight and bias of VISSL heads that are a single Linear layer (e.g. ``0.clf.0``)."""
    weights = [k for k, v in head.items() if k.endswith(".weight") and v.dim() == 2]
    if len(weights) == 1:
        prefix = weights[0][: -len("weight")]
        others = [k for k in head if k not in (weights[0], prefix + "bias")]
        if not others:
            return head[weights[0]], head.get(prefix + "bias")
    raise ValueError(
        "the heads are not a single linear layer, so no classifier can be made from them; "
        f"head keys: {list(head)[:8]} (convert without the head to keep the trunk only)"
    )


def feature_dim(state: Mapping[str, torch.Tensor], family: str) -> int:
    """Width of the trunk's pooled output, from VISSL-layout weights of ``family``."""
    if family == "resnet":
        last = max(
            (k for k in state if re.fullmatch(r"_feature_blocks\.layer4\.\d+\.bn[23]\.weight", k)),
            key=lambda k: (int(k.split(".")[2]), k),
            default=None,
        )
        if last is None:
            raise ValueError("no _feature_blocks.layer4 weights: not a VISSL ResNet")
        return state[last].shape[0]
    if family == "regnet":
        layout = _LAYOUTS["regnet"][VISSL]
        blocks = [(c[1], c[2], v) for k, v in state.items() if (c := layout.parse(k)) and c[0] == "block"
                  and c[3] == "c_bn" and c[4] == "weight"]
        if not blocks:
            raise ValueError("no RegNet block weights: not a VISSL RegNet")
        return max(blocks, key=lambda b: (b[0], b[1]))[2].shape[0]
    return state["norm.weight"].shape[0]


@dataclass
class Conversion:
    """The result of a conversion, and what was left out or added on the way."""

    src: str
    dst: str
    family: str
    arch: Optional[str]
    state: State
    heads: State = field(default_factory=dict)  # VISSL heads (dst vissl with the classifier kept)
    dropped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def convert_weights(
    state: Mapping[str, torch.Tensor],
    src: str,
    dst: str,
    arch: Optional[str] = None,
    head: Optional[Mapping[str, torch.Tensor]] = None,
    keep_classifier: bool = False,
) -> Conversion:
    """Convert ``state`` from ``src`` to ``dst`` layout and report what happened.

    ``arch`` names the library's model (the destination's when both sides are libraries); it picks
    the family and, where the library can build the model on the meta device, the result is
    checked against that model's keys and shapes. Without it the family comes from the keys.
    ``head`` (VISSL heads that are one Linear layer) becomes the library's classifier.
    ``keep_classifier`` turns a library classifier into a VISSL ``mlp`` head (``Conversion.heads``).
    """
    for name, side in (("src", src), ("dst", dst)):
        if side not in SIDES:
            raise ValueError(f"{name}={side!r}: expected one of {list(SIDES)}; supported pairs: {_pairs_text()}")
    if src == dst:
        raise ValueError(f"src and dst are both {src!r}: nothing to convert; supported pairs: {_pairs_text()}")
    state = _strip_wrappers(state)
    if not state:
        raise ValueError("the state dict is empty")
    arch_side = dst if dst != VISSL else src
    if arch is not None:
        family = _family_of_arch(arch_side, arch)
    else:
        found, unknown = _detect_families(state, src)
        if not found:
            if not unknown:
                raise ValueError(f"{src} has no converters; supported pairs: {_pairs_text()}")
            closest = min(unknown, key=lambda f: len(unknown[f]))
            bad = unknown[closest]
            raise ValueError(
                f"the keys are not a {src} layout of any supported family; closest is {closest}, where "
                f"{len(bad)} keys are not recognised: {bad[:8]}; supported pairs: {_pairs_text()}"
            )
        family = found[0]
    sides = _LAYOUTS[family]
    if src not in sides or dst not in sides:
        raise ValueError(f"no {src} -> {dst} conversion for {family}; supported pairs: {_pairs_text()}")

    canonical, unknown, classifier = sides[src].to_canonical(state)
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys are not part of the {src} {family} layout: {unknown[:8]}"
            + (" ..." if len(unknown) > 8 else "")
        )
    if not canonical:
        raise ValueError(f"no {family} trunk weights found in the state dict")
    if family == "resnet" and dst != VISSL and "bn1.running_mean" not in canonical:
        raise ValueError(f"the ResNet's norm layers have no running statistics (NORM GroupNorm or LayerNorm); "
                         f"{dst} ResNets use BatchNorm")
    out, dropped_c = sides[dst].from_canonical(canonical)
    result = Conversion(src, dst, family, arch, out, dropped=[sides[src].format(c) for c in dropped_c])
    for key in sides[src].classifier:
        if key in state:
            result.dropped.append(key)

    if src != VISSL and dst != VISSL and classifier and sides[dst].classifier[0]:
        # Library to library: the classifier goes along.
        out[sides[dst].classifier[0]] = classifier["weight"]
        if "bias" in classifier:
            out[sides[dst].classifier[1]] = classifier["bias"]
        result.dropped = [k for k in result.dropped if k not in sides[src].classifier]
    elif dst == VISSL and keep_classifier:
        if not classifier:
            raise ValueError(f"the {src} weights have no classifier ({', '.join(sides[src].classifier)}) to keep")
        result.heads = {"0.clf.0.weight": classifier["weight"]}
        if "bias" in classifier:
            result.heads["0.clf.0.bias"] = classifier["bias"]
        result.dropped = [k for k in result.dropped if k not in sides[src].classifier]
        w = classifier["weight"]
        dims = f"[{w.shape[1]}, {w.shape[0]}]"
        result.notes.append(f"classifier kept as VISSL head: HEAD.PARAMS: [[mlp, {{dims: {dims}}}]]")
    if head:
        if src != VISSL or not sides[dst].classifier[0]:
            raise ValueError(f"a VISSL head becomes a classifier only from vissl to a library with one "
                             f"(got {src} -> {dst} for {family})")
        weight, bias = _linear_head(head)
        dim = feature_dim(state, family)
        if weight.shape[1] != dim:
            raise ValueError(f"the linear head takes {weight.shape[1]} features but the trunk gives {dim}")
        out[sides[dst].classifier[0]] = weight
        if bias is not None:
            out[sides[dst].classifier[1]] = bias
        else:
            out[sides[dst].classifier[1]] = torch.zeros(weight.shape[0], dtype=weight.dtype)

    filled = _fill_zero_biases(family, dst, out)
    if arch is not None and arch not in _LAYOUTS:
        if dst != VISSL:
            checked = _check_against(dst, arch, out, sides[dst].classifier, filled)
            filled &= set(checked)
            result.state = out = checked
        elif src != VISSL:
            _check_against(src, arch, state, sides[src].classifier, set())
    if filled:
        result.notes.append(f"added {len(filled)} zero qkv biases (the trunk has none; timm's model does)")
    return result


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    src: str,
    dst: str,
    arch: Optional[str] = None,
    head: Optional[Mapping[str, torch.Tensor]] = None,
) -> State:
    """``state`` (trunk weights in ``src`` layout) in ``dst`` layout.

    ``src``/``dst``: ``vissl``, ``torchvision``, ``timm`` or ``classy_vision``; ``arch``: the
    library model (``resnet50``, ``regnety_004``, ``vit_small_patch16_224``), optional where the
    keys tell the family. Classifiers are dropped going to VISSL; ``head`` (a VISSL head that is one Linear
    layer, e.g. ``{"0.clf.0.weight", "0.clf.0.bias"}``) becomes the library's ``fc``/``head``.
    Unsupported pairs raise ``ValueError`` listing the supported ones.
    """
    return convert_weights(state, src, dst, arch, head).state


# --- VISSL trunk config for converted weights ------------------------------------------------


def _resnet_config(state: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    from ..trunks.resnet import BLOCK_CONFIG

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
        cfg["NORM"] = "GroupNorm"  # no running statistics: GroupNorm, or LayerNorm (weights cannot tell)
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


def _vit_config(state: Mapping[str, torch.Tensor], arch: Optional[str]) -> Dict[str, Any]:
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
    model = _timm_transformer(arch)
    if model is not None:
        cfg["NUM_HEADS"] = model.blocks[0].attn.num_heads
    return {"NAME": "vision_transformer", "VISION_TRANSFORMERS": cfg}


def _xcit_config(state: Mapping[str, torch.Tensor], arch: Optional[str]) -> Dict[str, Any]:
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
    model = _timm_transformer(arch)
    if model is not None:
        cfg["NUM_HEADS"] = model.blocks[0].attn.num_heads
        cfg["TOKENS_NORM"] = bool(model.cls_attn_blocks[0].tokens_norm)
        cfg["IMAGE_SIZE"] = model.patch_embed.img_size[0]
    return {"NAME": name, "XCIT": cfg}


def vissl_trunk_config(
    state: Mapping[str, torch.Tensor], family: Optional[str] = None, arch: Optional[str] = None
) -> Dict[str, Any]:
    """``MODEL.TRUNK`` settings that build a trunk these VISSL-layout weights load into.

    Read from the weights' shapes: ResNet depth, width multiplier, groups and width per group;
    RegNet per-stage depths, widths, group widths, bottleneck multipliers and SE ratio (as an
    ``anynet``, which builds any RegNet exactly); transformer sizes. What weights cannot tell
    (attention heads, XCiT's ``TOKENS_NORM``) comes from ``arch``, a timm model name, when given.
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
        return _vit_config(state, arch)
    if family == "xcit":
        return _xcit_config(state, arch)
    raise ValueError(f"family {family!r}: expected one of {list(FAMILIES)}")


# --- files and the command line ----------------------------------------------------------------


def _choose_source(trunk: Mapping[str, torch.Tensor], layout: str, to: str, src: Optional[str]) -> str:
    """The side a file's trunk weights are in, from ``--from``, the container and the keys."""
    if src is not None:
        return src
    candidates = list(dict.fromkeys(s for s, _ in detect_side(_strip_wrappers(trunk))))
    if not candidates:
        raise ValueError(
            "cannot tell which library these weights come from (their keys fit no supported layout); "
            f"give --from and --arch; supported pairs: {_pairs_text()}"
        )
    if layout.startswith("vissl") and VISSL in candidates:
        return VISSL  # the container is a VISSL checkpoint
    others = [s for s in candidates if s != to]
    if not others:
        if to == VISSL:
            return VISSL  # VISSL key names in another container (e.g. DINO's): repackaged
        raise ValueError(f"the weights are already in the {to} layout")
    if len(others) == 1 or set(others) <= {"torchvision", "timm"}:
        return others[0]  # torchvision and timm ResNets share their keys: either reads the same
    if VISSL in others:
        # Keys shared by VISSL and a library (ViT): converting to a library means from VISSL.
        return VISSL
    raise ValueError(f"the keys fit several layouts ({', '.join(others)}); give --from")


def convert_checkpoint(
    in_path: str,
    out_path: str,
    to: str,
    arch: Optional[str] = None,
    src: Optional[str] = None,
    with_head: bool = False,
) -> Conversion:
    """Convert a checkpoint file to ``to`` (``vissl``, ``torchvision``, ``timm``, ``classy_vision``).

    The input is read safely (VISSL consolidated/training checkpoints, ``state_dict`` /
    ``model_state_dict`` wrappers or bare state dicts). The source side is detected from the
    layout and keys; pass ``src`` (``--from``) and ``arch`` when they cannot tell. ``to="vissl"``
    writes ``{"classy_state_dict": {"base_model": {"model": {"trunk", "heads"}}}, "type":
    "consolidated"}`` (weights with VISSL key names in another container, such as DINO's
    teacher/student files, are repackaged as they are); other targets a plain state dict.
    ``with_head`` keeps a classifier: a VISSL linear head becomes the library's ``fc``/``head``
    and back. The file is written atomically.
    """
    from .io import load_checkpoint

    if to not in SIDES:
        raise ValueError(f"to={to!r}: expected one of {list(SIDES)}")
    if os.path.exists(out_path) and os.path.exists(in_path) and os.path.samefile(in_path, out_path):
        raise ValueError(f"{out_path}: the output would overwrite the input")
    loaded = load_checkpoint(in_path)
    trunk = loaded.trunk
    source = _choose_source(trunk, loaded.layout, to, src)
    head = loaded.heads if (with_head and source == VISSL) else None
    if with_head and source == VISSL and not loaded.heads:
        raise ValueError(f"{in_path}: --with-head given but the checkpoint has no heads")
    if source == to == VISSL:
        state = _strip_wrappers(trunk)
        found, _ = _detect_families(state, VISSL)
        if not found:
            raise ValueError(f"{in_path}: the trunk keys are not a VISSL layout of a supported family")
        result = Conversion(VISSL, VISSL, found[0], arch, state, heads=dict(loaded.heads) if with_head else {},
                            notes=[f"VISSL key names already ({loaded.layout} container): repackaged"])
    else:
        result = convert_weights(trunk, source, to, arch, head=head, keep_classifier=with_head and to == VISSL)
    if source == VISSL and loaded.heads and not with_head:
        result.dropped += [f"heads.{k}" for k in loaded.heads]
    if to == VISSL:
        obj: Any = {
            "classy_state_dict": {"base_model": {"model": {"trunk": result.state, "heads": result.heads}}},
            "type": "consolidated",
        }
    else:
        obj = result.state
    with atomic_write(out_path) as f:
        torch.save(obj, f)
    return result


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``convert IN OUT --to {...} [--arch NAME] [--from LIB] [--with-head]`` to ``subparsers``."""
    p = subparsers.add_parser(
        "convert",
        help="convert trunk weights between VISSL and torchvision / timm / classy_vision layouts",
        description="Convert trunk weights between VISSL and torchvision / timm / classy_vision key layouts. "
        f"Supported: {_pairs_text()}.",
    )
    p.add_argument("input", metavar="IN", help="checkpoint to read")
    p.add_argument("output", metavar="OUT", help="file to write (replaced atomically)")
    p.add_argument("--to", required=True, choices=SIDES, help="layout to write")
    p.add_argument("--arch", help="library model name (resnet50, regnety_004, vit_small_patch16_224, ...): "
                   "checks the result against it; needed when the keys do not tell the family")
    p.add_argument("--from", dest="src", choices=SIDES, help="layout of IN when it cannot be detected")
    p.add_argument("--with-head", action="store_true",
                   help="keep the classifier: a VISSL linear head becomes fc/head, a library classifier "
                   "a VISSL mlp head")
    return p


def run_convert(args: argparse.Namespace, out=None) -> int:
    """Run ``vissl-models convert``; prints what was converted. Returns the exit code."""
    out = out or sys.stdout
    extra = getattr(args, "overrides", None)
    if extra:
        print(f"vissl-models convert: error: unexpected arguments {extra}", file=sys.stderr)
        return 2
    try:
        result = convert_checkpoint(args.input, args.output, args.to, args.arch, args.src, args.with_head)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        print(f"vissl-models convert: error: {e}", file=sys.stderr)
        return 2
    print(f"converted {result.family} weights {result.src} -> {result.dst}: "
          f"{len(result.state)} tensors -> {args.output}", file=out)
    if result.dropped:
        shown = ", ".join(result.dropped[:6]) + (" ..." if len(result.dropped) > 6 else "")
        print(f"dropped {len(result.dropped)}: {shown}", file=out)
    for note in result.notes:
        print(note, file=out)
    if result.dst == VISSL:
        try:
            cfg = vissl_trunk_config(result.state, result.family, result.arch if result.src == "timm" else None)
        except ValueError as e:
            print(f"trunk config: not derived ({e})", file=out)
        else:
            import yaml

            print("trunk config (MODEL.TRUNK):", file=out)
            print(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None).rstrip(), file=out)
            section = next(v for v in cfg.values() if isinstance(v, dict))
            if result.family in ("vision_transformer", "xcit") and "NUM_HEADS" not in section:
                print("NUM_HEADS is not in the weights: set it, or give --arch with the timm model name", file=out)
    return 0


__all__ = [
    "Conversion",
    "FAMILIES",
    "SIDES",
    "add_convert_parser",
    "convert_checkpoint",
    "convert_state_dict",
    "convert_weights",
    "detect_side",
    "feature_dim",
    "run_convert",
    "supported_pairs",
    "vissl_trunk_config",
]
