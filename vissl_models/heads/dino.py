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


class DINOHead(nn.Module):
    """DINO projection head: ``mlp`` (Linear, [BN], GELU, ..., Linear to ``bottleneck_dim``),
    L2 normalisation, then ``prototypes0``; returns ``[logits]``.

    Keys ``mlp.<i>.*`` (``mlp.*`` for one layer) and ``prototypes0.weight_g/weight_v``.
    """

    def __init__(
        self,
        in_dim: int,
        num_clusters: Union[int, Sequence[int]],
        use_bn: bool = False,
        normalize_last_layer: bool = True,
        num_layers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        if isinstance(num_clusters, int):
            num_clusters = [num_clusters]
        num_clusters = opt.as_int_list("head 'dino_head' option 'num_clusters'", num_clusters)
        if len(num_clusters) != 1:
            raise ValueError(f"head 'dino_head' option 'num_clusters': got {num_clusters}, expected one value")
        num_layers = opt.as_int("head 'dino_head' option 'num_layers'", num_layers, minimum=1)
        if num_layers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: List[nn.Module] = []
            width = in_dim
            for _ in range(num_layers - 1):
                layers.append(nn.Linear(width, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                width = hidden_dim
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(init_linear_trunc_normal)
        self.prototypes0 = weight_norm_prototypes(bottleneck_dim, num_clusters[0], normalize_last_layer)

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


@register_model_head("dino_head")
def build_dino_head(model_config, in_dim, num_clusters, use_bn=False, normalize_last_layer=True,
                    num_layers=3, hidden_dim=2048, bottleneck_dim=256) -> DINOHead:
    return DINOHead(in_dim, num_clusters, use_bn, normalize_last_layer, num_layers, hidden_dim, bottleneck_dim)


@register_model_head("dino_head_fsdp")
def build_dino_head_fsdp(model_config, in_dim, num_clusters, use_bn=False, normalize_last_layer=True,
                         num_layers=3, hidden_dim=2048, bottleneck_dim=256) -> DINOHead:
    """``dino_head`` as the original's FSDP variant lays it out: with ``normalize_last_layer``,
    ``prototypes0.weight_g`` is a buffer (same key, same value). Sharding is applied from outside."""
    head = DINOHead(in_dim, num_clusters, use_bn, normalize_last_layer, num_layers, hidden_dim, bottleneck_dim)
    if normalize_last_layer:
        _as_buffer_weight_g(head.prototypes0)
    return head
