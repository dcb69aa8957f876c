"""``identity`` head: returns the trunk feature unchanged."""

from __future__ import annotations

from typing import Mapping

from torch import nn

from ..registry import register_model_head


@register_model_head("identity")
def build_identity(model_config: Mapping) -> nn.Module:
    """``identity``: no options; returns its input unchanged (``nn.Identity``)."""
    return nn.Identity()
