"""MLP heads: ``mlp``, ``mlp_res`` and the linear-evaluation head ``eval_mlp``."""

from __future__ import annotations

from typing import List, Mapping, Sequence, Union

import torch
from torch import nn

from ..registry import register_model_head
from .common import HeadCommon, check_dims, single_tensor


def _as_2d(head: str, batch: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """Accept N x C, N x C x 1 x 1, or a one-element list of those."""
    batch = single_tensor(f"{head} head", batch)
    if batch.ndim > 2:
        if any(d != 1 for d in batch.shape[2:]):
            raise ValueError(f"{head} head expects N x C or N x C x 1 x 1 input, got {tuple(batch.shape)}")
        batch = batch.reshape(batch.shape[0], batch.shape[1])
    return batch


def linear_layers(
    in_dim: int, out_dim: int, use_bias: bool, use_bn: bool, use_relu: bool, use_dropout: bool, common: HeadCommon
) -> List[nn.Module]:
    """Linear, then optionally BatchNorm1d, ReLU and Dropout: one layer of the MLP heads."""
    layers: List[nn.Module] = [nn.Linear(in_dim, out_dim, bias=use_bias)]
    if use_bn:
        layers.append(common.batchnorm1d(out_dim))
    if use_relu:
        layers.append(nn.ReLU(inplace=True))
    if use_dropout:
        layers.append(nn.Dropout())
    return layers


class MLP(nn.Module):
    """Linear layers, each optionally followed by BatchNorm1d, ReLU and Dropout.

    ``skip_last_layer_relu_bn`` leaves the last Linear bare. Layers live in ``clf`` (keys
    ``clf.0.weight``, ...), as in the original.
    """

    def __init__(
        self,
        dims: Sequence[int],
        use_bn: bool = False,
        use_relu: bool = False,
        use_dropout: bool = False,
        use_bias: bool = True,
        skip_last_layer_relu_bn: bool = True,
        common: HeadCommon = HeadCommon(),
    ) -> None:
        super().__init__()
        dims = check_dims("mlp", dims)
        layers: List[nn.Module] = []
        for i in range(1, len(dims)):
            keep = not (i == len(dims) - 1 and skip_last_layer_relu_bn)
            layers += linear_layers(
                dims[i - 1], dims[i], use_bias, use_bn and keep, use_relu and keep, use_dropout and keep, common
            )
        self.clf = nn.Sequential(*layers)
        common.scale_linear_weights(self)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.clf(_as_2d("mlp", batch))


class MLPResidualBlock(nn.Module):
    """Linear (+ BN, ReLU, Dropout); adds its input back when the width does not change."""

    def __init__(self, input_dim, output_dim, use_bias, use_bn, use_relu, use_dropout, common: HeadCommon) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.mlp_res_block = nn.Sequential(
            *linear_layers(input_dim, output_dim, use_bias, use_bn, use_relu, use_dropout, common)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_dim == self.output_dim:
            return x + self.mlp_res_block(x)
        return self.mlp_res_block(x)


class MLPResidual(nn.Module):
    """MLP with skip connections where widths allow.

    As in the original, a same-width layer adds its input twice (once in the block, once
    here): ``2x + f(x)``. Kept so that checkpoints trained with it give the same outputs.
    """

    def __init__(
        self,
        dims: Sequence[int],
        use_bn: bool = False,
        use_relu: bool = False,
        use_dropout: bool = False,
        use_bias: bool = True,
        skip_last_layer_relu_bn: bool = True,
        common: HeadCommon = HeadCommon(),
    ) -> None:
        super().__init__()
        dims = check_dims("mlp_res", dims)
        blocks = []
        for i in range(1, len(dims)):
            keep = not (i == len(dims) - 1 and skip_last_layer_relu_bn)
            blocks.append(
                MLPResidualBlock(
                    dims[i - 1], dims[i], use_bias, use_bn and keep, use_relu and keep, use_dropout and keep, common
                )
            )
        self.clf = nn.Sequential(*blocks)
        common.scale_linear_weights(self)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = _as_2d("mlp_res", batch)
        for block in self.clf:
            delta = block(x)
            x = delta + x if delta.shape == x.shape else delta
        return x


class LinearEvalMLP(nn.Module):
    """``eval_mlp``: BatchNorm2d over the feature's channels, flatten, then an MLP (``clf``)."""

    def __init__(
        self,
        in_channels: int,
        dims: Sequence[int],
        use_bn: bool = False,
        use_relu: bool = False,
        use_residual: bool = False,
        common: HeadCommon = HeadCommon(),
    ) -> None:
        super().__init__()
        self.channel_bn = common.batchnorm2d(in_channels)
        mlp_cls = MLPResidual if use_residual else MLP
        self.clf = mlp_cls(dims, use_bn=use_bn, use_relu=use_relu, common=common)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim == 2:
            batch = batch[:, :, None, None]
        if batch.ndim != 4:
            raise ValueError(f"eval_mlp head expects a 4D (or 2D) tensor, got shape {tuple(batch.shape)}")
        out = torch.flatten(self.channel_bn(batch), start_dim=1)
        return self.clf(out)


@register_model_head("mlp")
def build_mlp(model_config: Mapping, dims, use_bn=False, use_relu=False, use_dropout=False,
              use_bias=True, skip_last_layer_relu_bn=True) -> MLP:
    return MLP(dims, use_bn, use_relu, use_dropout, use_bias, skip_last_layer_relu_bn,
               HeadCommon.from_config(model_config))


@register_model_head("mlp_res")
def build_mlp_res(model_config: Mapping, dims, use_bn=False, use_relu=False, use_dropout=False,
                  use_bias=True, skip_last_layer_relu_bn=True) -> MLPResidual:
    return MLPResidual(dims, use_bn, use_relu, use_dropout, use_bias, skip_last_layer_relu_bn,
                       HeadCommon.from_config(model_config))


@register_model_head("eval_mlp")
def build_eval_mlp(model_config: Mapping, in_channels, dims, use_bn=False, use_relu=False,
                   use_residual=False) -> LinearEvalMLP:
    return LinearEvalMLP(in_channels, dims, use_bn, use_relu, use_residual, HeadCommon.from_config(model_config))


# In a single process the FSDP heads are their plain twins; sharding wraps them from outside.
register_model_head("mlp_fsdp")(build_mlp)
register_model_head("eval_mlp_fsdp")(build_eval_mlp)
