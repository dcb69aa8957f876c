"""``msn_head``: projection MLP, L2 normalisation, soft assignment to learned prototypes."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.init import init_linear_trunc_normal
from ..registry import register_model_head


def smoothed_one_hot(num_classes: int, smoothing: float) -> torch.Tensor:
    """``(K, K)`` identity with label smoothing: ``1 - s + s/K`` on the diagonal, ``s/K`` elsewhere."""
    off = smoothing / num_classes
    labels = torch.full((num_classes, num_classes), off)
    labels.fill_diagonal_(1.0 - smoothing + off)
    return labels


class MSNHead(nn.Module):
    """MSN head: ``fc`` (fc1, [bn1], gelu1, fc2, [bn2], gelu2, fc3), L2 normalisation, then
    ``softmax(query @ normalize(prototypes).T / temperature) @ proto_labels``.

    With ``return_query`` it returns the normalised projection instead (representation eval).
    Keys: ``fc.fc1.*``, ``fc.bn1.*``, ..., ``prototypes``; ``proto_labels`` is a non-persistent
    buffer. ``freeze_prototypes`` makes the prototypes non-trainable.
    """

    def __init__(
        self,
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
        if temperature <= 0:
            raise ValueError(f"head 'msn_head' option 'temperature': got {temperature}, expected > 0")
        self.temperature = temperature
        self.return_query = return_query
        fc = OrderedDict()
        fc["fc1"] = nn.Linear(in_dim, hidden_dim)
        if use_bn:
            fc["bn1"] = nn.BatchNorm1d(hidden_dim)
        fc["gelu1"] = nn.GELU()
        fc["fc2"] = nn.Linear(hidden_dim, hidden_dim)
        if use_bn:
            fc["bn2"] = nn.BatchNorm1d(hidden_dim)
        fc["gelu2"] = nn.GELU()
        fc["fc3"] = nn.Linear(hidden_dim, output_dim)
        self.fc = nn.Sequential(fc)
        self.apply(init_linear_trunc_normal)
        bound = (1.0 / output_dim) ** 0.5
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, output_dim).uniform_(-bound, bound))
        # The original builds this flag but never applies it to the parameter; here it is honoured.
        self.prototypes.requires_grad = not freeze_prototypes
        self.register_buffer("proto_labels", smoothed_one_hot(num_prototypes, label_smoothing), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = F.normalize(self.fc(x), dim=-1, p=2)
        if self.return_query:
            return query
        supports = F.normalize(self.prototypes, dim=1)
        return torch.softmax(query @ supports.T / self.temperature, dim=1) @ self.proto_labels


@register_model_head("msn_head")
def build_msn_head(model_config, in_dim, num_prototypes, use_bn=False, hidden_dim=2048, output_dim=256,
                   freeze_prototypes=False, label_smoothing=0.0, temperature=0.1, return_query=False) -> MSNHead:
    return MSNHead(in_dim, num_prototypes, use_bn, hidden_dim, output_dim, freeze_prototypes, label_smoothing,
                   temperature, return_query)
