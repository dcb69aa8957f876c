"""Options every head reads from ``MODEL.HEAD``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from ..config import options as opt


@dataclass(frozen=True)
class HeadCommon:
    """``MODEL.HEAD.BATCHNORM_EPS``, ``BATCHNORM_MOMENTUM`` and ``PARAMS_MULTIPLIER``."""

    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    params_multiplier: float = 1.0

    @classmethod
    def from_config(cls, model_config: Mapping) -> "HeadCommon":
        head = model_config["HEAD"]
        return cls(
            bn_eps=opt.as_float("MODEL.HEAD.BATCHNORM_EPS", head["BATCHNORM_EPS"], minimum=0.0),
            bn_momentum=opt.as_float("MODEL.HEAD.BATCHNORM_MOMENTUM", head["BATCHNORM_MOMENTUM"], minimum=0.0),
            params_multiplier=opt.as_float("MODEL.HEAD.PARAMS_MULTIPLIER", head["PARAMS_MULTIPLIER"]),
        )

    def batchnorm1d(self, dim: int) -> nn.BatchNorm1d:
        return nn.BatchNorm1d(dim, eps=self.bn_eps, momentum=self.bn_momentum)

    def batchnorm2d(self, dim: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(dim, eps=self.bn_eps, momentum=self.bn_momentum)

    def scale_linear_weights(self, module: nn.Module) -> None:
        """Multiply every Linear weight and bias by ``params_multiplier`` (the original's init)."""
        if self.params_multiplier == 1.0:
            return
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.weight.data.mul_(self.params_multiplier)
                if m.bias is not None:
                    m.bias.data.mul_(self.params_multiplier)


def check_dims(head: str, dims, min_len: int = 2) -> list:
    """``dims`` as a list of ints, with at least ``min_len`` entries."""
    return opt.as_int_list(f"head {head!r} option 'dims'", dims, min_len=min_len)


def single_tensor(what: str, batch: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """``batch``, or its only element when it is a list/tuple; ``what`` names the head in the error."""
    if isinstance(batch, (list, tuple)):
        if len(batch) != 1:
            raise ValueError(f"{what} takes a tensor or a list of one tensor, got a list of {len(batch)}")
        batch = batch[0]
    return batch
