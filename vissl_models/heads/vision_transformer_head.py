"""``vision_transformer_head``: ViT classifier, one Linear or pre-logits Linear + Tanh + Linear."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from ..layers import lecun_normal_init, trunc_normal_
from ..registry import register_model_head


class VisionTransformerHead(nn.Module):
    """``layers.head`` alone (fine-tuning), or ``layers.pre_logits`` -> Tanh -> ``layers.head``
    when ``hidden_dim`` is given (pre-training, as in the ViT paper).

    Init: pre-logits LeCun normal, head truncated normal (std 0.02), biases zero.
    """

    def __init__(self, in_plane: int, num_classes: int, hidden_dim: Optional[int] = None) -> None:
        super().__init__()
        if hidden_dim is None:
            layers = [("head", nn.Linear(in_plane, num_classes))]
        else:
            layers = [
                ("pre_logits", nn.Linear(in_plane, hidden_dim)),
                ("act", nn.Tanh()),
                ("head", nn.Linear(hidden_dim, num_classes)),
            ]
        self.layers = nn.Sequential(OrderedDict(layers))
        if hidden_dim is not None:
            lecun_normal_init(self.layers.pre_logits.weight, fan_in=in_plane)
            nn.init.zeros_(self.layers.pre_logits.bias)
        trunc_normal_(self.layers.head.weight, std=0.02)
        nn.init.zeros_(self.layers.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_model_head("vision_transformer_head")
def build_vision_transformer_head(model_config, in_plane, num_classes, hidden_dim=None) -> VisionTransformerHead:
    return VisionTransformerHead(in_plane, num_classes, hidden_dim)
