"""``swav_head``: projection MLP, L2 normalisation, then one or more prototype layers."""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..layers.weight_norm import weight_norm_prototypes
from ..registry import register_model_head
from .common import HeadCommon, ModelConfig, dims, read_head_options, widths

ACTIVATIONS = {"ReLU": lambda: nn.ReLU(inplace=True), "GELU": nn.GELU}

SWAV_OPTIONS = (
    ("dims", dims),
    ("use_bn", opt.as_bool),
    ("num_clusters", widths),
    ("use_bias", opt.as_bool),
    ("return_embeddings", opt.as_bool),
    ("skip_last_bn", opt.as_bool),
    ("normalize_feats", opt.as_bool),
    ("activation_name", opt.choice_of(list(ACTIVATIONS))),
    ("use_weight_norm_prototypes", opt.as_bool),
    ("normalize_last_layer", opt.as_bool),
)


@register_model_head("swav_head")
class SwAVPrototypesHead(nn.Module):
    """``swav_head``: projection MLP, L2 normalisation, then one Linear per prototype set.

    Options:
        dims (list of int): projection widths, input first.
        use_bn (bool): BatchNorm1d after each hidden Linear.
        num_clusters (int or list of int): one prototypes layer per entry (may be empty).
        use_bias (bool, default true): projection Linears with a bias.
        return_embeddings (bool, default true): the embedding comes first in the output list.
        skip_last_bn (bool, default true): the last projection Linear stays bare.
        normalize_feats (bool, default true): L2-normalise the embedding.
        activation_name ("ReLU" or "GELU", default "ReLU").
        use_weight_norm_prototypes (bool, default false): weight-normalised prototypes.
        normalize_last_layer (bool, default false): with weight norm, ``weight_g`` frozen at 1.

    Returns ``[embedding, prototypes0(embedding), ...]``. Keys: ``projection_head.*`` and
    ``prototypes<i>.weight`` (``weight_g``/``weight_v`` with weight norm), the original's layout.
    """

    def __init__(
        self,
        model_config: ModelConfig,
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
    ) -> None:
        super().__init__()
        common = HeadCommon.of(model_config)
        o = read_head_options("swav_head", dict(
            dims=dims, use_bn=use_bn, num_clusters=num_clusters, use_bias=use_bias,
            return_embeddings=return_embeddings, skip_last_bn=skip_last_bn, normalize_feats=normalize_feats,
            activation_name=activation_name, use_weight_norm_prototypes=use_weight_norm_prototypes,
            normalize_last_layer=normalize_last_layer), SWAV_OPTIONS)
        sizes = o["dims"]
        self.input_width = sizes[0]
        self.normalize_feats = o["normalize_feats"]
        self.return_embeddings = o["return_embeddings"]
        layers: List[nn.Module] = []
        for i in range(1, len(sizes)):
            layers.append(nn.Linear(sizes[i - 1], sizes[i], bias=o["use_bias"]))
            if i == len(sizes) - 1 and o["skip_last_bn"]:
                break
            if o["use_bn"]:
                layers.append(common.batchnorm1d(sizes[i]))
            layers.append(ACTIVATIONS[o["activation_name"]]())
        self.projection_head = nn.Sequential(*layers)
        self.nmb_heads = len(o["num_clusters"])
        for i, k in enumerate(o["num_clusters"]):
            if o["use_weight_norm_prototypes"]:
                proto = weight_norm_prototypes(sizes[-1], k, o["normalize_last_layer"])
            else:
                proto = nn.Linear(sizes[-1], k, bias=False)
            self.add_module(f"prototypes{i}", proto)

    def forward(self, batch: torch.Tensor) -> List[torch.Tensor]:
        x = self.projection_head(batch)
        if self.normalize_feats:
            x = F.normalize(x, dim=1, p=2)
        out = [x] if self.return_embeddings else []
        for i in range(self.nmb_heads):
            out.append(getattr(self, f"prototypes{i}")(x))
        return out


register_model_head("swav_head_fsdp")(SwAVPrototypesHead)
