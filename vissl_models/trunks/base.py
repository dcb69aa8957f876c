"""The trunk contract (:class:`Trunk`), the options every trunk shares (:class:`TrunkCommon`), and
the feature-block machinery most convolutional trunks are built on (:class:`FeatureTrunk`).

Every registered trunk answers the same questions: which features it has (``feature_info``,
``feature_names``, ``default_feature``, ``num_features``), computes any of them in one pass
(``feature_dict``), and offers timm's ``forward_features`` / ``forward_intermediates`` /
``set_grad_checkpointing``. ``forward(x, out_feat_keys)`` keeps the original's list contract of
each family on top of that, so outputs are unchanged.

A feature-block trunk keeps its layers in an ``nn.ModuleDict`` named ``_feature_blocks`` (the
original's key layout) and maps public feature names (``res5``, ``res5avg``, ...) to block names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..config import ConfigError
from ..config import options as opt
from ..layers import INPUT_TYPES, transform_input_type
from ..layers.checkpointing import checkpoint_without_bn_double_update


#: What a feature tensor looks like: ``map`` N x C x H x W, ``vector`` N x C, ``tokens`` N x L x C.
FEATURE_KINDS = ("map", "vector", "tokens")


@dataclass(frozen=True)
class FeatureInfo:
    """One public feature of a trunk, as ``trunk.feature_info`` lists them (timm's ``feature_info``).

    ``channels`` is the size of dim 1 for a ``map`` or ``vector`` and of the last dim for ``tokens``:
    the width a head sees. ``reduction`` is the spatial stride relative to the input (None for
    pooled vectors). ``module`` is the block that produces it (``_feature_blocks`` name or similar).
    """

    name: str
    channels: int
    reduction: Optional[int]
    kind: str
    module: str = ""


def _or_list(values: Sequence[str]) -> str:
    return " or ".join(repr(v) for v in values)


@dataclass(frozen=True)
class TrunkCommon:
    """Options every trunk reads from ``MODEL`` besides its own section, read and checked in one place.

    ``input_type`` is ``MODEL.INPUT_TYPE`` as configured; ``apply_input_type`` False marks trunks
    whose original used the input as given whatever the type said (``stem_input_type`` is then
    ``rgb``). ``use_checkpointing``/``checkpointing_splits`` are the trunk-wide activation
    checkpointing switch (see ``Trunk.set_grad_checkpointing``); ``init_seed`` is
    ``MODEL._MODEL_INIT_SEED`` for trunks that initialise from their own seed.
    """

    input_type: str = "rgb"
    apply_input_type: bool = True
    use_checkpointing: bool = False
    checkpointing_splits: int = 2
    init_seed: int = 0

    @property
    def stem_input_type(self) -> str:
        """The input type the trunk acts on: ``input_type``, or ``rgb`` when it is not applied."""
        return self.input_type if self.apply_input_type else "rgb"

    @classmethod
    def from_config(
        cls,
        model_config: Mapping,
        trunk: str = "",
        input_types: Sequence[str] = INPUT_TYPES,
        apply_input_type: bool = True,
    ) -> "TrunkCommon":
        """Read ``MODEL.INPUT_TYPE``, ``MODEL.ACTIVATION_CHECKPOINTING`` and ``MODEL._MODEL_INIT_SEED``.

        ``input_types`` are the types trunk ``trunk`` accepts; any other raises a ``ConfigError``
        naming the key, the value and the accepted ones.
        """
        input_type = opt.choice("MODEL.INPUT_TYPE", model_config["INPUT_TYPE"], INPUT_TYPES)
        if input_type not in input_types:
            who = f"trunk {trunk!r}" if trunk else "this trunk"
            raise ConfigError(f"MODEL.INPUT_TYPE: got {input_type!r}, {who} takes {_or_list(input_types)}")
        ac = model_config["ACTIVATION_CHECKPOINTING"]
        return cls(
            input_type=input_type,
            apply_input_type=apply_input_type,
            use_checkpointing=opt.as_bool(
                "MODEL.ACTIVATION_CHECKPOINTING.USE_ACTIVATION_CHECKPOINTING",
                ac["USE_ACTIVATION_CHECKPOINTING"],
            ),
            checkpointing_splits=opt.as_int(
                "MODEL.ACTIVATION_CHECKPOINTING.NUM_ACTIVATION_CHECKPOINTING_SPLITS",
                ac["NUM_ACTIVATION_CHECKPOINTING_SPLITS"],
                minimum=1,
            ),
            init_seed=opt.model_init_seed(model_config),
        )


def resolve_feature_names(
    out_feat_keys: Optional[Sequence[str]],
    block_names: Sequence[str],
    feature_mapping: Mapping[str, str],
) -> Tuple[List[str], int]:
    """Map requested feature names to block names; return them and the last block index needed.

    No names means the last block. Public names go through ``feature_mapping``; block names are
    accepted as they are. An unknown name raises a ``ValueError`` listing the valid ones.
    """
    if not out_feat_keys:
        return [block_names[-1]], len(block_names) - 1
    resolved = []
    for key in out_feat_keys:
        block = feature_mapping.get(key, key)
        if block not in block_names:
            valid = list(feature_mapping) + [b for b in block_names if b not in feature_mapping]
            raise ValueError(f"{key!r} is not a feature of this trunk; valid names: {valid}")
        resolved.append(block)
    return resolved, max(block_names.index(b) for b in resolved)


def run_feature_blocks(
    x: torch.Tensor,
    feature_blocks: nn.ModuleDict,
    wanted: Sequence[str],
    checkpointing_splits: int = 0,
) -> Dict[str, torch.Tensor]:
    """``{block name: output}`` for the ``wanted`` blocks, running ``feature_blocks`` in order and
    stopping after the last one wanted. ``checkpointing_splits > 0`` recomputes activations in
    that many segments during backward (BatchNorm statistics still updated once)."""
    names = list(feature_blocks.keys())
    wanted_set = set(wanted)
    last = max(names.index(b) for b in wanted_set)
    if checkpointing_splits > 0 and torch.is_grad_enabled():
        return _checkpointed_forward(x, feature_blocks, names[: last + 1], wanted_set, checkpointing_splits)
    found: Dict[str, torch.Tensor] = {}
    for name in names[: last + 1]:
        x = feature_blocks[name](x)
        if name in wanted_set:
            found[name] = x
    return found


def ordered_outputs(
    names: Sequence[str], blocks: Sequence[str], block_order: Sequence[str], requested_order: bool = False
) -> List[str]:
    """The original's output order for requested ``names`` (resolved to ``blocks``).

    Requested order when a block repeats (or ``requested_order``); otherwise network order, as the
    original's shared helper returned them (heads were trained against that pairing).
    """
    if requested_order or len(set(blocks)) != len(blocks):
        return list(names)
    position = {b: i for i, b in enumerate(block_order)}
    return [n for _, n in sorted(zip((position[b] for b in blocks), names))]


def forward_feature_blocks(
    x: torch.Tensor,
    feature_blocks: nn.ModuleDict,
    out_feat_keys: Optional[Sequence[str]],
    feature_mapping: Mapping[str, str],
    checkpointing_splits: int = 0,
    requested_order: bool = False,
) -> List[torch.Tensor]:
    """Run ``feature_blocks`` in order, stopping after the last requested feature; one tensor per
    name in the order :func:`ordered_outputs` gives (no names: the last block)."""
    names = list(feature_blocks.keys())
    wanted, _ = resolve_feature_names(out_feat_keys, names, feature_mapping)
    found = run_feature_blocks(x, feature_blocks, wanted, checkpointing_splits)
    keys = list(out_feat_keys) if out_feat_keys else wanted
    by_name = dict(zip(keys, wanted))
    return [found[by_name[k]] for k in ordered_outputs(keys, wanted, names, requested_order)]


def _units(feature_blocks: nn.ModuleDict, names: Sequence[str]) -> List[Tuple[nn.Module, Optional[str]]]:
    """Flatten blocks into checkpointable units; a unit carries the block name it completes."""
    units: List[Tuple[nn.Module, Optional[str]]] = []
    for name in names:
        block = feature_blocks[name]
        parts = list(block.children()) if isinstance(block, nn.Sequential) and len(block) > 0 else [block]
        for i, part in enumerate(parts):
            units.append((part, name if i == len(parts) - 1 else None))
    return units


def _segments(units, wanted, splits: int):
    """Cut units at every requested feature, then halve the longest segment until ``splits``."""
    segments, current = [], []
    for unit in units:
        current.append(unit)
        if unit[1] in wanted:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    while len(segments) < splits:
        longest = max(range(len(segments)), key=lambda i: len(segments[i]))
        seg = segments[longest]
        if len(seg) < 2:
            break
        half = len(seg) // 2
        segments[longest : longest + 1] = [seg[:half], seg[half:]]
    return segments


def _checkpointed_forward(x, feature_blocks, names, wanted, splits):
    found: Dict[str, torch.Tensor] = {}
    for segment in _segments(_units(feature_blocks, names), wanted, splits):
        x = checkpoint_without_bn_double_update([m for m, _ in segment], x)
        for m, name in segment:
            if name in wanted:
                found[name] = x
    return found


def check_single_feature(trunk: str, out_feat_keys: Optional[Sequence[str]]) -> None:
    """These trunks compute one feature and, like the original, ignore its name; more than one raise."""
    if out_feat_keys is not None and len(out_feat_keys) > 1:
        raise ValueError(
            f"trunk {trunk!r} returns a single feature (the original ignored out_feat_keys); "
            f"got {len(out_feat_keys)} names: {list(out_feat_keys)}"
        )


def requested_features(
    trunk: str, out_feat_keys: Optional[Sequence[str]], valid: Sequence[str], note: str = ""
) -> List[str]:
    """``out_feat_keys`` as a list (``valid[0]`` when empty), checked against ``valid``.

    For trunks with a fixed set of feature names that return them in the requested order,
    repeats included. An unknown name raises a ``ValueError`` naming the trunk and the valid names.
    """
    names = list(out_feat_keys) if out_feat_keys else [valid[0]]
    unknown = [n for n in names if n not in valid]
    if unknown:
        suffix = f" {note}" if note else ""
        raise ValueError(f"the {trunk} trunk has no features named {unknown}; valid names: {list(valid)}{suffix}")
    return names


def take_indices(count: int, indices: Optional[Union[int, Sequence[int]]] = None) -> Tuple[List[int], int]:
    """Which of ``count`` intermediates to return, as timm reads ``indices``: None all, an int n
    the last n, a list those positions (negative counts from the end). Returns them in network
    order, without repeats, and the largest."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices}: expected the number of last intermediates, 1 to {count}")
        taken = list(range(count - indices, count))
    else:
        taken = []
        for i in indices:
            j = count + i if i < 0 else i
            if not 0 <= j < count:
                raise ValueError(f"indices: {i} is out of range for {count} intermediates")
            taken.append(j)
        if not taken:
            raise ValueError("indices: expected at least one intermediate index")
        taken = sorted(set(taken))
    return taken, max(taken)


