"""Transformer building blocks shared by every transformer trunk (ViT, XCiT, ConViT, Swin, BEiT).

Module and parameter names follow the original (and timm): ``fc1/fc2`` in the MLP, ``qkv/proj``
in attention, ``norm1/attn/norm2/mlp`` in a block, ``proj`` in the patch embedding, so
checkpoints load unchanged. ``AttentionBase`` and ``PreNormBlock`` hold what every attention
variant and pre-norm block of those families share; the families add their own parts.
``interpolate_pos_embed`` resizes positional embeddings for inputs of another size the way the
original does; ``drop_path_rates`` is the stochastic-depth schedule.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import checkpoint_without_bn_double_update
from .drop import drop_path_rates, optional_drop_path


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


class MLPBlock(nn.Module):
    """``linear_1 -> GELU -> dropout_1 -> linear_2 -> dropout_2`` (classy_vision's and ConViT's key names)."""

    def __init__(
        self,
        in_dim: int,
        mlp_dim: Optional[int] = None,
        dropout_rate: float = 0.0,
        out_dim: Optional[int] = None,
        act_layer=nn.GELU,
    ) -> None:
        super().__init__()
        mlp_dim = mlp_dim or in_dim
        self.linear_1 = nn.Linear(in_dim, mlp_dim)
        self.act = act_layer()
        self.dropout_1 = nn.Dropout(dropout_rate)
        self.linear_2 = nn.Linear(mlp_dim, out_dim or in_dim)
        self.dropout_2 = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout_2(self.linear_2(self.dropout_1(self.act(self.linear_1(x)))))


def attention_scale(head_dim: int, qk_scale: Optional[float]) -> float:
    """The original's ``qk_scale or head_dim ** -0.5`` (a false or zero qk_scale means default)."""
    return float(qk_scale) if qk_scale else head_dim ** -0.5


