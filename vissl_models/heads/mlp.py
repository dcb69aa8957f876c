"""MLP heads: ``mlp``, ``mlp_res`` and the linear-evaluation head ``eval_mlp`` (and their ``_fsdp`` names)."""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import nn

from ..config import options as opt
from ..registry import register_model_head
from .common import HeadCommon, ModelConfig, dims, read_head_options, single_tensor


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


MLP_OPTIONS = (
    ("dims", dims),
    ("use_bn", opt.as_bool),
    ("use_relu", opt.as_bool),
    ("use_dropout", opt.as_bool),
    ("use_bias", opt.as_bool),
    ("skip_last_layer_relu_bn", opt.as_bool),
)


@register_model_head("mlp")
class MLP(nn.Module):
    """``mlp``: Linear layers, each optionally followed by BatchNorm1d, ReLU and Dropout.

    Options:
        dims (list of int): widths, input first: ``[2048, 128]`` is one Linear(2048, 128).
        use_bn, use_relu, use_dropout (bool, default false): add BatchNorm1d / ReLU / Dropout(0.5)
            after each Linear.
        use_bias (bool, default true): Linear layers with a bias.
        skip_last_layer_relu_bn (bool, default true): the last Linear stays bare.

    ``MODEL.HEAD`` gives the batch-norm eps/momentum and ``PARAMS_MULTIPLIER`` (initial Linear
    weights scaled by it). Takes N x C or N x C x 1 x 1 (or a list of one such tensor). Layers
    live in ``clf`` (keys ``clf.0.weight``, ...), the original's layout.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        dims: Sequence[int],
        use_bn: bool = False,
        use_relu: bool = False,
        use_dropout: bool = False,
        use_bias: bool = True,
        skip_last_layer_relu_bn: bool = True,
    ) -> None:
        super().__init__()
        common = HeadCommon.of(model_config)
        o = read_head_options("mlp", dict(
            dims=dims, use_bn=use_bn, use_relu=use_relu, use_dropout=use_dropout, use_bias=use_bias,
            skip_last_layer_relu_bn=skip_last_layer_relu_bn), MLP_OPTIONS)
        widths = o["dims"]
        self.input_width = widths[0]
        layers: List[nn.Module] = []
        for i in range(1, len(widths)):
            keep = not (i == len(widths) - 1 and o["skip_last_layer_relu_bn"])
            layers += linear_layers(widths[i - 1], widths[i], o["use_bias"], o["use_bn"] and keep,
                                    o["use_relu"] and keep, o["use_dropout"] and keep, common)
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


@register_model_head("mlp_res")
class MLPResidual(nn.Module):
    """``mlp_res``: the ``mlp`` head with skip connections where widths allow.

    Options: as ``mlp`` (dims, use_bn, use_relu, use_dropout, use_bias, skip_last_layer_relu_bn).

    A same-width layer adds its input twice (once in its block, once here): ``2x + f(x)``, which
    is what the original computes; kept so checkpoints trained with it give the same outputs.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        dims: Sequence[int],
        use_bn: bool = False,
        use_relu: bool = False,
        use_dropout: bool = False,
        use_bias: bool = True,
        skip_last_layer_relu_bn: bool = True,
    ) -> None:
        super().__init__()
        common = HeadCommon.of(model_config)
        o = read_head_options("mlp_res", dict(
            dims=dims, use_bn=use_bn, use_relu=use_relu, use_dropout=use_dropout, use_bias=use_bias,
            skip_last_layer_relu_bn=skip_last_layer_relu_bn), MLP_OPTIONS)
        widths = o["dims"]
        self.input_width = widths[0]
        blocks = []
        for i in range(1, len(widths)):
            keep = not (i == len(widths) - 1 and o["skip_last_layer_relu_bn"])
            blocks.append(MLPResidualBlock(widths[i - 1], widths[i], o["use_bias"], o["use_bn"] and keep,
                                           o["use_relu"] and keep, o["use_dropout"] and keep, common))
        self.clf = nn.Sequential(*blocks)
        common.scale_linear_weights(self)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = _as_2d("mlp_res", batch)
        for block in self.clf:
            delta = block(x)
            x = delta + x if delta.shape == x.shape else delta
        return x


@register_model_head("eval_mlp")
class LinearEvalMLP(nn.Module):
    """``eval_mlp``: BatchNorm2d over the feature's channels, flatten, then an MLP (``clf``).

    Options:
        in_channels (int): channels of the incoming feature (the BatchNorm2d width).
        dims (list of int): the MLP's widths, input first (``in_channels`` x H x W flattened).
        use_bn, use_relu (bool, default false): as in ``mlp``.
        use_residual (bool, default false): an ``mlp_res`` instead of an ``mlp``.

    Takes N x C x H x W (or N x C).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        in_channels: int,
        dims: Sequence[int],
        use_bn: bool = False,
        use_relu: bool = False,
        use_residual: bool = False,
    ) -> None:
        super().__init__()
        common = HeadCommon.of(model_config)
        o = read_head_options("eval_mlp", dict(in_channels=in_channels, use_residual=use_residual),
                              (("in_channels", opt.positive_int), ("use_residual", opt.as_bool)))
        self.input_width = o["in_channels"]
        self.channel_bn = common.batchnorm2d(o["in_channels"])
        mlp_cls = MLPResidual if o["use_residual"] else MLP
        self.clf = mlp_cls(common, dims, use_bn=use_bn, use_relu=use_relu)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim == 2:
            batch = batch[:, :, None, None]
        if batch.ndim != 4:
            raise ValueError(f"eval_mlp head expects a 4D (or 2D) tensor, got shape {tuple(batch.shape)}")
        out = torch.flatten(self.channel_bn(batch), start_dim=1)
        return self.clf(out)


# In a single process the FSDP heads are their plain twins; sharding wraps them from outside.
register_model_head("mlp_fsdp")(MLP)
register_model_head("eval_mlp_fsdp")(LinearEvalMLP)
