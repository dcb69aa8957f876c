"""ConViT trunk (``convit``): a ViT whose first layers use gated positional self-attention (GPSA).

A GPSA head mixes content attention with attention over relative patch positions, gated per
head by ``sigmoid(alpha)``; with the local initialisation every head starts as one tap of a
convolution kernel (d'Ascoli et al., 2021). Keys follow the original: ``class_token``,
``pos_embedding`` (patches only, ``(1, grid**2, dim)``), ``patch_embed.proj``,
``blocks.<i>.{norm1, attn, norm2, mlp.linear_1, mlp.linear_2}`` and ``norm``. GPSA layers hold
``attn.{alpha, qk, v, proj, pos_proj}``, the other layers ``attn.{qkv, proj}``.

The class token joins after the GPSA layers (``CLASS_TOKEN_IN_LOCAL_LAYERS: false``); the output
is the final class token (``CLASSIFIER: token``) or the mean of all tokens (``gap``). The trunk
returns one feature and, like the original, does not select by ``out_feat_keys`` (one name is
accepted, more raise). Crops of another size use the positional embedding resized bicubically,
as in the original; ``resize_pos_embed`` stores it for a new size. ``MODEL.INPUT_TYPE`` must be
rgb or bgr, and images are used as given, with 3 channels (the original did not read the key).
``MODEL.ACTIVATION_CHECKPOINTING`` (``set_grad_checkpointing``) recomputes each block in backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..config.loader import ConfigError
from ..layers import trunc_normal_
from ..layers.checkpointing import checkpoint_without_bn_double_update
from ..layers.drop import drop_path_rates, optional_drop_path
from ..layers.init import init_linear_trunc_normal, init_transformer_weights
from ..layers.transformer import Attention, MLPBlock, PatchEmbed, attention_scale, resample_token_grid
from ..registry import register_model_trunk
from ._transformer_common import (
    TransformerTrunk,
    check_divisible,
    check_no_hybrid,
    check_patch_fits,
    check_width_fits_heads,
    choice_of,
    common_options,
    non_negative_int,
    optional_qk_scale,
    positive_int,
    read_options,
)
from .base import FeatureInfo, TrunkCommon, check_single_feature
from .classy_vit import CLASSIFIERS


@dataclass(frozen=True)
class ConViTOptions:
    """``MODEL.TRUNK.CONVIT`` together with the ``VISION_TRANSFORMERS`` keys the original reads."""

    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 9
    hidden_dim: int = 576
    mlp_dim: int = 2304
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    classifier: str = "token"
    qkv_bias: bool = False
    qk_scale: Optional[float] = None
    n_gpsa_layers: int = 10
    class_token_in_local_layers: bool = False
    locality_strength: float = 1.0
    locality_dim: int = 10
    use_local_init: bool = True

    @classmethod
    def from_config(cls, trunk_config: Mapping) -> "ConViTOptions":
        """Read ``TRUNK.VISION_TRANSFORMERS`` and ``TRUNK.CONVIT`` (``trunk_config`` is ``MODEL.TRUNK``)."""
        vit, convit = trunk_config["VISION_TRANSFORMERS"], trunk_config["CONVIT"]
        vkey, ckey = "MODEL.TRUNK.VISION_TRANSFORMERS.", "MODEL.TRUNK.CONVIT."
        check_no_hybrid(vit, vkey)
        vit_fields = [
            "image_size", "patch_size", ("num_layers", non_negative_int), "num_heads", "hidden_dim", "mlp_dim",
            "dropout_rate", "attention_dropout_rate", "drop_path_rate", ("classifier", choice_of(CLASSIFIERS)),
            "qkv_bias", "qk_scale",
        ]
        vit_options = read_options(vit, vkey, vit_fields)
        qkv_bias, qk_scale = vit_options["qkv_bias"], vit_options["qk_scale"]
        # The original merged CONVIT under VISION_TRANSFORMERS, so these two keys in CONVIT were
        # overridden; a different value there would silently not apply, hence the error.
        if "QKV_BIAS" in convit and opt.as_bool(ckey + "QKV_BIAS", convit["QKV_BIAS"]) != qkv_bias:
            raise ConfigError(
                f"{ckey}QKV_BIAS: {convit['QKV_BIAS']!r} differs from {vkey}QKV_BIAS ({qkv_bias}), which is "
                "the one that applies; set it under VISION_TRANSFORMERS"
            )
        if "QK_SCALE" in convit and optional_qk_scale(ckey + "QK_SCALE", convit["QK_SCALE"]) != qk_scale:
            raise ConfigError(
                f"{ckey}QK_SCALE: {convit['QK_SCALE']!r} differs from {vkey}QK_SCALE ({vit['QK_SCALE']!r}), "
                "which is the one that applies; set it under VISION_TRANSFORMERS"
            )
        convit_fields = [
            ("n_gpsa_layers", non_negative_int), ("class_token_in_local_layers", opt.as_bool),
            ("locality_strength", opt.as_float), ("locality_dim", positive_int), ("use_local_init", opt.as_bool),
        ]
        options = cls(**vit_options, **read_options(convit, ckey, convit_fields))
        options.validate(vkey, ckey)
        return options

    def validate(self, vkey: str = "", ckey: str = "") -> None:
        """Raise a ``ConfigError`` for combinations the original rejects or cannot run."""
        check_patch_fits(vkey, self.image_size, self.patch_size)
        check_divisible(vkey, "IMAGE_SIZE", self.image_size, "PATCH_SIZE", self.patch_size)
        check_width_fits_heads(vkey, self.hidden_dim, self.num_heads)
        if self.class_token_in_local_layers and self.n_gpsa_layers > 0:
            # GPSA's relative positions cover the square patch grid only; the original fails in
            # its first forward with this combination.
            raise ConfigError(
                f"{ckey}CLASS_TOKEN_IN_LOCAL_LAYERS: true needs N_GPSA_LAYERS: 0 (got {self.n_gpsa_layers}); "
                "gated positional attention works on the patch grid without the class token"
            )


def relative_positions(grid: int, device=None, dtype=None) -> torch.Tensor:
    """``(N, N, 3)`` with ``N = grid**2``: column offset, row offset and squared distance from
    patch ``n`` to patch ``m`` (row-major patch order)."""
    idx = torch.arange(grid * grid, device=device)
    row, col = idx // grid, idx % grid
    dx = col[None, :] - col[:, None]
    dy = row[None, :] - row[:, None]
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1).to(dtype)


class GPSA(nn.Module):
    """Gated positional self-attention on ``(B, N, C)`` patch tokens (``N`` a square grid).

    Positional scores come from ``pos_proj`` applied to the relative-position features, which
    repeat each of (dx, dy, d**2) ``locality_dim`` times; they are divided by ``locality_dim``
    and softmaxed, then mixed with content attention as
    ``(1 - sigmoid(alpha)) * content + sigmoid(alpha) * positional``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 9,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
        locality_dim: int = 10,
        use_local_init: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"GPSA: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.scale = attention_scale(dim // num_heads, qk_scale)
        self.locality_strength = locality_strength
        self.locality_dim = locality_dim
        self.use_local_init = use_local_init
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3 * locality_dim, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.alpha = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.qk, self.v, self.proj, self.pos_proj):
            init_linear_trunc_normal(m)
        nn.init.ones_(self.alpha)
        if self.use_local_init:
            self.init_local()

    @torch.no_grad()
    def init_local(self) -> None:
        """Make the layer a convolution at start: ``v`` is the identity and head ``h1 + k * h2``
        (``k = isqrt(num_heads)``) attends around the patch at column offset ``h2 - center`` and
        row offset ``h1 - center``; ``locality_strength`` sharpens the focus."""
        self.v.weight.copy_(torch.eye(self.dim))
        k = math.isqrt(self.num_heads)
        center = (k - 1) / 2
        d = self.locality_dim
        w = self.pos_proj.weight
        for h1 in range(k):
            for h2 in range(k):
                head = h1 + k * h2
                # logit = 2 * (offset . rel) - |rel|**2 = |offset|**2 - |rel - offset|**2: peaks at offset
                w[head, :d] = 2 * (h2 - center)
                w[head, d : 2 * d] = 2 * (h1 - center)
                w[head, 2 * d :] = -1
        w.mul_(self.locality_strength)

    def positional_attention(self, num_tokens: int, grid: Optional[int] = None) -> torch.Tensor:
        """Softmaxed positional scores ``(1, heads, N, N)``; they do not depend on the batch.

        ``grid`` (the side of the square patch grid) defaults to ``sqrt(num_tokens)``; callers that
        know it pass it, which keeps the computation symbolic under ``torch.compile``.
        """
        if grid is None:
            grid = math.isqrt(num_tokens)
        if grid * grid != num_tokens:
            raise ValueError(f"GPSA needs the tokens of a square patch grid, got {num_tokens}")
        # pos_proj sees each relative feature repeated locality_dim times, so summing its weights
        # per group gives the same logits from a (N, N, 3) input instead of (B, N, N, 3 * d).
        weight = self.pos_proj.weight.unflatten(1, (3, self.locality_dim)).sum(-1)
        rel = relative_positions(grid, self.pos_proj.weight.device, weight.dtype)
        logits = F.linear(rel, weight, self.pos_proj.bias).permute(2, 0, 1) / self.locality_dim
        return logits.softmax(dim=-1).unsqueeze(0)

    def _qkv(self, x: torch.Tensor):
        B, N, C = x.shape
        q, k = self.qk(x).reshape(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)
        return q, k, v

    def _gated(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.alpha)
        content = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn = (1.0 - gate) * content + gate * pos
        return attn / attn.sum(dim=-1, keepdim=True)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Gated attention weights ``(B, heads, N, N)`` (for visualisation)."""
        q, k, _ = self._qkv(x)
        return self._gated(q, k, self.positional_attention(x.shape[1]))

    def forward(self, x: torch.Tensor, grid: Optional[int] = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        pos = self.positional_attention(N, grid)
        if self.training and self.attn_drop.p > 0:
            out = self.attn_drop(self._gated(q, k, pos)) @ v
        else:
            # Each mixture row sums to one, so the mix of the two attention outputs equals the
            # output of the mixed attention, and the content part can use the fused kernel.
            gate = torch.sigmoid(self.alpha)
            content = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            out = (1.0 - gate) * content + gate * (pos.to(v.dtype) @ v)
        out = out.to(v.dtype).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class ConViTBlock(nn.Module):
    """``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, attn: nn.Module, dim: int, mlp_dim: int, dropout_rate: float, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.positional = isinstance(attn, GPSA)
        self.drop_path = optional_drop_path(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dropout_rate)

    def forward(self, x: torch.Tensor, grid: Optional[int] = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop_path(self.attn(h, grid) if self.positional else self.attn(h))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConViT(TransformerTrunk):
    """ConViT: ``n_gpsa_layers`` GPSA layers, then multi-head self-attention layers.

    ``forward(x)`` returns ``[feature]`` with ``feature`` of shape ``(B, hidden_dim)``.
    Initialisation: truncated normal (std 0.02) for linear layers and the embeddings, then, with
    ``use_local_init``, the convolution-like GPSA init. (The original applied its generic init after
    the local one and so erased it, which made ``USE_LOCAL_INIT`` a no-op; here the option works.)
    """

    def __init__(
        self,
        options: ConViTOptions = ConViTOptions(),
        common: TrunkCommon = TrunkCommon(input_type="rgb", apply_input_type=False),
    ) -> None:
        super().__init__(common)
        options.validate()
        self.options = options
        self.classifier = options.classifier
        self.n_gpsa_layers = options.n_gpsa_layers
        self.class_token_in_local_layers = options.class_token_in_local_layers
        self.embed_dim = self.hidden_dim = dim = options.hidden_dim
        self.image_size, self.patch_size = options.image_size, options.patch_size
        self.patch_embed = PatchEmbed(img_size=options.image_size, patch_size=options.patch_size, in_chans=3, embed_dim=dim)
        self.seq_length = self.patch_embed.num_patches
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, self.seq_length, dim))
        self.pos_drop = nn.Dropout(options.dropout_rate)

        rates = drop_path_rates(options.drop_path_rate, options.num_layers)
        blocks = []
        for i in range(options.num_layers):
            if i < options.n_gpsa_layers:
                strength = options.locality_strength if options.locality_strength > 0 else 1.0 / (i + 1)
                attn = GPSA(
                    dim,
                    options.num_heads,
                    options.qkv_bias,
                    options.qk_scale,
                    options.attention_dropout_rate,
                    options.dropout_rate,
                    locality_strength=strength,
                    locality_dim=options.locality_dim,
                    use_local_init=options.use_local_init,
                )
            else:
                attn = Attention(
                    dim,
                    num_heads=options.num_heads,
                    qkv_bias=options.qkv_bias,
                    qk_scale=options.qk_scale,
                    attn_drop=options.attention_dropout_rate,
                    proj_drop=options.dropout_rate,
                )
            blocks.append(ConViTBlock(attn, dim, options.mlp_dim, options.dropout_rate, rates[i]))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)
        self.reset_parameters()

        self.default_input_size = (options.image_size, options.image_size)
        self.default_feature = "lastCLS" if self.classifier == "token" else "lastPOOL"
        self.feature_info = [FeatureInfo(self.default_feature, dim, None, "vector", "norm")]
        self.intermediate_features = [f"blocks.{i}" for i in range(options.num_layers)]

    def reset_parameters(self) -> None:
        trunc_normal_(self.pos_embedding, std=0.02)
        trunc_normal_(self.class_token, std=0.02)
        self.apply(init_transformer_weights)
        for m in self.modules():
            if isinstance(m, GPSA) and m.use_local_init:
                m.init_local()

    def no_weight_decay(self):
        """Parameter names the original exempted from weight decay (sic: it names the embeddings so)."""
        return {"pos_embedding", "class_token"}

    def _pos_embedding_for(self, grid: int) -> torch.Tensor:
        """The positional embedding for a ``grid x grid`` patch grid, resized bicubically when it
        differs from the stored one, as the original.

        The original passed ``scale_factor=sqrt(N / N0)``; an explicit output size gives the same
        sampling (the two scales differ by float rounding only) and the right size also where that
        factor rounds down a row, in which case the original fails.
        """
        grid0 = self.image_size // self.patch_size
        if grid == grid0:
            return self.pos_embedding
        return resample_token_grid(self.pos_embedding, (grid0, grid0), size=(grid, grid), mode="bicubic")

    def _run_block(self, block: nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint_without_bn_double_update(block, x, grid)
        return block(x, grid)

    def _blocks(self, x: torch.Tensor, stop: Optional[int] = None, taken=(), norm: bool = False):
        """Run the blocks up to ``stop`` (None: all) on ``(B, 3, H, W)`` square images; return the
        tokens and the patch tokens of the blocks in ``taken`` (class token stripped)."""
        if x.ndim != 4 or x.shape[-2] != x.shape[-1]:
            raise ValueError(f"convit takes square (B, 3, H, W) images, got shape {tuple(x.shape)}")
        B, grid = x.shape[0], x.shape[-1] // self.patch_size
        x = self.patch_embed(x)
        x = self.pos_drop(x + self._pos_embedding_for(grid))
        class_tokens = self.class_token.expand(B, -1, -1)
        if self.class_token_in_local_layers:
            x = torch.cat((class_tokens, x), dim=1)
        found = []
        for i, block in enumerate(self.blocks if stop is None else self.blocks[: stop + 1]):
            if i == self.n_gpsa_layers and not self.class_token_in_local_layers:
                x = torch.cat((class_tokens, x), dim=1)
            x = self._run_block(block, x, grid)
            if i in taken:
                y = self.norm(x) if norm else x
                prefix = 1 if self.class_token_in_local_layers or i >= self.n_gpsa_layers else 0
                found.append((y[:, prefix:], (grid, grid)))
        return x, found

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token of the last block, normalised: ``(B, 1 + H*W, hidden_dim)`` (timm's meaning)."""
        return self.norm(self._blocks(x)[0])

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """``{default_feature: (B, hidden_dim)}``: the final class token (``lastCLS``, ``CLASSIFIER:
        token``) or the mean of all tokens (``lastPOOL``, ``gap``)."""
        names = list(names) if names else [self.default_feature]
        self.check_feature_names(names)
        x = self.forward_features(x)
        feat = x[:, 0] if self.classifier == "token" else x.mean(dim=1)
        return {n: feat for n in names}

    def _intermediates(self, x, taken, stop, norm, want_final):
        x, found = self._blocks(x, stop, taken, norm)
        return (self.norm(x) if want_final else None), found

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """``[feature]`` whatever one name is asked (as the original); more than one name raises."""
        check_single_feature("convit", out_feat_keys)
        return [self.feature_dict(x)[self.default_feature]]

    @torch.no_grad()
    def resize_pos_embed(self, size: int) -> None:
        """Make ``size`` the trunk's (square) input size, in place: ``pos_embedding`` is resized
        bicubically, as a forward at that size would do it, and stored."""
        size = opt.as_int("resize_pos_embed: size", size, minimum=1)
        check_patch_fits("resize_pos_embed: ", size, self.patch_size)
        pos = self._pos_embedding_for(size // self.patch_size)
        self.pos_embedding = nn.Parameter(pos.clone(), requires_grad=self.pos_embedding.requires_grad)
        self.image_size = size
        self.patch_embed.set_img_size(size)
        self.seq_length = self.patch_embed.num_patches
        self.options = replace(self.options, image_size=size)
        self.default_input_size = (size, size)

    def interpolate_position_embedding(self, pos_embedding: torch.Tensor) -> torch.Tensor:
        """Resize a checkpoint's ``pos_embedding`` ``(1, seq, dim)`` to this model's grid (bicubic,
        ``align_corners=True``), for fine-tuning at another resolution."""
        n, seq_length, dim = pos_embedding.shape
        if n != 1 or dim != self.embed_dim:
            raise ValueError(
                f"position embedding of shape {tuple(pos_embedding.shape)}, expected (1, seq, {self.embed_dim})"
            )
        if seq_length == self.seq_length:
            return pos_embedding
        grid = math.isqrt(seq_length)
        if grid * grid != seq_length:
            raise ValueError(f"position embedding of length {seq_length} is not a square patch grid")
        new_grid = self.image_size // self.patch_size
        return resample_token_grid(pos_embedding, (grid, grid), size=new_grid, mode="bicubic", align_corners=True)


@register_model_trunk("convit")
def build_convit(model_config: Mapping, model_name: str = "convit") -> ConViT:
    """Build ``convit`` from ``MODEL`` (reads ``TRUNK.VISION_TRANSFORMERS``, ``TRUNK.CONVIT`` and the
    shared options: rgb or bgr input, used as given; activation checkpointing)."""
    return ConViT(ConViTOptions.from_config(model_config["TRUNK"]), common_options(model_config, model_name))