class AttentionBase(nn.Module):
    """What the attention variants share: ``qkv`` and ``proj`` linears (keys ``qkv.*``, ``proj.*``),
    attention and projection dropout, ``num_heads`` and ``scale``. Subclasses define ``forward``."""

    kind = "attention"  # names the layer in errors

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
            raise ValueError(f"{self.kind}: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = attention_scale(dim // num_heads, qk_scale)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def dropout_p(self) -> float:
        """Attention dropout probability for ``scaled_dot_product_attention`` (0 in eval mode)."""
        return self.attn_drop.p if self.training else 0.0


class Attention(AttentionBase):
    """Multi-head self-attention on ``(B, N, C)`` tokens through PyTorch's fused SDPA kernel.

    ``attention_map`` gives the explicit softmax weights (for visualisation); the forward pass
    never materialises them.
    """

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p(), scale=self.scale)
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
        self.patch_size = to_2tuple(patch_size)
        self.set_img_size(img_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def set_img_size(self, img_size) -> None:
        """The input size the model is configured for, and the patch grid it gives."""
        self.img_size = to_2tuple(img_size)
        self.feat_map_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.feat_map_size[0] * self.feat_map_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input's dtype (same keys as LayerNorm).

    The original's FSDP trunks use it so that mixed-precision runs normalise in full precision.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class PreNormBlock(nn.Module):
    """The modules of a pre-norm transformer block, in the original's order and under its keys:
    ``norm1, attn, drop_path, norm2, mlp``. Subclasses add their own parts and define ``forward``.

    ``attn_layer`` is called as ``attn_layer(dim, num_heads=, qkv_bias=, qk_scale=, attn_drop=,
    proj_drop=)`` and ``mlp_layer`` as ``mlp_layer(in_features=, hidden_features=, act_layer=, drop=)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        attn_layer: Optional[Callable[..., nn.Module]] = None,
        mlp_layer: Optional[Callable[..., nn.Module]] = None,
    ) -> None:
        super().__init__()
        attn_layer = attn_layer or Attention
        mlp_layer = mlp_layer or Mlp
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = optional_drop_path(drop_path)
        self.norm2 = norm_layer(dim)
        # int(dim * ratio), not the configured width: the original sizes fc1 this way.
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)


class Block(PreNormBlock):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Keys ``norm1, attn.{qkv,proj}, norm2, mlp.{fc1,fc2}``. ``drop_path`` is stochastic depth on
    both residual branches. ``checkpoint_mlp`` / ``checkpoint_block`` recompute the MLP / the
    whole block in backward (non-reentrant ``torch.utils.checkpoint``), only when gradients are
    being recorded. ``attn_layer`` swaps the attention module (same constructor arguments).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        checkpoint_mlp: bool = False,
        checkpoint_block: bool = False,
        attn_layer: Callable[..., nn.Module] = None,
    ) -> None:
        super().__init__(
            dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path, act_layer, norm_layer,
            attn_layer=attn_layer,
        )
        self.checkpoint_mlp = checkpoint_mlp
        self.checkpoint_block = checkpoint_block

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_mlp and torch.is_grad_enabled():
            return checkpoint_without_bn_double_update(self.mlp, x)
        return self.mlp(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self._mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_block and torch.is_grad_enabled():
            return checkpoint_without_bn_double_update(self._forward, x)
        return self._forward(x)

    def get_attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights of this block for input tokens ``x``: ``(B, heads, N, N)``."""
        return self.attn.attention_map(self.norm1(x))


def relative_position_index(window: Tuple[int, int]) -> torch.Tensor:
    """``(Wh*Ww, Wh*Ww)`` int64 index into a ``(2Wh-1)(2Ww-1)`` table of relative offsets.

    Token ``i`` at ``(hi, wi)`` and token ``j`` at ``(hj, wj)`` get
    ``(hi - hj + Wh - 1) * (2Ww - 1) + (wi - wj + Ww - 1)``.
    """
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(heads, N, N)`` bias: rows of a ``(num_relative, heads)`` table picked by an ``(N, N)`` index."""
    n = index.shape[0]
    return table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)


def resample_token_grid(tokens: torch.Tensor, grid_size: Tuple[int, int], **interpolate_kwargs) -> torch.Tensor:
    """``(1, H*W, C)`` tokens of an ``H x W`` grid, resampled as an image by
    ``F.interpolate(**interpolate_kwargs)``, back as ``(1, H'*W', C)`` tokens."""
    dim = tokens.shape[-1]
    grid = tokens.reshape(1, grid_size[0], grid_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, **interpolate_kwargs)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim)


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    num_tokens: int,
    grid_size: Optional[Tuple[int, int]] = None,
    new_grid_size: Optional[Tuple[int, int]] = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resize a ``(1, prefix + H*W, C)`` positional embedding to ``num_tokens`` tokens.

    The original's rule: unchanged when the token count already matches; otherwise the prefix
    (class) embeddings are kept and the ``grid_size`` grid (default: square) is resampled with
    ``F.interpolate(scale_factor=sqrt(new_patches / patches))``. Going through ``scale_factor``
    (not ``size``) matters: it sets the sampling positions, so outputs match the original's
    exactly. When that scale cannot give ``new_grid_size`` (a different aspect ratio, which the
    original cannot handle), the grid is resampled to ``new_grid_size`` directly.
    """
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    new_patches = num_tokens - num_prefix_tokens
    if new_patches == num_patches:
        return pos_embed
    dim = pos_embed.shape[-1]
    if grid_size is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"positional embedding of {num_patches} patches is not a square grid; pass grid_size")
        grid_size = (side, side)
    h, w = grid_size
    if h * w != num_patches:
        raise ValueError(f"grid {grid_size} does not hold the {num_patches} positional embeddings")
    scale = math.sqrt(new_patches / num_patches)
    scaled = (math.floor(h * scale), math.floor(w * scale))
    if new_grid_size is None:
        new_grid_size = scaled
    if new_grid_size[0] * new_grid_size[1] != new_patches:
        raise ValueError(f"cannot resize positional embeddings to {new_patches} patches on grid {new_grid_size}")
    resize = dict(scale_factor=scale) if tuple(new_grid_size) == scaled else dict(size=tuple(new_grid_size))
    grid = resample_token_grid(pos_embed[:, num_prefix_tokens:], (h, w), mode=mode, **resize)
    return torch.cat((pos_embed[:, :num_prefix_tokens], grid), dim=1)


__all__ = [
    "MLPBlock",
    "Attention",
    "AttentionBase",
    "Block",
    "PreNormBlock",
    "Fp32LayerNorm",
    "Mlp",
    "PatchEmbed",
    "attention_scale",
    "drop_path_rates",
    "interpolate_pos_embed",
    "relative_position_bias",
    "relative_position_index",
    "resample_token_grid",
    "to_2tuple",
]
