"""Converting a state dict from one side to another, classifiers and heads included."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import torch

from .detect import _detect_families, _family_of_arch, _strip_wrappers
from .keymaps import _LAYOUTS, SIDES, VISSL, State, _pairs_text
from .libraries import _check_against


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
    model_config: Optional[Dict[str, Any]] = None  # the VISSL model config written with vissl weights
    config_path: Optional[str] = None  # where that config was written


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
