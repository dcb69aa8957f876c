"""``msn_head``: projection MLP, L2 normalisation, soft assignment to learned prototypes."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..layers.init import init_linear_trunc_normal
from ..registry import register_model_head
from .common import ModelConfig, positive_float, read_head_options

MSN_OPTIONS = (
    ("in_dim", opt.positive_int),
    ("num_prototypes", opt.positive_int),
    ("use_bn", opt.as_bool),
    ("hidden_dim", opt.positive_int),
    ("output_dim", opt.positive_int),
    ("freeze_prototypes", opt.as_bool),
    ("label_smoothing", opt.probability),
    ("temperature", positive_float),
    ("return_query", opt.as_bool),
)


def smoothed_one_hot(num_classes: int, smoothing: float) -> torch.Tensor:
    """``(K, K)`` identity with label smoothing: ``1 - s + s/K`` on the diagonal, ``s/K`` elsewhere."""
    off = smoothing / num_classes
    labels = torch.full((num_classes, num_classes), off)
    labels.fill_diagonal_(1.0 - smoothing + off)
    return labels


@register_model_head("msn_head")
class MSNHead(nn.Module):
    """``msn_head``: ``fc`` (fc1, [bn1], gelu1, fc2, [bn2], gelu2, fc3), L2 normalisation, then
    ``softmax(query @ normalize(prototypes).T / temperature) @ proto_labels``.

    Options:
        in_dim (int), num_prototypes (int).
        use_bn (bool, default false): BatchNorm1d after fc1 and fc2.
        hidden_dim (int, default 2048), output_dim (int, default 256).
        freeze_prototypes (bool, default false), label_smoothing (in [0, 1], default 0).
        temperature (> 0, default 0.1), return_query (bool, default false).

    With ``return_query`` it returns the normalised projection instead (representation eval).
    Keys: ``fc.fc1.*``, ``fc.bn1.*``, ..., ``prototypes``; ``proto_labels`` is a non-persistent
    buffer. ``freeze_prototypes`` makes the prototypes non-trainable.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        in_dim: int,
        num_prototypes: int,
        use_bn: bool = False,
        hidden_dim: int = 2048,
        output_dim: int = 256,
        freeze_prototypes: bool = False,
        label_smoothing: float = 0.0,
        temperature: float = 0.1,
        return_query: bool = False,
    ) -> None:
        super().__init__()
        o = read_head_options("msn_head", dict(
            in_dim=in_dim, num_prototypes=num_prototypes, use_bn=use_bn, hidden_dim=hidden_dim,
            output_dim=output_dim, freeze_prototypes=freeze_prototypes, label_smoothing=label_smoothing,
            temperature=temperature, return_query=return_query), MSN_OPTIONS)
        self.input_width = o["in_dim"]
        self.temperature = o["temperature"]
        self.return_query = o["return_query"]
        num_prototypes, hidden_dim, output_dim = o["num_prototypes"], o["hidden_dim"], o["output_dim"]
        fc = OrderedDict()
        fc["fc1"] = nn.Linear(o["in_dim"], hidden_dim)
        if o["use_bn"]:
            fc["bn1"] = nn.BatchNorm1d(hidden_dim)
        fc["gelu1"] = nn.GELU()
        fc["fc2"] = nn.Linear(hidden_dim, hidden_dim)
        if o["use_bn"]:
            fc["bn2"] = nn.BatchNorm1d(hidden_dim)
        fc["gelu2"] = nn.GELU()
        fc["fc3"] = nn.Linear(hidden_dim, output_dim)
        self.fc = nn.Sequential(fc)
        self.apply(init_linear_trunc_normal)
        bound = (1.0 / output_dim) ** 0.5
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, output_dim).uniform_(-bound, bound))
        # The original builds this flag but never applies it to the parameter; here it is honoured.
        self.prototypes.requires_grad = not o["freeze_prototypes"]
        self.register_buffer("proto_labels", smoothed_one_hot(num_prototypes, o["label_smoothing"]),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = F.normalize(self.fc(x), dim=-1, p=2)
        if self.return_query:
            return query
        supports = F.normalize(self.prototypes, dim=1)
        # Mixed precision (autocast, FSDP2) casts parameters but not buffers: follow the query's dtype.
        return torch.softmax(query @ supports.T / self.temperature, dim=1) @ self.proto_labels.to(query.dtype)
