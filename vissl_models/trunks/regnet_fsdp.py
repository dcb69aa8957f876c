"""The original's own RegNet build (``regnet_v2``, ``regnet_fsdp``): one implementation, two names.

Stems and blocks are classy_vision's (as in the original); what differs from ``regnet`` is the
stage layout. Each stage is split into block groups at ``stage_checkpoints`` boundaries, and each
group may recompute its activations in backward (``stage_checkpointing``, else
``USE_ACTIVATION_CHECKPOINTING``). Keys therefore carry the group:
``_feature_blocks.res2.block1-part0.block1-0.f.a.0.weight``.

``regnet_fsdp`` was the same network wrapped in fairscale FSDP; here it is a plain module that
builds and runs in one process (FSDP state dicts carry no wrapper names, so keys are the same).
As in the original, it leaves activation checkpointing to the block groups only, while
``regnet_v2`` also applies the trunk-wide checkpointing of ``NUM_ACTIVATION_CHECKPOINTING_SPLITS``.
"""

from __future__ import annotations

import math
from typing import List, Mapping, Tuple

import torch
from torch import nn

from ..config import ConfigError
from ..registry import register_model_trunk
from ..layers.checkpointing import checkpoint_without_bn_double_update
from .base import FeatureTrunk, TrunkCommon
from .regnet import REGNET_INPUT_TYPES, SECTION, RegNetOptions, regnet_feature_blocks, set_regnet_contract


def _he_normal_fan_out(conv: nn.Conv2d) -> None:
    # He et al. with fan-out over the kernel area times all output channels (groups not divided out).
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))


def _small_normal_linear(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=0.01)
    nn.init.zeros_(linear.bias)


def _unit_affine(bn: nn.BatchNorm2d) -> None:
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)


_INITIALISERS = ((nn.Conv2d, _he_normal_fan_out), (nn.BatchNorm2d, _unit_affine), (nn.Linear, _small_normal_linear))


def init_regnet_weights(module: nn.Module) -> None:
    """Initialise ``module`` as classy_vision initialises a RegNet.

    Convolutions draw from a zero-mean normal scaled for ReLU by fan-out, BatchNorms start as the
    identity, and linear layers draw small weights (std 0.01) with zero bias. Submodules are visited
    in ``modules()`` order, so a given seed draws the same values.
    """
    for m in module.modules():
        for kind, init in _INITIALISERS:
            if isinstance(m, kind):
                init(m)
                break


class BlockGroup(nn.Sequential):
    """Consecutive blocks of a stage; with ``checkpointed`` their activations are recomputed in backward.

    The recompute pass does not update BatchNorm running statistics a second time.
    """

    def __init__(self, checkpointed: bool = False) -> None:
        super().__init__()
        self.checkpointed = checkpointed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and len(self) > 0 and torch.is_grad_enabled():
            return checkpoint_without_bn_double_update(list(self), x)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"checkpointed={self.checkpointed}"


