"""``dino_head`` / ``dino_head_fsdp``: MLP, L2 normalisation, weight-normalised prototypes."""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..layers import WeightNormLinear
from ..layers.init import init_linear_trunc_normal
from ..layers.weight_norm import weight_norm_prototypes
from ..registry import register_model_head
from .common import ModelConfig, one_width, read_head_options

DINO_OPTIONS = (
    ("in_dim", opt.positive_int),
    ("num_clusters", one_width),
    ("use_bn", opt.as_bool),
    ("normalize_last_layer", opt.as_bool),
    ("num_layers", opt.positive_int),
    ("hidden_dim", opt.positive_int),
    ("bottleneck_dim", opt.positive_int),
)


@register_model_head("dino_head")
class DINOHead(nn.Module):
    """``dino_head``: ``mlp`` (Linear, [BN], GELU, ..., Linear to ``bottleneck_dim``), L2
    normalisation, then the weight-normalised ``prototypes0``; returns ``[logits]``.

    Options:
        in_dim (int): width of the incoming feature.
        num_clusters (int, or a list of one int): number of prototypes.
        use_bn (bool, default false): BatchNorm1d after each hidden Linear.
        normalize_last_layer (bool, default true): ``prototypes0.weight_g`` frozen at 1.
        num_layers (int, default 3): Linear layers in ``mlp`` (1: a single Linear).
        hidden_dim (int, default 2048), bottleneck_dim (int, default 256).

    Keys ``mlp.<i>.*`` (``mlp.*`` for one layer) and ``prototypes0.weight_g/weight_v``.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        in_dim: int,
        num_clusters: Union[int, Sequence[int]],
        use_bn: bool = False,
        normalize_last_layer: bool = True,
        num_layers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        o = read_head_options("dino_head", dict(
            in_dim=in_dim, num_clusters=num_clusters, use_bn=use_bn, normalize_last_layer=normalize_last_layer,
            num_layers=num_layers, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim), DINO_OPTIONS)
        self.input_width = o["in_dim"]
        if o["num_layers"] == 1:
            self.mlp: nn.Module = nn.Linear(o["in_dim"], o["bottleneck_dim"])
        else:
            layers: List[nn.Module] = []
            width = o["in_dim"]
            for _ in range(o["num_layers"] - 1):
                layers.append(nn.Linear(width, o["hidden_dim"]))
                if o["use_bn"]:
                    layers.append(nn.BatchNorm1d(o["hidden_dim"]))
                layers.append(nn.GELU())
                width = o["hidden_dim"]
            layers.append(nn.Linear(width, o["bottleneck_dim"]))
            self.mlp = nn.Sequential(*layers)
        self.apply(init_linear_trunc_normal)
        self.prototypes0 = weight_norm_prototypes(o["bottleneck_dim"], o["num_clusters"], o["normalize_last_layer"])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return [self.prototypes0(x)]


def _as_buffer_weight_g(proto: WeightNormLinear) -> WeightNormLinear:
    """Turn ``weight_g`` into a buffer of ones: the original's FSDP head does this when the
    prototypes are normalised (FSDP cannot mix frozen and trainable parameters in a module)."""
    g = proto.weight_g.detach().clone()
    del proto.weight_g
    proto.register_buffer("weight_g", g)
    return proto


@register_model_head("dino_head_fsdp")
class DINOHeadFSDP(DINOHead):
    """``dino_head_fsdp``: ``dino_head`` as the original's FSDP variant lays it out.

    Options: as ``dino_head`` (in_dim, num_clusters, use_bn, normalize_last_layer, num_layers,
    hidden_dim, bottleneck_dim).

    With ``normalize_last_layer``, ``prototypes0.weight_g`` is a buffer (same key, same value);
    ``WeightNormLinear`` casts it to the compute dtype, so FSDP2 bf16 mixed precision works.
    Sharding itself is applied from outside.
    """

    def __init__(self, model_config: ModelConfig, in_dim: int, num_clusters: Union[int, Sequence[int]],
                 use_bn: bool = False, normalize_last_layer: bool = True, num_layers: int = 3,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__(model_config, in_dim, num_clusters, use_bn, normalize_last_layer, num_layers,
                         hidden_dim, bottleneck_dim)
        if not self.prototypes0.weight_g.requires_grad:
            _as_buffer_weight_g(self.prototypes0)
