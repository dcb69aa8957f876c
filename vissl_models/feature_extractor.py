"""Linear-evaluation trunk: a frozen trunk plus one pooling op per requested feature."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .layers import Identity
from .model_helpers import FeatureEvalSettings

POOL_OPS = {
    "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d,
    "AdaptiveMaxPool2d": nn.AdaptiveMaxPool2d,
    "AvgPool2d": nn.AvgPool2d,
    "MaxPool2d": nn.MaxPool2d,
    "Identity": Identity,
}


class FeatureExtractorModel(nn.Module):
    """``base_model`` (a built trunk, frozen here and always in eval mode) and one pooling op per
    feature of ``settings.pool_ops`` (``MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP``).

    Keys are ``base_model.*`` and ``feature_pool_ops.*``, the original's layout.
    """

    def __init__(self, trunk: nn.Module, settings: FeatureEvalSettings) -> None:
        super().__init__()
        if not isinstance(trunk, nn.Module):
            raise TypeError(f"FeatureExtractorModel takes a built trunk module, got {type(trunk).__name__}")
        self.base_model = trunk
        self.feature_pool_ops = nn.ModuleList(POOL_OPS[op](*args) for _, op, args in settings.pool_ops)
        self.should_flatten_feats = settings.should_flatten_feats
        for p in self.base_model.parameters():
            p.requires_grad = False
        self.base_model.eval()

    def forward(self, batch: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None, **kwargs) -> List[torch.Tensor]:
        feats = self.base_model(batch, out_feat_keys, **kwargs)
        if len(feats) != len(self.feature_pool_ops):
            raise ValueError(
                f"the trunk returned {len(feats)} features but {len(self.feature_pool_ops)} pooling ops "
                "are configured (MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP)"
            )
        out = []
        for feat, op in zip(feats, self.feature_pool_ops):
            feat = op(feat)
            if self.should_flatten_feats:
                feat = torch.flatten(feat, start_dim=1)
            out.append(feat)
        return out

    def train(self, mode: bool = True) -> "FeatureExtractorModel":
        super().train(mode)
        self.base_model.eval()  # frozen features: BN statistics and dropout stay in eval mode
        return self
