"""BEiT trunk (``beit``): a ViT with LayerScale and relative-position biases, as in the original.

State-dict layout (the original's, itself BEiT's fine-tuning model): ``cls_token``, ``pos_embed``
(with ``USE_ABS_POS_EMB``), ``patch_embed.proj``, ``rel_pos_bias.*`` (with
``USE_SHARED_REL_POS_BIAS``), ``blocks.<i>.{norm1,attn,norm2,mlp,gamma_1,gamma_2}`` and ``norm``
(absent with ``USE_MEAN_POOLING``, where it is the identity). Attention keeps the original's
``qkv.weight`` without bias plus separate ``q_bias``/``v_bias`` (keys get no bias), and, with
``USE_REL_POS_BIAS``, a ``relative_position_bias_table`` with its integer
``relative_position_index`` buffer (three extra entries for class-token pairs).

Attention runs through ``scaled_dot_product_attention``, the relative-position biases passed as
an additive ``attn_mask``. Inputs must be ``IMAGE_SIZE``, as in the original.

Feature names (the original's): ``lastCLS`` (class token after the last block, also the output
without names), ``blkCLS<i>`` (class token after block ``i``, Python indexing) and
``concatCLS<n>`` (class tokens of the last ``n`` blocks, concatenated); each goes through
``norm``. With ``USE_MEAN_POOLING`` the features are the un-normalised class token: the original
had no mean pooling, only the missing norm.

``MODEL.INPUT_TYPE`` must be rgb or bgr and, as in the original, the input is used as given.
``MODEL.ACTIVATION_CHECKPOINTING`` recomputes each block in backward.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import partial
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import options as opt
from ..layers import trunc_normal_
from ..layers.checkpointing import checkpoint_without_bn_double_update
from ..layers.init import init_transformer_weights
from ..layers.transformer import (
    AttentionBase,
    Mlp,
    PatchEmbed,
    PreNormBlock,
    drop_path_rates,
    interpolate_pos_embed,
    relative_position_bias,
    relative_position_index,
)
from ..registry import register_model_trunk
from ._transformer_common import (
    TransformerTrunk,
    check_image_batch,
    check_patch_fits,
    check_width_fits_heads,
    common_options,
    read_options,
)
from .base import FeatureInfo, TrunkCommon

_FEATURE = re.compile(r"^(lastCLS)$|^blkCLS(-?\d+)$|^concatCLS(\d+)$")


def num_relative_distances(window: Tuple[int, int]) -> int:
    """Rows of BEiT's relative-position table: Swin's patch offsets plus three class-token entries."""
    return (2 * window[0] - 1) * (2 * window[1] - 1) + 3


def beit_relative_position_index(window: Tuple[int, int]) -> torch.Tensor:
    """``(Wh*Ww + 1)^2`` int64 index: patch pairs as in Swin, then the class token's row, column
    and self pair use the last three entries of the table."""
    num_relative = num_relative_distances(window)
    n = window[0] * window[1] + 1
    index = torch.zeros((n, n), dtype=torch.int64)
    index[1:, 1:] = relative_position_index(window)
    index[0, :] = num_relative - 3
    index[:, 0] = num_relative - 2
    index[0, 0] = num_relative - 1
    return index


class RelativePositionBias(nn.Module):
    """A ``(heads, N + 1, N + 1)`` relative-position bias for a ``window`` grid plus the class token.

    Used inside each attention layer (``USE_REL_POS_BIAS``) or once, shared by all blocks
    (``USE_SHARED_REL_POS_BIAS``, module ``rel_pos_bias``). The table starts at zero.
    """

    def __init__(self, window_size: Tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.num_relative_distance = num_relative_distances(window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(self.num_relative_distance, num_heads))
        self.register_buffer("relative_position_index", beit_relative_position_index(self.window_size))

    def forward(self) -> torch.Tensor:
        return relative_position_bias(self.relative_position_bias_table, self.relative_position_index)


class BEiTMlp(Mlp):
    """The shared MLP's ``fc1/fc2`` keys, with dropout only after ``fc2`` (BEiT's BERT-style MLP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class BEiTAttention(AttentionBase):
    """Multi-head self-attention with BEiT's ``q_bias``/``v_bias`` and optional relative-position bias.

    ``qkv`` has no bias of its own (keys get none). With ``window_size``,
    ``relative_position_bias_table`` (zeros at first) and ``relative_position_index`` live directly
    on this module, under the original's keys.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        window_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        super().__init__(dim, num_heads, False, qk_scale, attn_drop, proj_drop)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        if window_size:
            self.window_size = tuple(window_size)
            table = torch.zeros(num_relative_distances(window_size), num_heads)
            self.relative_position_bias_table = nn.Parameter(table)
            self.register_buffer("relative_position_index", beit_relative_position_index(self.window_size))
        else:
            self.window_size = None
            self.relative_position_bias_table = None
            self.relative_position_index = None

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn_bias = None
        if self.relative_position_bias_table is not None:
            attn_bias = relative_position_bias(self.relative_position_bias_table, self.relative_position_index)
        if rel_pos_bias is not None:
            attn_bias = rel_pos_bias if attn_bias is None else attn_bias + rel_pos_bias
        if attn_bias is not None:
            attn_bias = attn_bias.unsqueeze(0).to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=self.dropout_p(), scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, -1)))


class BEiTBlock(PreNormBlock):
    """Pre-norm attention and MLP residuals, scaled by LayerScale ``gamma_1``/``gamma_2`` when
    ``init_values > 0``."""

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
        init_values: float = 0.0,
        norm_layer=nn.LayerNorm,
        window_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        super().__init__(
            dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path, norm_layer=norm_layer,
            attn_layer=partial(BEiTAttention, window_size=window_size), mlp_layer=BEiTMlp,
        )
        if init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1, self.gamma_2 = None, None

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        a = self.attn(self.norm1(x), rel_pos_bias=rel_pos_bias)
        if self.gamma_1 is not None:
            a = self.gamma_1 * a
        x = x + self.drop_path(a)
        m = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            m = self.gamma_2 * m
        return x + self.drop_path(m)


def _layer_scale_init(key: str, value) -> float:
    """``INIT_VALUES``: null or false mean 0 (no LayerScale)."""
    return 0.0 if value in (None, False) else opt.as_float(key, value)


@dataclass(frozen=True)
class BEiTOptions:
    """``MODEL.TRUNK.BEIT``."""

    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    qkv_bias: bool = False
    qk_scale: Optional[float] = None
    use_abs_pos_emb: bool = True
    use_rel_pos_bias: bool = False
    use_shared_rel_pos_bias: bool = False
    use_mean_pooling: bool = True
    init_values: float = 0.0  # 0: no LayerScale

    @classmethod
    def from_config(cls, section: Mapping) -> "BEiTOptions":
        key = "MODEL.TRUNK.BEIT."
        fields = [
            "image_size", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_ratio", "dropout_rate",
            "attention_dropout_rate", "drop_path_rate", "qkv_bias", "qk_scale", ("use_abs_pos_emb", opt.as_bool),
            ("use_rel_pos_bias", opt.as_bool), ("use_shared_rel_pos_bias", opt.as_bool),
            ("use_mean_pooling", opt.as_bool), ("init_values", _layer_scale_init),
        ]
        out = cls(**read_options(section, key, fields))
        check_width_fits_heads(key, out.hidden_dim, out.num_heads)
        check_patch_fits(key, out.image_size, out.patch_size)
        return out


class BEiT(TransformerTrunk):
    """BEiT vision transformer trunk (see the module docstring for keys and feature names)."""

    def __init__(
        self,
        options: BEiTOptions = BEiTOptions(),
        common: TrunkCommon = TrunkCommon(input_type="rgb", apply_input_type=False),
    ) -> None:
        super().__init__(common)
        o = options
        self.options = options
        self.depth = o.num_layers
        self.embed_dim = o.hidden_dim
        norm_layer = lambda dim: nn.LayerNorm(dim, eps=1e-6)  # noqa: E731
        self.patch_embed = PatchEmbed(o.image_size, o.patch_size, 3, o.hidden_dim)
        window = self.patch_embed.feat_map_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, o.hidden_dim))
        if o.use_abs_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, o.hidden_dim))
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(p=o.dropout_rate)
        self.rel_pos_bias = RelativePositionBias(window, o.num_heads) if o.use_shared_rel_pos_bias else None
        dpr = drop_path_rates(o.drop_path_rate, o.num_layers)
        self.blocks = nn.ModuleList(
            BEiTBlock(
                o.hidden_dim, o.num_heads, o.mlp_ratio, o.qkv_bias, o.qk_scale, o.dropout_rate,
                o.attention_dropout_rate, dpr[i], o.init_values, norm_layer,
                window if o.use_rel_pos_bias else None,
            )
            for i in range(o.num_layers)
        )
        self.norm = nn.Identity() if o.use_mean_pooling else norm_layer(o.hidden_dim)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_transformer_weights)
        with torch.no_grad():
            # Residual projections of deeper blocks start smaller: weight / sqrt(2 * (i + 1)).
            for i, blk in enumerate(self.blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

        self.default_input_size = (o.image_size, o.image_size)
        self.feature_info = (
            [FeatureInfo("lastCLS", o.hidden_dim, None, "vector", "norm")]
            + [FeatureInfo(f"blkCLS{i}", o.hidden_dim, None, "vector", f"blocks.{i}") for i in range(self.depth)]
            + [FeatureInfo(f"concatCLS{n}", n * o.hidden_dim, None, "vector", "norm") for n in range(1, self.depth + 1)]
        )
        self.default_feature = "lastCLS"
        self.intermediate_features = [f"blocks.{i}" for i in range(self.depth)]
        # Names parsed once here; forward only looks them up (negative block indices parse per call).
        self._requests = {f.name: self._parse(f.name) for f in self.feature_info}

    def _parse(self, name: str) -> Tuple[str, int]:
        match = _FEATURE.match(name)
        if match is not None:
            last, blk, concat = match.groups()
            if last:
                return "last", self.depth - 1
            if blk is not None and -self.depth <= int(blk) < self.depth:
                return "blk", int(blk) % self.depth
            if concat is not None and 1 <= int(concat) <= self.depth:
                return "concat", int(concat)
        raise ValueError(
            f"feature {name!r} does not exist in this BEiT trunk of {self.depth} blocks; valid names: "
            f"lastCLS, blkCLS<i> (-{self.depth} <= i < {self.depth}), concatCLS<n> (1 <= n <= {self.depth})"
        )

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token prepended and the absolute positions added."""
        check_image_batch(x, "BEiT")
        H, W = x.shape[-2:]
        if (H, W) != tuple(self.patch_embed.img_size):
            raise ValueError(
                f"the BEiT trunk takes {self.patch_embed.img_size[0]}x{self.patch_embed.img_size[1]} images "
                f"(MODEL.TRUNK.BEIT.IMAGE_SIZE), got {H}x{W}"
            )
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def _run_block(self, blk: nn.Module, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint_without_bn_double_update(blk, x, rel_pos_bias)
        return blk(x, rel_pos_bias=rel_pos_bias)

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """``{name: feature}`` for ``names`` (default ``lastCLS``), running the blocks once, up to
        the last one needed."""
        requests = {n: self._requests.get(n) or self._parse(n) for n in (names or ["lastCLS"])}
        needed = set()
        for kind, v in requests.values():
            needed.update(range(self.depth - v, self.depth) if kind == "concat" else [v])
        x = self.prepare_tokens(x)
        rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        cls: Dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(needed) + 1]):
            x = self._run_block(blk, x, rel_pos_bias)
            if i in needed:
                cls[i] = self.norm(x[:, 0])  # the norm is per token: the class token's alone suffices
        out: Dict[str, torch.Tensor] = {}
        for name, (kind, v) in requests.items():
            if kind == "concat":
                out[name] = torch.cat([cls[i] for i in range(self.depth - v, self.depth)], dim=-1)
            else:
                out[name] = cls[v]
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token of the last block through ``norm``: ``(B, 1 + H*W, C)`` (timm's meaning)."""
        x = self.prepare_tokens(x)
        rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        for blk in self.blocks:
            x = self._run_block(blk, x, rel_pos_bias)
        return self.norm(x)

    def _intermediates(self, x, taken, stop, norm, want_final):
        grid = self.patch_embed.feat_map_size
        x = self.prepare_tokens(x)
        rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        found = []
        for i, blk in enumerate(self.blocks if stop is None else self.blocks[: stop + 1]):
            x = self._run_block(blk, x, rel_pos_bias)
            if i in taken:
                found.append(((self.norm(x) if norm else x)[:, 1:], grid))
        return (self.norm(x) if want_final else None), found

    @torch.no_grad()
    def resize_pos_embed(self, size: int) -> None:
        """Make ``size`` the trunk's (square) input size, in place: the absolute positional
        embedding is resampled bicubically as the vision transformer does, the relative-position
        tables (offsets grid; the three class-token entries kept) bicubically to the new window."""
        size = opt.as_int("resize_pos_embed: size", size, minimum=1)
        check_patch_fits("resize_pos_embed: ", size, self.patch_embed.patch_size[0])
        old_grid = self.patch_embed.feat_map_size
        self.patch_embed.set_img_size(size)
        grid = self.patch_embed.feat_map_size
        if self.pos_embed is not None:
            pos = interpolate_pos_embed(self.pos_embed, 1 + grid[0] * grid[1], old_grid, grid, 1)
            self.pos_embed = nn.Parameter(pos.clone(), requires_grad=self.pos_embed.requires_grad)
        tables = [self.rel_pos_bias] if self.rel_pos_bias is not None else []
        tables += [blk.attn for blk in self.blocks if blk.attn.relative_position_bias_table is not None]
        for module in tables:
            module.relative_position_bias_table = nn.Parameter(
                resize_relative_position_table(module.relative_position_bias_table, old_grid, grid),
                requires_grad=module.relative_position_bias_table.requires_grad,
            )
            module.window_size = tuple(grid)
            index = beit_relative_position_index(grid).to(module.relative_position_index.device)
            module.register_buffer("relative_position_index", index)
        self.options = replace(self.options, image_size=size)
        self.default_input_size = (size, size)

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """One feature per name, in the order asked, repeats included (as the original)."""
        names = list(out_feat_keys or ["lastCLS"])
        feats = self.feature_dict(x, names)
        return [feats[n] for n in names]


def resize_relative_position_table(table: torch.Tensor, window: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
    """A BEiT relative-position table for ``window`` resampled for ``new``: the
    ``(2Wh-1) x (2Ww-1)`` offsets grid bicubically, the three class-token rows kept."""
    if tuple(window) == tuple(new):
        return table.clone()
    heads = table.shape[1]
    src = (2 * window[0] - 1, 2 * window[1] - 1)
    dst = (2 * new[0] - 1, 2 * new[1] - 1)
    grid = table[: src[0] * src[1]].T.reshape(1, heads, src[0], src[1])
    grid = F.interpolate(grid.float(), size=dst, mode="bicubic", align_corners=False).to(table.dtype)
    return torch.cat((grid.reshape(heads, -1).T, table[src[0] * src[1]:]), dim=0)


@register_model_trunk("beit")
def build_beit(model_config: Mapping, model_name: str = "beit") -> BEiT:
    """Build the ``beit`` trunk from ``MODEL`` (reads ``TRUNK.BEIT``; ``INPUT_TYPE`` must be rgb or bgr)."""
    options = BEiTOptions.from_config(model_config["TRUNK"]["BEIT"])
    return BEiT(options, common_options(model_config, model_name))
