"""XCiT trunks (``xcit``, ``xcit_fsdp``): cross-covariance image transformers, as in the original.

State-dict layout (the original's, itself the official XCiT one): ``patch_embed.proj.*`` (a
stack of stride-2 3x3 conv + BatchNorm pairs), ``pos_embeder.token_projection``, ``cls_token``,
``blocks.<i>`` (XCA blocks: ``norm1/attn/norm3/local_mp/norm2/mlp/gamma1..3``),
``cls_attn_blocks.<i>`` (class-attention blocks) and ``norm``.

Feature names: ``lastCLS`` (the normalised class token, also the output without names) and
``lastMAP`` (the normalised patch tokens as a ``(B, H, W, C)`` map). The Fourier positional
encoding is computed for the actual token grid, so any input size works.

``xcit_fsdp`` builds the same module in one process, without FSDP wrapping. Like the original's
``XCiT_FSDP`` it has ``NUM_LAYERS`` class-attention blocks (the original's loop used the trunk
depth there), so its checkpoints load unchanged; ``xcit`` has two.

``CHECKPOINT_XCA_BLOCK`` / ``CHECKPOINT_ATTN_BLOCK`` (or ``MODEL.ACTIVATION_CHECKPOINTING``)
recompute each block in backward, for both names; BatchNorm statistics are still updated once.
``MODEL.INPUT_TYPE`` must be rgb or bgr and, as in the original, the input is used as given.
Initial weights follow ``MODEL._MODEL_INIT_SEED`` per block, as in the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..config.loader import ConfigError
from ..layers import trunc_normal_
from ..layers.checkpointing import checkpoint_without_bn_double_update
from ..layers.init import init_transformer_weights
from ..layers.transformer import AttentionBase, PreNormBlock, to_2tuple
from ..registry import register_model_trunk
from ._transformer_common import (
    TransformerTrunk,
    check_image_batch,
    check_patch_fits,
    check_width_fits_heads,
    common_options,
    positive_int,
    read_options,
)
from .base import FeatureInfo, TrunkCommon, requested_features

FEATURES = ("lastCLS", "lastMAP")


@dataclass(frozen=True)
class XCiTOptions:
    """``MODEL.TRUNK.XCIT``."""

    image_size: int = 224
    patch_size: int = 16
    hidden_dim: int = 384
    num_layers: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.05
    eta: float = 1.0
    tokens_norm: bool = True
    qkv_bias: bool = True
    qk_scale: Optional[float] = None
    checkpoint_xca_block: bool = False
    checkpoint_attn_block: bool = False

    @classmethod
    def from_config(cls, section: Mapping) -> "XCiTOptions":
        key = "MODEL.TRUNK.XCIT."
        fields = [
            "image_size", ("patch_size", _stem_patch_size), "hidden_dim", "num_layers", "num_heads", "mlp_ratio",
            "dropout_rate", "attention_dropout_rate", "drop_path_rate", ("eta", opt.as_float),
            ("tokens_norm", opt.as_bool), "qkv_bias", "qk_scale", ("checkpoint_xca_block", opt.as_bool),
            ("checkpoint_attn_block", opt.as_bool),
        ]
        out = cls(**read_options(section, key, fields))
        check_width_fits_heads(key, out.hidden_dim, out.num_heads)
        check_patch_fits(key, out.image_size, out.patch_size)
        # The conv stem's first stage has HIDDEN_DIM / 8 (patch 16) or / 4 (patch 8) channels.
        stem_div = 8 if out.patch_size == 16 else 4
        if out.hidden_dim < stem_div:
            raise ConfigError(
                f"{key}HIDDEN_DIM: got {out.hidden_dim}, expected at least {stem_div} for PATCH_SIZE {out.patch_size}"
            )
        return out


def _stem_patch_size(key: str, value) -> int:
    """``PATCH_SIZE``: an integer, and one the conv stem has a layout for (8 or 16)."""
    return opt.choice(key, positive_int(key, value), (8, 16))


class PositionalEncodingFourier(nn.Module):
    """Sine/cosine encoding of normalised (y, x) grid coordinates, projected by a 1x1 conv.

    The encoding depends only on the grid size, so it is computed once per forward for one
    image and broadcast over the batch.
    """

    def __init__(self, hidden_dim: int = 32, dim: int = 768, temperature: float = 10000) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.scale = 2 * math.pi
        self.temperature = temperature
        self.hidden_dim = hidden_dim
        self.dim = dim

    def forward(self, H: int, W: int) -> torch.Tensor:
        """Encoding for an ``H x W`` grid as ``(1, H * W, dim)`` tokens."""
        device = self.token_projection.weight.device
        eps = 1e-6
        # Positions 1..n divided by (n + eps), as the original's cumulative sums over a mask gave.
        y = torch.arange(1, H + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, W + 1, dtype=torch.float32, device=device)
        y = y / (y[-1:] + eps) * self.scale
        x = x / (x[-1:] + eps) * self.scale
        dim_t = torch.arange(self.hidden_dim, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.hidden_dim)
        pos_y = self._interleave(y[:, None] / dim_t)  # (H, hidden)
        pos_x = self._interleave(x[:, None] / dim_t)  # (W, hidden)
        pos = torch.cat(
            (pos_y[:, None, :].expand(H, W, self.hidden_dim), pos_x[None, :, :].expand(H, W, self.hidden_dim)),
            dim=-1,
        )
        pos = pos.permute(2, 0, 1).unsqueeze(0).to(self.token_projection.weight.dtype)
        return self.token_projection(pos).flatten(2).transpose(1, 2)

    @staticmethod
    def _interleave(t: torch.Tensor) -> torch.Tensor:
        # sin of even channels and cos of odd ones, interleaved back in channel order
        return torch.stack((t[:, 0::2].sin(), t[:, 1::2].cos()), dim=2).flatten(1)


def _conv3x3_bn(in_planes: int, out_planes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ConvPatchEmbed(nn.Module):
    """Patch embedding by stride-2 conv/BN stages with GELUs in between (4 stages for patch 16, 3 for 8)."""

    def __init__(self, img_size=224, patch_size: int = 16, embed_dim: int = 768, in_chans: int = 3) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.feat_map_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.feat_map_size[0] * self.feat_map_size[1]
        if self.patch_size[0] == 16:
            widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        elif self.patch_size[0] == 8:
            widths = [in_chans, embed_dim // 4, embed_dim // 2, embed_dim]
        else:
            raise ValueError(f"XCiT patch embedding supports patch sizes 8 and 16, got {patch_size}")
        layers: List[nn.Module] = []
        for i in range(len(widths) - 1):
            if i > 0:
                layers.append(nn.GELU())
            layers.append(_conv3x3_bn(widths[i], widths[i + 1]))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor):
        """Return ``(B, N, C)`` tokens and the token grid ``(Hp, Wp)``."""
        x = self.proj(x)
        Hp, Wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (Hp, Wp)


class LPI(nn.Module):
    """Local patch interaction: depthwise 3x3 conv, GELU, BatchNorm, depthwise 3x3 conv on the token grid."""

    def __init__(self, in_features: int, out_features: Optional[int] = None, act_layer=nn.GELU, kernel_size: int = 3):
        super().__init__()
        out_features = out_features or in_features
        padding = kernel_size // 2
        self.conv1 = nn.Conv2d(in_features, out_features, kernel_size, padding=padding, groups=out_features)
        self.act = act_layer()
        self.bn = nn.BatchNorm2d(in_features)
        self.conv2 = nn.Conv2d(in_features, out_features, kernel_size, padding=padding, groups=out_features)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.reshape(B, C, N).transpose(1, 2)


class XCA(AttentionBase):
    """Cross-covariance attention: channels attend to channels through the ``d x d`` matrix of
    L2-normalised queries and keys (normalised over tokens), scaled by a learned per-head temperature.

    This is not token softmax attention, so it stays an explicit (small) matmul. ``qk_scale`` is
    accepted for the shared block constructor and not used.
    """

    kind = "XCA"

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0,
        qk_scale: Optional[float] = None,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # (3, B, heads, head_dim, N): channels become the "sequence" axis
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class XCABlock(PreNormBlock):
    """Pre-norm residual block: XCA, then local patch interaction, then MLP, each scaled by a
    LayerScale vector (``gamma1``, ``gamma3``, ``gamma2``) initialised to ``eta``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        eta: float = 1.0,
        act_layer=nn.GELU,
        norm_layer=nn.LayerNorm,
    ) -> None:
        super().__init__(
            dim, num_heads, mlp_ratio, qkv_bias, None, drop, attn_drop, drop_path, act_layer, norm_layer, attn_layer=XCA
        )
        self.norm3 = norm_layer(dim)
        self.local_mp = LPI(in_features=dim, act_layer=act_layer)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.gamma3 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.gamma3 * self.local_mp(self.norm3(x), H, W))
        x = x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        return x