class RegNetStage(nn.Sequential):
    """A stage: block groups named ``block{stage}-part{group}``; ``stage_depth`` sums block depths."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_depth = 0


def stage_groups(
    options: RegNetOptions, stage: int, depth: int, use_checkpointing: bool
) -> List[Tuple[int, bool]]:
    """(end block index, checkpointed) of each block group of stage ``stage`` (0-based).

    No boundaries: one group, never checkpointed. Boundaries without flags take
    ``use_checkpointing``; a group closing the stage is added when the last boundary is not its depth.
    """
    ends = list(options.stage_checkpoints[stage]) if stage < len(options.stage_checkpoints) else []
    flags = list(options.stage_checkpointing[stage]) if stage < len(options.stage_checkpointing) else []
    key = f"{SECTION}.stage_checkpoints[{stage}]"
    if not flags:
        flags = [use_checkpointing] * len(ends)
    if len(flags) != len(ends):
        raise ConfigError(
            f"{SECTION}.stage_checkpointing[{stage}]: got {flags}, expected one flag per boundary of {key} ({ends})"
        )
    if ends != sorted(ends) or any(e < 0 or e > depth for e in ends):
        raise ConfigError(f"{key}: got {ends}, expected sorted block indices within the stage depth {depth}")
    if not ends:
        return [(depth, False)]
    groups = list(zip(ends, flags))
    if ends[-1] != depth:
        groups.append((depth, use_checkpointing))
    return groups


def _activation(params) -> nn.Module:
    from classy_vision.models.anynet import ActivationType

    if params.activation == ActivationType.SILU:
        return nn.SiLU()
    return nn.ReLU(params.relu_in_place)


def build_regnet_v2_blocks(options: RegNetOptions, use_checkpointing: bool) -> Tuple[nn.ModuleDict, int]:
    """The stem and grouped stages as ``_feature_blocks``, and the trunk depth.

    Each stem and block is initialised right after it is built, in the original's order, so a
    given seed gives the original's initial weights.
    """
    from classy_vision.models.anynet import (
        BlockType,
        ResBasicBlock,
        ResBottleneckBlock,
        ResBottleneckLinearBlock,
        ResStemCifar,
        ResStemIN,
        SimpleStemIN,
        StemType,
        VanillaBlock,
    )

    params = options.classy_params()
    stem_cls = {
        StemType.RES_STEM_CIFAR: ResStemCifar,
        StemType.RES_STEM_IN: ResStemIN,
        StemType.SIMPLE_STEM_IN: SimpleStemIN,
    }[params.stem_type]
    block_cls = {
        BlockType.VANILLA_BLOCK: VanillaBlock,
        BlockType.RES_BASIC_BLOCK: ResBasicBlock,
        BlockType.RES_BOTTLENECK_BLOCK: ResBottleneckBlock,
        BlockType.RES_BOTTLENECK_LINEAR_BLOCK: ResBottleneckLinearBlock,
    }[params.block_type]

    stem = stem_cls(3, params.stem_width, params.bn_epsilon, params.bn_momentum, _activation(params))
    init_regnet_weights(stem)

    width_in, trunk_depth, stages = params.stem_width, 0, []
    for i, (width_out, stride, depth, group_width, bottleneck_multiplier) in enumerate(params.get_expanded_params()):
        stage_index = i + 1
        stage = RegNetStage()
        start = 0
        for group_index, (end, checkpointed) in enumerate(stage_groups(options, i, depth, use_checkpointing)):
            group = BlockGroup(checkpointed)
            for b in range(start, end):
                block = block_cls(
                    width_in if b == 0 else width_out,
                    width_out,
                    stride if b == 0 else 1,
                    params.bn_epsilon,
                    params.bn_momentum,
                    _activation(params),
                    group_width,
                    bottleneck_multiplier,
                    params.se_ratio,
                )
                init_regnet_weights(block)
                stage.stage_depth += block.depth
                group.add_module(f"block{stage_index}-{b}", block)
            start = end
            stage.add_module(f"block{stage_index}-part{group_index}", group)
        stages.append((f"block{stage_index}", stage))
        trunk_depth += stage.stage_depth
        width_in = width_out
    return regnet_feature_blocks(stem, stages), trunk_depth


class RegNetV2(FeatureTrunk):
    """The original's RegNet build with block groups (``regnet_v2``; ``regnet_fsdp`` without FSDP).

    Feature names: ``conv1, res2, res3, res4, res5, avgpool, flatten`` (default ``flatten``).
    Weights are drawn from ``common.init_seed`` (``MODEL._MODEL_INIT_SEED``), not the global RNG.

    Checkpointing from the config follows the original: the block groups checkpoint as
    ``stage_checkpointing`` (else ``USE_ACTIVATION_CHECKPOINTING``) says, and ``regnet_v2`` also
    cuts the whole trunk into ``NUM_ACTIVATION_CHECKPOINTING_SPLITS`` segments
    (``trunk_checkpointing``; ``regnet_fsdp`` does not). ``set_grad_checkpointing(enable)`` then
    switches every block group on or off and leaves the trunk-wide segments off.
    """

    def __init__(
        self,
        options: RegNetOptions,
        common: TrunkCommon = TrunkCommon(),
        trunk_checkpointing: bool = True,
        trunk_name: str = "regnet_v2",
    ) -> None:
        super().__init__(common)
        if options.kind == "named":
            raise ConfigError(
                f"{SECTION}.name: the {trunk_name} trunk takes 'anynet' or the explicit RegNet parameters "
                f"(depth, w_0, w_a, w_m, group_width), not a named model ({options.name!r}); use the regnet "
                "trunk for named models"
            )
        self.options = options
        self.grad_checkpointing = common.use_checkpointing and trunk_checkpointing
        # Built from its own seed so its weights do not depend on the RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(common.init_seed)
            self._feature_blocks, self.trunk_depth = build_regnet_v2_blocks(options, common.use_checkpointing)
        set_regnet_contract(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block group (``enable``) or none; trunk-wide segments are switched off."""
        self.grad_checkpointing = False
        for m in self.modules():
            if isinstance(m, BlockGroup):
                m.checkpointed = bool(enable)


def _build(model_config: Mapping, model_name: str, trunk_checkpointing: bool) -> RegNetV2:
    common = TrunkCommon.from_config(model_config, model_name, REGNET_INPUT_TYPES)
    return RegNetV2(
        RegNetOptions.from_config(model_config["TRUNK"]["REGNET"], allow_stage_checkpoints=True),
        common,
        trunk_checkpointing=trunk_checkpointing,
        trunk_name=model_name,
    )


@register_model_trunk("regnet_v2")
def build_regnet_v2(model_config: Mapping, model_name: str = "regnet_v2") -> RegNetV2:
    """Build ``regnet_v2`` from ``MODEL`` (``TRUNK.REGNET``, ``ACTIVATION_CHECKPOINTING``, ``_MODEL_INIT_SEED``)."""
    return _build(model_config, model_name, trunk_checkpointing=True)


@register_model_trunk("regnet_fsdp")
def build_regnet_fsdp(model_config: Mapping, model_name: str = "regnet_fsdp") -> RegNetV2:
    """Build ``regnet_fsdp`` as a plain module: ``regnet_v2`` with checkpointing by block group only."""
    return _build(model_config, model_name, trunk_checkpointing=False)
