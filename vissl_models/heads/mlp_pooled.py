"""``eval_mlp_pooled``: one linear-evaluation classifier applied to every token of a sequence."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ..config import options as opt
from ..registry import register_model_head
from .common import HeadCommon, ModelConfig, read_head_options
from .mlp import MLP


class EnsembleOutput(NamedTuple):
    """Predictions of an ensemble, ``ensemble_size x batch x classes`` (the original's type).

    A named tuple, so code that walks outputs as nested lists/tuples still finds the tensor.
    """

    outputs: torch.Tensor

    def cpu(self) -> "EnsembleOutput":
        return EnsembleOutput(self.outputs.cpu())


@register_model_head("eval_mlp_pooled")
class LinearEvalPooledMLP(nn.Module):
    """``eval_mlp_pooled``: BatchNorm over the embedding of each token, then the same MLP on
    every token.

    Options:
        in_channels (int): token embedding width E.
        dims (list of int): the MLP's widths, E first.
        use_bn, use_relu (bool, default false): as in ``mlp``.

    Input ``N x S x E`` (batch, tokens, embedding with ``E == in_channels``); output
    ``EnsembleOutput(S x N x dims[-1])``: each token's prediction is one ensemble member.
    Keys: ``channel_bn.*`` and ``clf.<i>.*`` (Linear/BatchNorm1d/ReLU as in ``mlp``), as in the
    original. Unlike the ``mlp`` head, ``MODEL.HEAD.PARAMS_MULTIPLIER`` is not applied (the
    original did not apply it here). The optional BatchNorm1d layers normalise each feature
    over all tokens and samples; the original applied them to the ``S x N x E`` tensor as is,
    which fails unless ``N`` equals the width.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        in_channels: int,
        dims: Sequence[int],
        use_bn: bool = False,
        use_relu: bool = False,
    ) -> None:
        super().__init__()
        common = HeadCommon.of(model_config)
        o = read_head_options("eval_mlp_pooled", {"in_channels": in_channels}, (("in_channels", opt.positive_int),))
        self.in_channels = self.input_width = o["in_channels"]
        self.channel_bn = common.batchnorm2d(self.in_channels)
        mlp = MLP(dataclasses.replace(common, params_multiplier=1.0), dims, use_bn=use_bn, use_relu=use_relu)
        self.clf = mlp.clf

    def forward(self, batch: torch.Tensor) -> EnsembleOutput:
        if batch.ndim != 3 or batch.shape[2] != self.in_channels:
            raise ValueError(
                f"eval_mlp_pooled expects a (batch, seq, {self.in_channels}) tensor, got {tuple(batch.shape)}"
            )
        n, s, e = batch.shape
        # BatchNorm2d over the embedding: (N, S, E) -> (N, E, S, 1).
        x = self.channel_bn(batch.permute(0, 2, 1).unsqueeze(3))
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # (S, N, E)
        out = self.clf(x.reshape(s * n, e))
        return EnsembleOutput(out.reshape(s, n, out.shape[-1]))
