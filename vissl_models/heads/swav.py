"""``swav_head``: projection MLP, L2 normalisation, then one or more prototype layers."""

from __future__ import annotations

from typing import List, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..layers.weight_norm import weight_norm_prototypes
from ..registry import register_model_head
from .common import HeadCommon, check_dims

ACTIVATIONS = {"ReLU": lambda: nn.ReLU(inplace=True), "GELU": nn.GELU}


class SwAVPrototypesHead(nn.Module):
    """Returns ``[embedding, prototypes0(embedding), ...]`` (embedding only if ``return_embeddings``).

    Keys: ``projection_head.*`` and ``prototypes<i>.weight`` (``weight_g``/``weight_v`` with
    ``use_weight_norm_prototypes``), as in the original.
    """

    def __init__(
        self,
        dims: Sequence[int],
        use_bn: bool,
        num_clusters: Union[int, Sequence[int]],
        use_bias: bool = True,
        return_embeddings: bool = True,
        skip_last_bn: bool = True,
        normalize_feats: bool = True,
        activation_name: str = "ReLU",
        use_weight_norm_prototypes: bool = False,
        normalize_last_layer: bool = False,
        common: HeadCommon = HeadCommon(),
    ) -> None:
        super().__init__()
        dims = check_dims("swav_head", dims)
        opt.choice("head 'swav_head' option 'activation_name'", activation_name, list(ACTIVATIONS))
        if isinstance(num_clusters, int):
            num_clusters = [num_clusters]
        num_clusters = opt.as_int_list("head 'swav_head' option 'num_clusters'", num_clusters, min_len=0)
        self.normalize_feats = normalize_feats
        self.return_embeddings = return_embeddings
        layers: List[nn.Module] = []
        for i in range(1, len(dims)):
            layers.append(nn.Linear(dims[i - 1], dims[i], bias=use_bias))
            if i == len(dims) - 1 and skip_last_bn:
                break
            if use_bn:
                layers.append(common.batchnorm1d(dims[i]))
            layers.append(ACTIVATIONS[activation_name]())
        self.projection_head = nn.Sequential(*layers)
        self.nmb_heads = len(num_clusters)
        for i, k in enumerate(num_clusters):
            if use_weight_norm_prototypes:
                proto = weight_norm_prototypes(dims[-1], k, normalize_last_layer)
            else:
                proto = nn.Linear(dims[-1], k, bias=False)
            self.add_module(f"prototypes{i}", proto)

    def forward(self, batch: torch.Tensor) -> List[torch.Tensor]:
        x = self.projection_head(batch)
        if self.normalize_feats:
            x = F.normalize(x, dim=1, p=2)
        out = [x] if self.return_embeddings else []
        for i in range(self.nmb_heads):
            out.append(getattr(self, f"prototypes{i}")(x))
        return out


@register_model_head("swav_head")
def build_swav_head(model_config: Mapping, dims, use_bn, num_clusters, use_bias=True, return_embeddings=True,
                    skip_last_bn=True, normalize_feats=True, activation_name="ReLU",
                    use_weight_norm_prototypes=False, normalize_last_layer=False) -> SwAVPrototypesHead:
    return SwAVPrototypesHead(
        dims, use_bn, num_clusters, use_bias, return_embeddings, skip_last_bn, normalize_feats,
        activation_name, use_weight_norm_prototypes, normalize_last_layer, HeadCommon.from_config(model_config),
    )


register_model_head("swav_head_fsdp")(build_swav_head)
