"""Swin Transformer trunks: ``swin_transformer`` (any input size) and ``swin_transformer_official``.

Both have the original's (and the official Swin repository's) state-dict layout:
``patch_embed.{proj,norm}``, ``layers.<i>.blocks.<j>.{norm1,attn,norm2,mlp}``,
``layers.<i>.downsample.{reduction,norm}`` and ``norm``. Each window attention keeps its integer
``relative_position_index`` buffer; ``swin_transformer_official`` also keeps the shifted blocks'
``attn_mask`` buffers, as the official model did.

``swin_transformer`` takes any input size the way the original's VISSL variant does: the image
is zero-padded to a multiple of the patch size, feature maps to a multiple of the window size
(padded tokens take part in attention, as there) and odd maps before patch merging; a map no
larger than the window uses one window and no shift. ``swin_transformer_official`` takes only
``IMAGE_SIZE`` inputs.

Window attention runs through ``scaled_dot_product_attention`` with the relative-position bias
(and the shifted-window mask) as an additive ``attn_mask``.

Feature names: ``lastCLS``, the layer-normalised, token-averaged output of the last stage (the
original returned this feature whatever was asked; its configs ask for ``lastCLS``).
``MODEL.INPUT_TYPE`` must be rgb or bgr and, as in the original, the input is used as given;
``MODEL.ACTIVATION_CHECKPOINTING`` (``set_grad_checkpointing``) recomputes each block in backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..config.loader import ConfigError
from ..layers import trunc_normal_
from ..layers.checkpointing import checkpoint_without_bn_double_update
from ..layers.init import init_transformer_weights
from ..layers.transformer import (
    AttentionBase,
    PatchEmbed,
    PreNormBlock,
    drop_path_rates,
    relative_position_bias,
    relative_position_index,
    to_2tuple,
)
from ..registry import register_model_trunk
from ._transformer_common import (
    TransformerTrunk,
    check_image_batch,
    check_patch_fits,
    common_options,
    positive_int,
    read_options,
)
from .base import FeatureInfo, TrunkCommon, requested_features

FEATURES = ("lastCLS",)
# Additive bias between tokens of different regions of a shifted window (the original's value).
SHIFT_MASK_VALUE = -100.0


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * num_windows, window_size, window_size, C)``, windows row-major per image."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: back to ``(B, H, W, C)``."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def shifted_window_mask(H: int, W: int, window_size: int, shift_size: int, device=None) -> torch.Tensor:
    """``(num_windows, N, N)`` additive mask for an ``H x W`` map rolled by ``-shift_size``.

    The rolled map has three bands per axis (``[0, H-ws)``, ``[H-ws, H-shift)``, ``[H-shift, H)``);
    tokens of a window that come from different band pairs must not attend to each other.
    """

    def bands(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window_size).long() + (idx >= n - shift_size).long()

    region = (bands(H)[:, None] * 3 + bands(W)[None, :]).to(torch.float32)
    region = window_partition(region[None, :, :, None], window_size).reshape(-1, window_size * window_size)
    differ = region[:, None, :] != region[:, :, None]
    return torch.zeros(differ.shape, device=device).masked_fill(differ, SHIFT_MASK_VALUE)


class WindowAttention(AttentionBase):
    """Multi-head self-attention inside windows, with a learned relative-position bias per head.

    The bias table covers ``window_size``; a smaller runtime window of ``N`` tokens uses the
    top-left ``N x N`` block of the index, as the original did.
    """

    kind = "window attention"

    def __init__(
        self,
        dim: int,
        window_size: Tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.dim = dim
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self, N: int) -> torch.Tensor:
        """``(heads, N, N)`` bias for windows of ``N`` tokens."""
        return relative_position_bias(self.relative_position_bias_table, self.relative_position_index[:N, :N])

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: ``(B * num_windows, N, C)``; ``mask``: ``(num_windows, N, N)`` additive, or None."""
        B_, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        qkv = self.qkv(x)
        bias = self.relative_position_bias(N)
        if mask is None:
            q, k, v = qkv.reshape(B_, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            attn_mask = bias.unsqueeze(0)
        else:
            # Windows join the head axis so the per-window mask broadcasts over the batch
            # instead of being copied for every image.
            nW = mask.shape[0]
            B = B_ // nW
            q, k, v = qkv.reshape(B, nW, N, 3, h, d).permute(3, 0, 1, 4, 2, 5).reshape(3, B, nW * h, N, d).unbind(0)
            attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, nW * h, N, N)
        drop = self.dropout_p()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=drop, scale=self.scale)
        if mask is None:
            out = out.transpose(1, 2)
        else:
            out = out.reshape(B, nW, h, N, d).permute(0, 1, 3, 2, 4)
        return self.proj_drop(self.proj(out.reshape(B_, N, C)))

    def extra_repr(self) -> str:
        return f"{self.dim} channels in {self.num_heads} heads, {self.window_size[0]}x{self.window_size[1]} windows"


