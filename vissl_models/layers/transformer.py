"""Transformer building blocks shared by every transformer trunk (ViT, XCiT, ConViT, Swin, BEiT).

Module and parameter names follow the original (and timm): ``fc1/fc2`` in the MLP, ``qkv/proj``
in attention, ``proj`` in the patch embedding, so checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn


def to_2tuple(x: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(x, (tuple, list)):
        return tuple(x)  # type: ignore[return-value]
    return (x, x)


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout."""

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer=nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def attention_scale(head_dim: int, qk_scale: Optional[float]) -> float:
    """The original's ``qk_scale or head_dim ** -0.5`` (a false or zero qk_scale means default)."""
    return float(qk_scale) if qk_scale else head_dim ** -0.5


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, N, C)`` tokens through PyTorch's fused SDPA kernel.

    ``attention_map`` gives the explicit softmax weights (for visualisation); the forward pass
    never materialises them.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = attention_scale(dim // num_heads, qk_scale)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        drop = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights ``(B, heads, N, N)``."""
        q, k, _ = self._qkv(x)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)


class PatchEmbed(nn.Module):
    """Image to patch tokens: a strided convolution (``proj``), flattened to ``(B, N, C)``."""

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.feat_map_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.feat_map_size[0] * self.feat_map_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


__all__ = ["Attention", "Mlp", "PatchEmbed", "attention_scale", "to_2tuple"]
