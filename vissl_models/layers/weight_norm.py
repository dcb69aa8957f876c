"""Weight-normalised linear layer with the old ``weight_g``/``weight_v`` parameter names.

VISSL checkpoints (SwAV, DINO, iBOT, MSN heads) store ``nn.utils.weight_norm`` layers under those
names; PyTorch's newer parametrization would name them differently, so this layer keeps them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """``y = x @ (g * v / ||v||).T + b``, the norm taken per output row (``dim=0``).

    The weight comes from PyTorch's fused weight-norm kernel (``torch._weight_norm``, the one
    ``nn.utils.weight_norm`` runs, hence the original's numbers): one pass over ``v`` forward and
    one backward instead of separate norm, divide and multiply ops with their saved tensors.

    ``weight_g`` may be a parameter or (``dino_head_fsdp``) a buffer. It is cast to ``weight_v``'s
    dtype because FSDP2 mixed precision casts parameters to the compute dtype but leaves buffers
    as they are; the cast is free when the dtypes already agree.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        self.weight_g = nn.Parameter(v.norm(dim=1, keepdim=True))
        self.weight_v = nn.Parameter(v)
        if bias:
            bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    @property
    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return torch._weight_norm(v, self.weight_g.to(v.dtype), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def weight_norm_prototypes(in_dim: int, out_dim: int, normalize_last_layer: bool) -> WeightNormLinear:
    """Bias-free prototypes layer with ``weight_g`` set to 1 (frozen with ``normalize_last_layer``)."""
    proto = WeightNormLinear(in_dim, out_dim, bias=False)
    with torch.no_grad():
        proto.weight_g.fill_(1)
    proto.weight_g.requires_grad = not normalize_last_layer
    return proto