class SwinTransformerBlock(PreNormBlock):
    """(Shifted-)window attention then MLP, each pre-norm with a residual, on ``(B, H, W, C)`` maps.

    ``official`` fixes the map size to ``input_resolution`` and stores the shift mask as the
    ``attn_mask`` buffer; otherwise the window, shift, padding and mask follow the input size.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: Tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer=nn.LayerNorm,
        official: bool = False,
    ) -> None:
        if min(input_resolution) <= window_size:
            # a map no larger than the window is one window, never shifted
            shift_size = 0
            window_size = min(input_resolution)
        if not 0 <= shift_size < window_size:
            raise ValueError(
                f"swin block on a {input_resolution[0]}x{input_resolution[1]} map: a shift of {shift_size} does not "
                f"fit a window of {window_size} (it needs 0 <= shift < window)"
            )
        super().__init__(
            dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path, norm_layer=norm_layer,
            attn_layer=partial(WindowAttention, window_size=to_2tuple(window_size)),
        )
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        self.official = official
        if official:
            mask = None
            if self.shift_size > 0:
                mask = shifted_window_mask(*input_resolution, self.window_size, self.shift_size)
            self.register_buffer("attn_mask", mask)

    def _window_and_shift(self, H: int, W: int) -> Tuple[int, int]:
        # Per axis: a map no larger than the window uses its own size and no shift.
        sizes = [n if n <= self.window_size else self.window_size for n in (H, W)]
        shifts = [0 if n <= self.window_size else self.shift_size for n in (H, W)]
        return min(sizes), min(shifts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        shortcut = x
        x = self.norm1(x)
        if self.official:
            if (H, W) != tuple(self.input_resolution):
                raise ValueError(f"swin block expects a {self.input_resolution} map, got {(H, W)}")
            ws, shift = self.window_size, self.shift_size
            mask = self.attn_mask
        else:
            ws, shift = self._window_and_shift(H, W)
            pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            mask = shifted_window_mask(H + pad_b, W + pad_r, ws, shift, x.device) if shift > 0 else None
        Hp, Wp = x.shape[1], x.shape[2]
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, C)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, ws, ws, C), ws, Hp, Wp)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        if Hp != H or Wp != W:
            x = x[:, :H, :W, :]
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        h, w = self.input_resolution
        return (
            f"{self.dim} channels in {self.num_heads} heads on a {h}x{w} map, {self.window_size}x{self.window_size} "
            f"windows shifted by {self.shift_size}, MLP {self.mlp_ratio:g}x wide"
        )


class PatchMerging(nn.Module):
    """2x2 neighbourhoods concatenated (``4C``), normalised and projected to ``2C``; odd maps are
    zero-padded first (the official variant requires even maps)."""

    def __init__(self, input_resolution: Tuple[int, int], dim: int, norm_layer=nn.LayerNorm, official: bool = False):
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.official = official
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            if self.official:
                raise ValueError(f"swin_transformer_official merges 2x2 patches and cannot pad: got an odd {H}x{W} map")
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))

    def extra_repr(self) -> str:
        h, w = self.input_resolution
        return f"{h}x{w} map of {self.dim} channels to {(h + 1) // 2}x{(w + 1) // 2} of {2 * self.dim}"


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: Tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        norm_layer=nn.LayerNorm,
        downsample: bool = False,
        official: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim, input_resolution, num_heads, window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                drop_path=drop_path[i], norm_layer=norm_layer, official=official,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(input_resolution, dim, norm_layer, official) if downsample else None

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's blocks, without the patch merging after them."""
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint_without_bn_double_update(blk, x)
            else:
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def extra_repr(self) -> str:
        h, w = self.input_resolution
        return f"{self.depth} blocks of {self.dim} channels on a {h}x{w} map"


