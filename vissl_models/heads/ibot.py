"""iBOT heads: ``ibot_head`` (weight-normalised prototypes) and ``ibot_distillation_head``.

Both take the class token alone (local views, ``(B, C)``: one output) or every token (global
views, ``(B, 1 + N, C)``: ``[class output, patch outputs]``).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..layers.init import init_linear_trunc_normal
from ..layers.weight_norm import weight_norm_prototypes
from ..registry import register_model_head
from .common import ModelConfig, read_head_options

NORMS = (None, "bn", "syncbn", "ln")
ACTS = ("relu", "gelu")
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def apply_token_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``norm``; a batch norm on ``(B, N, C)`` tokens normalises over C (moved to dim 1 and back)."""
    if isinstance(norm, _BN_TYPES) and x.ndim > 2:
        return norm(x.movedim(-1, 1)).movedim(1, -1)
    return norm(x)


class TokenSequential(nn.Sequential):
    """``nn.Sequential`` whose batch norms accept token tensors (see ``apply_token_norm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self:
            x = apply_token_norm(module, x)
        return x


def build_norm(head: str, norm: Optional[str], dim: int, **kwargs) -> Optional[nn.Module]:
    """``bn`` / ``syncbn`` / ``ln`` / None, with extra constructor ``kwargs``.

    ``affine`` is passed to ``ln`` as ``elementwise_affine`` (the original raised a TypeError there).
    """
    opt.choice(f"head {head!r} norm", norm, NORMS)
    if norm == "bn":
        return nn.BatchNorm1d(dim, **kwargs)
    if norm == "syncbn":
        return nn.SyncBatchNorm(dim, **kwargs)
    if norm == "ln":
        if "affine" in kwargs:
            kwargs["elementwise_affine"] = kwargs.pop("affine")
        return nn.LayerNorm(dim, **kwargs)
    return None


def build_act(head: str, act: str) -> nn.Module:
    return nn.ReLU() if act == "relu" else nn.GELU()


def _optional_norm(key: str, value) -> Optional[str]:
    return opt.choice(key, value, NORMS)


def _non_negative_int(key: str, value) -> int:
    return opt.as_int(key, value, minimum=0)


def ibot_options(head: str, min_layers: int, with_prototypes: bool):
    """The declarative option list of the two iBOT heads (``with_prototypes``: ``ibot_head``)."""
    fields = [
        ("in_dim", opt.positive_int),
        ("out_dim", opt.positive_int),
        ("patch_out_dim", _non_negative_int),
        ("norm", _optional_norm),
        ("act", opt.choice_of(ACTS)),
        ("last_norm", _optional_norm),
        ("num_layers", lambda key, value: opt.as_int(key, value, minimum=min_layers)),
        ("hidden_dim", opt.positive_int),
        ("shared_head", opt.as_bool),
    ]
    if with_prototypes:
        fields += [("normalize_last_layer", opt.as_bool), ("bottleneck_dim", opt.positive_int)]
    return tuple(fields)


def _hidden_layers(head: str, in_dim: int, hidden_dim: int, count: int, norm: Optional[str], act: str) -> List[nn.Module]:
    """``count`` times Linear, [norm], activation (options checked even for ``count == 0``).

    The original reuses one norm and one activation instance at every depth (so a BN's keys
    appear under each position); kept for checkpoint compatibility.
    """
    norm_module = build_norm(head, norm, hidden_dim)
    act_module = build_act(head, act)
    layers: List[nn.Module] = []
    width = in_dim
    for _ in range(count):
        layers.append(nn.Linear(width, hidden_dim))
        if norm_module is not None:
            layers.append(norm_module)
        layers.append(act_module)
        width = hidden_dim
    return layers


class _IBOTHeadBase(nn.Module):
    """What both iBOT heads share: the optional non-affine ``last_norm`` / ``last_norm2`` (one
    module with ``shared_head``), and the split of the output into class and patch tokens."""

    head_name = ""

    def _build_last_norms(
        self, last_norm: Optional[str], out_dim: int, patch_out_dim: int, shared_head: bool, norm_kwargs
    ) -> None:
        self.last_norm = build_norm(self.head_name, last_norm, out_dim, affine=False, **norm_kwargs)
        if shared_head:
            self.last_norm2 = self.last_norm
        else:
            self.last_norm2 = build_norm(self.head_name, last_norm, patch_out_dim, affine=False, **norm_kwargs)

    def _outputs(self, x: torch.Tensor, to_class: nn.Module, to_patch: nn.Module) -> List[torch.Tensor]:
        """``[to_class(x)]`` for class tokens ``(B, C)``; ``[to_class(x[:, 0]), to_patch(x[:, 1:])]``
        for every token ``(B, 1 + N, C)``; each through its last norm."""
        if x.ndim == 2:
            out = [to_class(x)]
            norms = [self.last_norm]
        else:
            out = [to_class(x[:, 0]), to_patch(x[:, 1:])]
            norms = [self.last_norm, self.last_norm2]
        if self.last_norm is not None:
            out = [apply_token_norm(n, o) for n, o in zip(norms, out)]
        return out


@register_model_head("ibot_head")
class IBOTHead(_IBOTHeadBase):
    """``ibot_head``: ``mlp``, L2 normalisation, ``prototypes0`` for the class token and
    ``prototypes1`` for patch tokens (the same module with ``shared_head``), then optional
    non-affine ``last_norm`` / ``last_norm2``.

    Options:
        in_dim (int): token width; out_dim (int): class-token prototypes.
        patch_out_dim (int, default 0 = out_dim): patch-token prototypes.
        norm (null, "bn", "syncbn", "ln"): norm after each hidden Linear; act ("gelu" or "relu").
        last_norm (null, "bn", "syncbn", "ln"): non-affine norm on the outputs.
        normalize_last_layer (bool, default true): prototypes' ``weight_g`` frozen at 1.
        num_layers (int, default 3), hidden_dim (int, default 2048), bottleneck_dim (int, default 256).
        shared_head (bool, default false): one prototypes layer for class and patch tokens.
        any other keyword: passed to the ``last_norm`` constructors.

    Keys: ``mlp.<i>.*``, ``prototypes0.weight_g/weight_v``, ``prototypes1.weight_g/weight_v``
    (present, and tied to prototypes0, with ``shared_head``).
    """

    head_name = "ibot_head"

    def __init__(
        self,
        model_config: ModelConfig,
        in_dim: int,
        out_dim: int,
        patch_out_dim: int = 0,
        norm: Optional[str] = None,
        act: str = "gelu",
        last_norm: Optional[str] = None,
        normalize_last_layer: bool = True,
        num_layers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        shared_head: bool = False,
        **norm_kwargs,
    ) -> None:
        super().__init__()
        o = read_head_options(self.head_name, dict(
            in_dim=in_dim, out_dim=out_dim, patch_out_dim=patch_out_dim, norm=norm, act=act, last_norm=last_norm,
            num_layers=num_layers, hidden_dim=hidden_dim, shared_head=shared_head,
            normalize_last_layer=normalize_last_layer, bottleneck_dim=bottleneck_dim),
            ibot_options(self.head_name, 1, with_prototypes=True))
        patch_out_dim = o["patch_out_dim"] or o["out_dim"]
        self.input_width = o["in_dim"]
        layers = _hidden_layers(self.head_name, o["in_dim"], o["hidden_dim"], o["num_layers"] - 1, o["norm"], o["act"])
        if o["num_layers"] == 1:
            self.mlp: nn.Module = nn.Linear(o["in_dim"], o["bottleneck_dim"])
        else:
            self.mlp = TokenSequential(*layers, nn.Linear(o["hidden_dim"], o["bottleneck_dim"]))
        self.apply(init_linear_trunc_normal)
        self.prototypes0 = weight_norm_prototypes(o["bottleneck_dim"], o["out_dim"], o["normalize_last_layer"])
        if o["shared_head"]:
            self.prototypes1 = self.prototypes0
        else:
            self.prototypes1 = weight_norm_prototypes(o["bottleneck_dim"], patch_out_dim, o["normalize_last_layer"])
        self._build_last_norms(o["last_norm"], o["out_dim"], patch_out_dim, o["shared_head"], norm_kwargs)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self._outputs(F.normalize(self.mlp(x), dim=-1, p=2), self.prototypes0, self.prototypes1)


@register_model_head("ibot_distillation_head")
class IBOTDistillationHead(_IBOTHeadBase):
    """``ibot_distillation_head``: ``mlp`` (at least one hidden layer), then ``to_class_out`` for
    the class token and ``to_patch_out`` for patch tokens (shared with ``shared_head``), then
    optional non-affine ``last_norm`` / ``last_norm2``. No normalisation or prototypes.

    Options: in_dim, out_dim, patch_out_dim, norm, act, last_norm, hidden_dim, shared_head as in
    ``ibot_head``; num_layers (default 3) is at least 2. Other keywords go to the ``last_norm``
    constructors.
    """

    head_name = "ibot_distillation_head"

    def __init__(
        self,
        model_config: ModelConfig,
        in_dim: int,
        out_dim: int,
        patch_out_dim: int = 0,
        norm: Optional[str] = None,
        act: str = "gelu",
        last_norm: Optional[str] = None,
        num_layers: int = 3,
        hidden_dim: int = 2048,
        shared_head: bool = False,
        **norm_kwargs,
    ) -> None:
        super().__init__()
        o = read_head_options(self.head_name, dict(
            in_dim=in_dim, out_dim=out_dim, patch_out_dim=patch_out_dim, norm=norm, act=act, last_norm=last_norm,
            num_layers=num_layers, hidden_dim=hidden_dim, shared_head=shared_head),
            ibot_options(self.head_name, 2, with_prototypes=False))
        patch_out_dim = o["patch_out_dim"] or o["out_dim"]
        self.input_width = o["in_dim"]
        hidden = o["hidden_dim"]
        self.mlp = TokenSequential(
            *_hidden_layers(self.head_name, o["in_dim"], hidden, o["num_layers"] - 1, o["norm"], o["act"]))
        self.to_class_out = nn.Linear(hidden, o["out_dim"])
        self.to_patch_out = self.to_class_out if o["shared_head"] else nn.Linear(hidden, patch_out_dim)
        self.apply(init_linear_trunc_normal)
        self._build_last_norms(o["last_norm"], o["out_dim"], patch_out_dim, o["shared_head"], norm_kwargs)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self._outputs(self.mlp(x), self.to_class_out, self.to_patch_out)
