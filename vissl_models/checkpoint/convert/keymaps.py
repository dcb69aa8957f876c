"""Key layouts of each family's sides (VISSL, torchvision, timm, classy_vision) and their tables.

Each side's layout maps its state dict onto the family's canonical keys and back; the tables say
which sides every family has and which library model names belong to which family.
"""

from __future__ import annotations

import re
from typing import Dict, Hashable, List, Mapping, Optional, Tuple

import torch

VISSL = "vissl"
LIBRARIES = ("torchvision", "timm", "classy_vision")
SIDES = (VISSL,) + LIBRARIES

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