class ClassAttention(AttentionBase):
    """Class attention (CaiT): only the class token (token 0) queries all tokens.

    As in the original, the output carries the projected class token followed by the input
    patch tokens unchanged.
    """

    kind = "class attention"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        w, b = self.qkv.weight, self.qkv.bias
        # Queries only for the class token; keys and values for every token.
        q = F.linear(x[:, :1], w[:C], None if b is None else b[:C]).reshape(B, 1, h, d).transpose(1, 2)
        kv = F.linear(x, w[C:], None if b is None else b[C:]).reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        cls = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p(), scale=self.scale)
        cls = self.proj_drop(self.proj(cls.transpose(1, 2).reshape(B, 1, C)))
        return torch.cat([cls, x[:, 1:]], dim=1)


class ClassAttentionBlock(PreNormBlock):
    """Class-attention block with LayerScale (``gamma1``, ``gamma2``); the MLP runs on the class
    token only, and ``tokens_norm`` normalises all tokens (else only the class token) before it.

    Kept from the original: the residual after the MLP adds the patch tokens to themselves.
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
        eta: Optional[float] = None,
        tokens_norm: bool = False,
        act_layer=nn.GELU,
        norm_layer=nn.LayerNorm,
    ) -> None:
        super().__init__(
            dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path, act_layer, norm_layer,
            attn_layer=ClassAttention,
        )
        if eta is not None:
            self.gamma1 = nn.Parameter(eta * torch.ones(dim))
            self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        else:
            self.gamma1, self.gamma2 = 1.0, 1.0
        self.tokens_norm = tokens_norm

    def forward(self, x: torch.Tensor, H: int = 0, W: int = 0) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = torch.cat([self.norm2(x[:, :1]), x[:, 1:]], dim=1)
        cls = self.gamma2 * self.mlp(x[:, :1])
        return x + self.drop_path(torch.cat([cls, x[:, 1:]], dim=1))


def _run_block(block: nn.Module, use_checkpoint: bool, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    if use_checkpoint and block.training and torch.is_grad_enabled():
        return checkpoint_without_bn_double_update(block, x, H, W)
    return block(x, H, W)


class XCiT(TransformerTrunk):
    """XCiT trunk: conv patch embedding + Fourier positions, XCA blocks, class-attention blocks, LayerNorm.

    ``num_cls_attn_blocks`` is 2 for ``xcit`` and ``NUM_LAYERS`` for ``xcit_fsdp`` (see the module
    docstring). ``common.init_seed`` reproduces the original's per-block seeding. Public feature
    ``lastCLS`` (the default); ``lastMAP`` (normalised patch tokens as ``(B, H, W, C)``, channels
    last as in the original) is accepted in ``out_feat_keys`` besides ``feature_info``.
    ``forward_intermediates`` indexes the XCA blocks (timm's choice); there are no stored
    positional embeddings to resize.
    """

    def __init__(
        self,
        options: XCiTOptions = XCiTOptions(),
        common: TrunkCommon = TrunkCommon(input_type="rgb", apply_input_type=False),
        num_cls_attn_blocks: int = 2,
    ) -> None:
        super().__init__(common)
        self.options = options
        o = options
        init_seed = common.init_seed
        self.embed_dim = o.hidden_dim
        norm_layer = lambda dim: nn.LayerNorm(dim, eps=1e-6)  # noqa: E731

        # Same construction order and per-block seeds as the original, so a given seed gives
        # the same initial weights.
        self.patch_embed = ConvPatchEmbed(img_size=o.image_size, patch_size=o.patch_size, embed_dim=o.hidden_dim)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, o.hidden_dim))
        self.pos_drop = nn.Dropout(p=o.dropout_rate)
        blocks = []
        for i in range(o.num_layers):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed + i + 1)
                block = XCABlock(
                    o.hidden_dim, o.num_heads, o.mlp_ratio, o.qkv_bias, o.dropout_rate,
                    o.attention_dropout_rate, o.drop_path_rate, o.eta, norm_layer=norm_layer,
                )
                block.apply(init_transformer_weights)
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        cls_blocks = []
        for i in range(num_cls_attn_blocks):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed + o.num_layers + i + 1)
                block = ClassAttentionBlock(
                    o.hidden_dim, o.num_heads, o.mlp_ratio, o.qkv_bias, o.qk_scale, o.dropout_rate,
                    o.attention_dropout_rate, eta=o.eta, tokens_norm=o.tokens_norm, norm_layer=norm_layer,
                )
                block.apply(init_transformer_weights)
            cls_blocks.append(block)
        self.cls_attn_blocks = nn.ModuleList(cls_blocks)
        self.norm = norm_layer(o.hidden_dim)
        self.pos_embeder = PositionalEncodingFourier(dim=o.hidden_dim)
        trunc_normal_(self.cls_token, std=0.02)
        self.norm.apply(init_transformer_weights)

        self.default_input_size = (o.image_size, o.image_size)
        self.feature_info = [FeatureInfo("lastCLS", o.hidden_dim, None, "vector", "norm")]
        self.feature_aliases = ["lastMAP"]
        self.default_feature = "lastCLS"
        self.intermediate_features = [f"blocks.{i}" for i in range(o.num_layers)]
        self.checkpoint_xca = o.checkpoint_xca_block or common.use_checkpointing
        self.checkpoint_attn = o.checkpoint_attn_block or common.use_checkpointing
        self.grad_checkpointing = self.checkpoint_xca or self.checkpoint_attn

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every XCA and class-attention block in backward (``CHECKPOINT_XCA_BLOCK`` and
        ``CHECKPOINT_ATTN_BLOCK`` together)."""
        super().set_grad_checkpointing(enable)
        self.checkpoint_xca = self.checkpoint_attn = bool(enable)

    def _patch_tokens(self, x: torch.Tensor):
        """Patch embedding plus positions: ``(B, N, C)`` tokens and their grid."""
        check_image_batch(x, "XCiT")
        x, (Hp, Wp) = self.patch_embed(x)
        x = x + self.pos_embeder(Hp, Wp).to(x.dtype)
        return self.pos_drop(x), (Hp, Wp)

    def _class_attention(self, x: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """Prepend the class token and run the class-attention blocks."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.cls_attn_blocks:
            x = _run_block(blk, self.checkpoint_attn, x, Hp, Wp)
        return x

    def _tokens(self, x: torch.Tensor):
        """Run every block; return all tokens after the last class-attention block, and the grid."""
        x, (Hp, Wp) = self._patch_tokens(x)
        for blk in self.blocks:
            x = _run_block(blk, self.checkpoint_xca, x, Hp, Wp)
        return self._class_attention(x, Hp, Wp), (Hp, Wp)

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """``{name: feature}`` for ``names`` (``lastCLS``, ``lastMAP``; default ``lastCLS``), in one pass."""
        names = requested_features("XCiT", names, FEATURES)
        tokens, (Hp, Wp) = self._tokens(x)
        out: Dict[str, torch.Tensor] = {}
        for name in names:
            if name == "lastCLS":
                out[name] = self.norm(tokens[:, 0])
            else:
                feat = self.norm(tokens[:, 1:])
                out[name] = feat.reshape(feat.shape[0], Hp, Wp, feat.shape[-1])
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the class-attention blocks, normalised: ``(B, 1 + H*W, C)`` (timm's meaning)."""
        tokens, _ = self._tokens(x)
        return self.norm(tokens)

    def _intermediates(self, x, taken, stop, norm, want_final):
        x, (Hp, Wp) = self._patch_tokens(x)
        found = []
        for i, blk in enumerate(self.blocks if stop is None else self.blocks[: stop + 1]):
            x = _run_block(blk, self.checkpoint_xca, x, Hp, Wp)
            if i in taken:
                found.append((self.norm(x) if norm else x, (Hp, Wp)))
        if not want_final:
            return None, found
        return self.norm(self._class_attention(x, Hp, Wp)), found

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """One feature per name, in the order asked, repeats included (as the original)."""
        names = requested_features("XCiT", out_feat_keys, FEATURES)
        feats = self.feature_dict(x, names)
        return [feats[n] for n in names]


def _build(model_config: Mapping, name: str, fsdp: bool) -> XCiT:
    options = XCiTOptions.from_config(model_config["TRUNK"]["XCIT"])
    common = common_options(model_config, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(common.init_seed)
        return XCiT(options, common, num_cls_attn_blocks=options.num_layers if fsdp else 2)


@register_model_trunk("xcit")
def build_xcit(model_config: Mapping, model_name: str = "xcit") -> XCiT:
    """Build the ``xcit`` trunk from ``MODEL`` (reads ``TRUNK.XCIT``)."""
    return _build(model_config, model_name, fsdp=False)


@register_model_trunk("xcit_fsdp")
def build_xcit_fsdp(model_config: Mapping, model_name: str = "xcit_fsdp") -> XCiT:
    """Build ``xcit_fsdp`` as a plain module (no FSDP wrapping), with ``NUM_LAYERS`` class-attention blocks."""
    return _build(model_config, model_name, fsdp=True)
