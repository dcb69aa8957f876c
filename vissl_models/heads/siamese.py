"""``siamese_concat_view``: (N * towers) x C -> N x (towers * C), for PIRL and Jigsaw."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..config import options as opt
from ..registry import register_model_head


class SiameseConcatView(nn.Module):
    """Concatenate the features of ``num_towers`` consecutive samples."""

    def __init__(self, num_towers: int) -> None:
        super().__init__()
        self.num_towers = opt.as_int("head 'siamese_concat_view' option 'num_towers'", num_towers, minimum=1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        if n % self.num_towers != 0:
            raise ValueError(f"siamese_concat_view: batch of {n} is not divisible by num_towers={self.num_towers}")
        return batch.reshape(n // self.num_towers, -1)


@register_model_head("siamese_concat_view")
def build_siamese_concat_view(model_config: Mapping, num_towers: int) -> SiameseConcatView:
    return SiameseConcatView(num_towers)
