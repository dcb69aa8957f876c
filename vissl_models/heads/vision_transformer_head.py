"""``vision_transformer_head``: ViT classifier, one Linear or pre-logits Linear + Tanh + Linear."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import options as opt
from ..layers import lecun_normal_init, trunc_normal_
from ..registry import register_model_head
from .common import ModelConfig, optional_positive_int, read_head_options

VIT_HEAD_OPTIONS = (
    ("in_plane", opt.positive_int),
    ("num_classes", opt.positive_int),
    ("hidden_dim", optional_positive_int),
)


@register_model_head("vision_transformer_head")
class VisionTransformerHead(nn.Module):
    """``vision_transformer_head``: a classifier on the class token.

    Options:
        in_plane (int): token width. num_classes (int): outputs.
        hidden_dim (int or null, default null): with a width, a pre-logits Linear and Tanh come
            first (the ViT paper's pre-training head); without, one Linear (fine-tuning).

    Keys ``layers.pre_logits.*`` and ``layers.head.*``. The pre-logits weight starts LeCun normal,
    the classifier weight truncated normal (std 0.02), biases zero.
    """

    def __init__(self, model_config: ModelConfig, in_plane: int, num_classes: int,
                 hidden_dim: Optional[int] = None) -> None:
        super().__init__()
        o = read_head_options("vision_transformer_head",
                              dict(in_plane=in_plane, num_classes=num_classes, hidden_dim=hidden_dim),
                              VIT_HEAD_OPTIONS)
        width = self.input_width = o["in_plane"]
        self.layers = nn.Sequential()
        if o["hidden_dim"] is not None:
            pre_logits = nn.Linear(width, o["hidden_dim"])
            self.layers.add_module("pre_logits", pre_logits)
            self.layers.add_module("act", nn.Tanh())
            width = o["hidden_dim"]
        classifier = nn.Linear(width, o["num_classes"])
        self.layers.add_module("head", classifier)
        if o["hidden_dim"] is not None:
            lecun_normal_init(pre_logits.weight, fan_in=o["in_plane"])
            nn.init.zeros_(pre_logits.bias)
        trunc_normal_(classifier.weight, std=0.02)
        nn.init.zeros_(classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