class SwinPatchEmbed(PatchEmbed):
    """Strided-conv patch embedding (``proj``) then LayerNorm (``norm``), returning ``(B, H, W, C)``.

    Without ``official`` the image is zero-padded at the bottom/right to a multiple of the patch
    size; with it, the image must be ``img_size``.
    """

    def __init__(self, img_size=224, patch_size=4, in_chans: int = 3, embed_dim: int = 96, norm_layer=nn.LayerNorm,
                 official: bool = False) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim)
        self.patches_resolution = list(self.feat_map_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None
        self.official = official

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        if self.official:
            if (H, W) != tuple(self.img_size):
                raise ValueError(
                    f"swin_transformer_official takes {self.img_size[0]}x{self.img_size[1]} images "
                    f"(MODEL.TRUNK.SWIN_TRANSFORMER.IMAGE_SIZE), got {H}x{W}; swin_transformer takes any size"
                )
        elif H % ph or W % pw:
            x = F.pad(x, (0, (pw - W % pw) % pw, 0, (ph - H % ph) % ph))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


def int_tuple(key: str, value) -> Tuple[int, ...]:
    return tuple(opt.as_int_list(key, value))


@dataclass(frozen=True)
class SwinOptions:
    """``MODEL.TRUNK.SWIN_TRANSFORMER``."""

    image_size: int = 224
    patch_size: int = 4
    embed_dim: int = 96
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.1
    qkv_bias: bool = True
    qk_scale: Optional[float] = None

    @classmethod
    def from_config(cls, section: Mapping) -> "SwinOptions":
        key = "MODEL.TRUNK.SWIN_TRANSFORMER."
        fields = [
            "image_size", "patch_size", ("embed_dim", positive_int), ("depths", int_tuple), ("num_heads", int_tuple),
            ("window_size", positive_int), "mlp_ratio", "dropout_rate", "attention_dropout_rate", "drop_path_rate",
            "qkv_bias", "qk_scale",
        ]
        out = cls(**read_options(section, key, fields))
        check_patch_fits(key, out.image_size, out.patch_size)
        if len(out.depths) != len(out.num_heads):
            raise ConfigError(
                f"{key}NUM_HEADS: got {list(out.num_heads)}, expected one entry per stage of DEPTHS {list(out.depths)}"
            )
        if min(out.depths) < 1 or min(out.num_heads) < 1:
            raise ConfigError(
                f"{key}DEPTHS/NUM_HEADS: entries must be >= 1, got {list(out.depths)} / {list(out.num_heads)}"
            )
        for i, heads in enumerate(out.num_heads):
            dim = out.embed_dim * 2 ** i
            if dim % heads:
                raise ConfigError(f"{key}NUM_HEADS[{i}]: got {heads}, stage {i} width {dim} is not divisible by it")
        return out


class SwinTransformer(TransformerTrunk):
    """Swin Transformer trunk returning the average of the final normalised tokens (``lastCLS``).

    ``official`` selects the fixed-size behaviour of ``swin_transformer_official`` (see the module
    docstring); the weights are the same for both. ``forward_features`` is the final normalised
    map ``(B, H, W, C)`` (timm's layout) and ``forward_intermediates`` indexes the stages, each
    taken after its blocks and before the patch merging that follows it (timm's stage outputs).
    Positions are relative biases inside windows: there is no positional embedding to resize.
    """

    def __init__(
        self,
        options: SwinOptions = SwinOptions(),
        official: bool = False,
        common: TrunkCommon = TrunkCommon(input_type="rgb", apply_input_type=False),
    ) -> None:
        super().__init__(common)
        o = options
        self.options = options
        self.official = official
        self.num_layers = len(o.depths)
        self.embed_dim = o.embed_dim
        width = o.embed_dim * 2 ** (self.num_layers - 1)
        self.mlp_ratio = o.mlp_ratio
        self.patch_embed = SwinPatchEmbed(o.image_size, o.patch_size, 3, o.embed_dim, nn.LayerNorm, official)
        res = self.patch_embed.patches_resolution
        self.patches_resolution = res
        self._check_resolutions(res)
        self.pos_drop = nn.Dropout(p=o.dropout_rate)
        dpr = drop_path_rates(o.drop_path_rate, sum(o.depths))
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            start = sum(o.depths[:i])
            self.layers.append(
                BasicLayer(
                    dim=o.embed_dim * 2 ** i,
                    input_resolution=(res[0] // 2 ** i, res[1] // 2 ** i),
                    depth=o.depths[i],
                    num_heads=o.num_heads[i],
                    window_size=o.window_size,
                    mlp_ratio=o.mlp_ratio,
                    qkv_bias=o.qkv_bias,
                    qk_scale=o.qk_scale,
                    drop=o.dropout_rate,
                    attn_drop=o.attention_dropout_rate,
                    drop_path=dpr[start:start + o.depths[i]],
                    downsample=i < self.num_layers - 1,
                    official=official,
                )
            )
        self.norm = nn.LayerNorm(width)
        self.apply(init_transformer_weights)

        self.default_input_size = (o.image_size, o.image_size)
        self.feature_info = [FeatureInfo("lastCLS", width, None, "vector", "norm")]
        self.default_feature = "lastCLS"
        self.intermediate_features = [f"layers.{i}" for i in range(self.num_layers)]
        self.set_grad_checkpointing(common.use_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (``MODEL.ACTIVATION_CHECKPOINTING`` sets it at build)."""
        super().set_grad_checkpointing(enable)
        for layer in self.layers:
            layer.use_checkpoint = bool(enable)

    def _check_resolutions(self, res: Sequence[int]) -> None:
        key = "MODEL.TRUNK.SWIN_TRANSFORMER"
        for i in range(self.num_layers):
            h, w = res[0] // 2 ** i, res[1] // 2 ** i
            if min(h, w) < 1:
                raise ConfigError(
                    f"{key}: IMAGE_SIZE {self.options.image_size} / PATCH_SIZE {self.options.patch_size} leaves "
                    f"no tokens for stage {i} of {self.num_layers}"
                )
            if not self.official:
                continue
            ws = min(h, w) if min(h, w) <= self.options.window_size else self.options.window_size
            if h % ws or w % ws or (i < self.num_layers - 1 and (h % 2 or w % 2)):
                raise ConfigError(
                    f"{key}: swin_transformer_official needs stage {i}'s {h}x{w} map to be a multiple of the "
                    f"window ({ws}) and even before merging; use swin_transformer, which pads"
                )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map, layer-normalised: ``(B, H, W, num_features)`` (timm's layout)."""
        check_image_batch(x, "Swin")
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """``{"lastCLS": the normalised final tokens averaged, (B, num_features)}``."""
        names = requested_features("Swin", names, FEATURES)
        return {n: self.forward_features(x).flatten(1, 2).mean(dim=1) for n in dict.fromkeys(names)}

    def _intermediates(self, x, taken, stop, norm, want_final):
        check_image_batch(x, "Swin")
        x = self.pos_drop(self.patch_embed(x))
        found = []
        last = self.num_layers - 1
        for i, layer in enumerate(self.layers if stop is None else self.layers[: stop + 1]):
            x = layer.run_blocks(x)
            if i in taken:
                y = self.norm(x) if norm and i == last else x
                found.append((y.flatten(1, 2), (y.shape[1], y.shape[2])))
            if i < last and (stop is None or i < stop):
                x = layer.downsample(x)
        return (self.norm(x) if want_final else None), found

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """``[lastCLS]`` once per name asked (only ``lastCLS`` exists)."""
        names = requested_features("Swin", out_feat_keys, FEATURES)
        feat = self.feature_dict(x, names)["lastCLS"]
        return [feat for _ in names]


def _build(model_config: Mapping, name: str, official: bool) -> SwinTransformer:
    options = SwinOptions.from_config(model_config["TRUNK"]["SWIN_TRANSFORMER"])
    return SwinTransformer(options, official=official, common=common_options(model_config, name))


@register_model_trunk("swin_transformer")
def build_swin_transformer(model_config: Mapping, model_name: str = "swin_transformer") -> SwinTransformer:
    """Build the ``swin_transformer`` trunk (any input size) from ``MODEL.TRUNK.SWIN_TRANSFORMER``."""
    return _build(model_config, model_name, official=False)


@register_model_trunk("swin_transformer_official")
def build_swin_transformer_official(
    model_config: Mapping, model_name: str = "swin_transformer_official"
) -> SwinTransformer:
    """Build ``swin_transformer_official`` (``IMAGE_SIZE`` inputs only, ``attn_mask`` buffers) from
    ``MODEL.TRUNK.SWIN_TRANSFORMER``."""
    return _build(model_config, model_name, official=True)
