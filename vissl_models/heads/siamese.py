"""``siamese_concat_view``: (N * towers) x C -> N x (towers * C), for PIRL and Jigsaw."""

from __future__ import annotations

import torch
from torch import nn

from ..config import options as opt
from ..registry import register_model_head
from .common import ModelConfig, read_head_options


@register_model_head("siamese_concat_view")
class SiameseConcatView(nn.Module):
    """``siamese_concat_view``: concatenate the features of ``num_towers`` consecutive samples.

    Options:
        num_towers (int): samples per group; takes (N * num_towers) x C, returns N x (num_towers * C).
    """

    def __init__(self, model_config: ModelConfig, num_towers: int) -> None:
        super().__init__()
        o = read_head_options("siamese_concat_view", {"num_towers": num_towers},
                              (("num_towers", opt.positive_int),))
        self.num_towers = o["num_towers"]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        if n % self.num_towers != 0:
            raise ValueError(f"siamese_concat_view: batch of {n} is not divisible by num_towers={self.num_towers}")
        return batch.reshape(n // self.num_towers, -1)
