"""Small modules the original's configs and trunks refer to by name."""

from __future__ import annotations

import torch
from torch import nn


class Flatten(nn.Module):
    """``torch.flatten(x, start_dim=dim)`` as a module."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, start_dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Identity(nn.Module):
    """Returns its input; accepts (and ignores) one constructor argument, as configs pass one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, x):
        return x


INPUT_TYPES = ("rgb", "bgr", "lab")


def input_channels(input_type: str) -> int:
    """Channels a trunk's stem takes for ``MODEL.INPUT_TYPE`` (``lab`` uses only L)."""
    return 1 if input_type == "lab" else 3


def transform_input_type(x: torch.Tensor, input_type: str) -> torch.Tensor:
    """Turn an RGB batch into what the trunk expects: ``bgr`` flips channels, ``lab`` keeps L."""
    if input_type == "bgr":
        return x.flip(1)
    if input_type == "lab":
        return x[:, :1]
    return x


def model_output_has_nan(output) -> bool:
    """Whether a model output (tensor, or nested lists/tuples/dicts of them) has a NaN or inf."""
    if isinstance(output, torch.Tensor):
        return not bool(torch.isfinite(output).all())
    if isinstance(output, dict):
        return any(model_output_has_nan(v) for v in output.values())
    if isinstance(output, (list, tuple)):
        return any(model_output_has_nan(v) for v in output)
    return False