def check_map_output_fmt(output_fmt: str) -> None:
    """``forward_intermediates`` of convolutional trunks gives maps channels first or last."""
    if output_fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"output_fmt: got {output_fmt!r}, expected 'NCHW' or 'NHWC'")


class Trunk(nn.Module):
    """The contract every registered trunk follows (timm's vocabulary on top of the original's API).

    Attributes a subclass sets in ``__init__``:

    - ``feature_info``: one :class:`FeatureInfo` per public feature, true for the trunk as built at
      ``default_input_size``; ``feature_names`` lists them, then ``feature_aliases`` (other names
      ``out_feat_keys`` accepts, such as block names).
    - ``default_feature``: the natural pooled feature (what ``feature_dict`` returns without names);
      ``num_features`` is its width.
    - ``final_feature``: the last unpooled map/tokens (``forward_features``).
    - ``intermediate_features``: what ``forward_intermediates`` indexes (stages or blocks).

    and methods: ``feature_dict`` (compute named features once), and ``forward`` (the original's
    list contract, usually built on ``feature_dict``). ``forward_features`` and
    ``forward_intermediates`` have generic implementations here on top of ``feature_dict``.

    Activation checkpointing is one switch, ``set_grad_checkpointing``; ``MODEL.ACTIVATION_CHECKPOINTING``
    sets it at build. ``checkpointing_splits`` is how many segments trunks that cut their blocks use.
    """

    #: Input size (H, W) ``feature_info`` describes.
    default_input_size: Tuple[int, int] = (224, 224)
    #: Names ``out_feat_keys`` accepts besides the public features (e.g. block names).
    feature_aliases: Sequence[str] = ()

    def __init__(self, common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__()
        self.input_type = common.stem_input_type
        self.grad_checkpointing = common.use_checkpointing
        self.checkpointing_splits = common.checkpointing_splits
        self.feature_info: List[FeatureInfo] = []
        self.default_feature = ""
        self.final_feature = ""
        self.intermediate_features: List[str] = []

    @property
    def feature_names(self) -> List[str]:
        """Names accepted in ``out_feat_keys``: the public features, then their aliases."""
        public = [f.name for f in self.feature_info]
        return public + [a for a in self.feature_aliases if a not in public]

    def feature(self, name: str) -> FeatureInfo:
        """The ``FeatureInfo`` of public feature ``name``."""
        for info in self.feature_info:
            if info.name == name:
                return info
        raise ValueError(
            f"feature {name!r} is not a public feature of {type(self).__name__}; "
            f"public features: {[f.name for f in self.feature_info]}"
        )

    @property
    def num_features(self) -> int:
        """Width of ``default_feature``."""
        return self.feature(self.default_feature).channels

    def check_feature_names(self, names: Sequence[str]) -> None:
        """Raise a ``ValueError`` naming the valid names if any of ``names`` is unknown."""
        valid = self.feature_names
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise ValueError(f"features {unknown} are not features of {type(self).__name__}; valid names: {valid}")

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """``{name: tensor}`` for ``names`` (default: ``[default_feature]``), computed in one pass
        that stops after the last block needed."""
        raise NotImplementedError(f"{type(self).__name__} does not implement feature_dict")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final unpooled feature map (or tokens), as one tensor (timm's meaning)."""
        return self.feature_dict(x, [self.final_feature])[self.final_feature]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = True,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Intermediate features in timm's sense (stages here; blocks for transformers).

        ``indices``: None for all of ``intermediate_features``, an int n for the last n, or a list of
        positions. Returns ``(final, intermediates)``, or only the intermediates with
        ``intermediates_only``. With ``stop_early`` nothing after the last intermediate taken is
        computed and ``final`` is that intermediate; otherwise ``final`` is ``forward_features``.
        ``output_fmt`` ``NHWC`` puts channels last on 4-d maps. ``norm`` has no effect on
        convolutional trunks (there is no final norm before pooling).
        """
        check_map_output_fmt(output_fmt)
        taken, last = take_indices(len(self.intermediate_features), indices)
        final, out = self._map_intermediates(x, taken, last, to_end=not (stop_early or intermediates_only))
        if output_fmt == "NHWC":
            out = [t.permute(0, 2, 3, 1) if t.dim() == 4 else t for t in out]
        if intermediates_only:
            return out
        return final, out

    def _map_intermediates(
        self, x: torch.Tensor, taken: Sequence[int], last: int, to_end: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The maps of ``intermediate_features`` at positions ``taken`` (channels first), and the
        final output: ``forward_features`` when ``to_end``, else intermediate ``last``, after which
        nothing runs. Trunks with their own stage loop override this, not ``forward_intermediates``."""
        names = [self.intermediate_features[i] for i in taken]
        final_name = self.final_feature if to_end else self.intermediate_features[last]
        feats = self.feature_dict(x, names + [final_name])
        return feats[final_name], [feats[n] for n in names]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations during backward (less memory, same gradients) or stop doing so."""
        self.grad_checkpointing = bool(enable)


class FeatureTrunk(Trunk):
    """Base for trunks built from ``_feature_blocks`` plus a public-name mapping.

    Subclasses fill ``self._feature_blocks``, ``self.feat_eval_mapping`` (public name -> block name)
    and the contract attributes (see :class:`Trunk`). ``feature_info`` lists the public names; the
    block names are aliases. Input type conversion (``prepare_input``) and checkpointing (cut
    into ``checkpointing_splits`` segments) are shared. ``requested_order`` keeps the outputs of
    ``forward`` in the order asked even without repeats (some originals did so).
    """

    requested_order: bool = False

    def __init__(self, common: TrunkCommon = TrunkCommon()) -> None:
        super().__init__(common)
        self.feat_eval_mapping: Dict[str, str] = {}

    @property
    def feature_aliases(self) -> List[str]:
        """Block names that are not public names."""
        return [b for b in self._feature_blocks.keys() if b not in self.feat_eval_mapping]

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the first block sees: the input converted for ``MODEL.INPUT_TYPE``."""
        return transform_input_type(x, self.input_type)

    def _blocks_for(self, names: Sequence[str]) -> List[str]:
        blocks = list(self._feature_blocks.keys())
        out = []
        for name in names:
            block = self.feat_eval_mapping.get(name, name)
            if block not in blocks:
                raise ValueError(f"{name!r} is not a feature of this trunk; valid names: {self.feature_names}")
            out.append(block)
        return out

    def _splits(self) -> int:
        return self.checkpointing_splits if self.grad_checkpointing else 0

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        names = list(names) if names else [self.default_feature]
        blocks = self._blocks_for(names)
        found = run_feature_blocks(self.prepare_input(x), self._feature_blocks, blocks, self._splits())
        return {n: found[b] for n, b in zip(names, blocks)}

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """The original's list contract: no names gives the last block; otherwise one tensor per
        name, in network order when the names are distinct blocks, else in the order asked."""
        names = list(out_feat_keys) if out_feat_keys else [list(self._feature_blocks.keys())[-1]]
        feats = self.feature_dict(x, names)
        order = ordered_outputs(names, self._blocks_for(names), list(self._feature_blocks.keys()), self.requested_order)
        return [feats[n] for n in order]


def map_info(name: str, channels: int, reduction: Optional[int], module: str = "") -> FeatureInfo:
    """A ``map`` feature; ``reduction`` None for a globally pooled 1x1 map."""
    return FeatureInfo(name, channels, reduction, "map", module)


def vector_info(name: str, channels: int, module: str = "") -> FeatureInfo:
    """A pooled ``vector`` feature (N x C)."""
    return FeatureInfo(name, channels, None, "vector", module)
