"""Vision Transformer trunk ``classy_vit``: classy_vision's ViT, re-built on PyTorch's fused attention.

The original wrapped ``classy_vision.models.VisionTransformer`` under the attribute ``model``, so
the keys are ``model.class_token``, ``model.conv_proj.*``, ``model.encoder.pos_embedding``
(``(seq, 1, dim)``), ``model.encoder.layers.layer_<i>.{ln_1, self_attention, ln_2, mlp}.*`` and
``model.encoder.ln.*``; classy_vision ViT weights load once their keys get the ``model.`` prefix.
Here the same parameters run batch-first through ``scaled_dot_product_attention`` (no
``ClassyModel`` wrapper, so the trunk compiles), and the outputs equal classy_vision's.

The trunk returns one feature: the final class token (``CLASSIFIER: token``) or the mean of all
tokens (``gap``). As in the original, ``out_feat_keys`` does not select anything (configs name it
e.g. ``avgpool``); one name is accepted, more raise. Only ``IMAGE_SIZE`` inputs are accepted, as
in classy_vision, and ``MODEL.INPUT_TYPE`` must be ``rgb`` or ``bgr`` (the input is used as given).
``VISION_TRANSFORMERS`` keys the original did not pass to classy_vision (``QKV_BIAS``,
``DROP_PATH_RATE``, ...) have no effect.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import lecun_normal_init
from ..layers.transformer import MLPBlock, resample_token_grid
from ..registry import register_model_trunk
from ..config import options as opt
from ..layers.checkpointing import checkpoint_without_bn_double_update
from ._transformer_common import (
    TransformerTrunk,
    check_divisible,
    check_patch_fits,
    check_width_fits_heads,
    choice_of,
    common_options,
    non_negative_int,
    read_options,
)
from .base import FeatureInfo, TrunkCommon, check_single_feature

CLASSIFIERS = ("token", "gap")


@dataclass(frozen=True)
class ClassyViTOptions:
    """The ``MODEL.TRUNK.VISION_TRANSFORMERS`` keys the original passed to classy_vision."""

    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    classifier: str = "token"

    @classmethod
    def from_config(cls, section: Mapping) -> "ClassyViTOptions":
        key = "MODEL.TRUNK.VISION_TRANSFORMERS."
        fields = [
            "image_size", "patch_size", ("num_layers", non_negative_int), "num_heads", "hidden_dim", "mlp_dim",
            "dropout_rate", "attention_dropout_rate", ("classifier", choice_of(CLASSIFIERS)),
        ]
        options = cls(**read_options(section, key, fields))
        options.validate(key)
        return options

    def validate(self, key: str = "") -> None:
        """Raise a ``ConfigError`` for combinations classy_vision rejects."""
        check_patch_fits(key, self.image_size, self.patch_size)
        check_divisible(key, "IMAGE_SIZE", self.image_size, "PATCH_SIZE", self.patch_size)
        check_width_fits_heads(key, self.hidden_dim, self.num_heads)


class PackedSelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj``), on batch-first ``(B, N, C)`` tokens through the fused SDPA kernel."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = float(dropout)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.MultiheadAttention's initialisation; out_proj.weight keeps nn.Linear's default.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.out_proj(x.transpose(1, 2).reshape(B, N, C))


class EncoderBlock(nn.Module):
    """Pre-norm transformer layer: ``x + dropout(attn(ln_1(x)))``, then ``x + mlp(ln_2(x))``."""

    def __init__(
        self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout_rate: float, attention_dropout_rate: float
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = PackedSelfAttention(hidden_dim, num_heads, attention_dropout_rate)
        self.dropout = nn.Dropout(dropout_rate)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout_rate)
        # classy_vision's MLP initialisation.
        for linear in (self.mlp.linear_1, self.mlp.linear_2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Positional embedding ``(seq, 1, dim)`` (classy_vision's sequence-first shape), layers, final norm."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout_rate: float,
        attention_dropout_rate: float,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(seq_length, 1, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout_rate)
        self.layers = nn.Sequential(
            OrderedDict(
                (f"layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout_rate, attention_dropout_rate))
                for i in range(num_layers)
            )
        )
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(
        self, x: torch.Tensor, stop: Optional[int] = None, checkpointing: bool = False
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Tokens after layers ``0..stop`` (None: all): the last ones un-normalised, and every layer's."""
        x = self.dropout(x + self.pos_embedding.transpose(0, 1))
        outs = []
        for layer in self.layers if stop is None else self.layers[: stop + 1]:
            if checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint_without_bn_double_update(layer, x)
            else:
                x = layer(x)
            outs.append(x)
        return x, outs


class ClassyVisionTransformer(nn.Module):
    """classy_vision's ``VisionTransformer`` (without a conv stem), batch-first inside.

    ``forward`` maps ``(B, 3, IMAGE_SIZE, IMAGE_SIZE)`` images to ``(B, hidden_dim)``.
    """

    def __init__(self, options: ClassyViTOptions = ClassyViTOptions()) -> None:
        super().__init__()
        options.validate()
        self.image_size = options.image_size
        self.patch_size = options.patch_size
        self.hidden_dim = options.hidden_dim
        self.classifier = options.classifier
        self.grad_checkpointing = False
        self.conv_proj = nn.Conv2d(3, options.hidden_dim, kernel_size=options.patch_size, stride=options.patch_size)
        seq_length = (options.image_size // options.patch_size) ** 2
        if options.classifier == "token":
            self.class_token = nn.Parameter(torch.zeros(1, 1, options.hidden_dim))
            seq_length += 1
        self.seq_length = seq_length
        self.encoder = Encoder(
            seq_length,
            options.num_layers,
            options.num_heads,
            options.hidden_dim,
            options.mlp_dim,
            options.dropout_rate,
            options.attention_dropout_rate,
        )
        self.trunk_output = nn.Identity()
        kh, kw = self.conv_proj.kernel_size
        lecun_normal_init(self.conv_proj.weight, fan_in=self.conv_proj.in_channels * kh * kw)
        nn.init.zeros_(self.conv_proj.bias)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.classifier == "token" else 0

    def encode(self, x: torch.Tensor, stop: Optional[int] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Patch tokens (class token first with ``token``) through the encoder layers ``0..stop``:
        the last tokens un-normalised, and every layer's."""
        if x.ndim != 4 or x.shape[-2] != self.image_size or x.shape[-1] != self.image_size:
            raise ValueError(
                f"classy_vit takes (B, 3, {self.image_size}, {self.image_size}) images "
                f"(VISION_TRANSFORMERS.IMAGE_SIZE), got shape {tuple(x.shape)}"
            )
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        if self.classifier == "token":
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x, stop, self.grad_checkpointing)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the final LayerNorm: ``(B, tokens, hidden_dim)``."""
        return self.encoder.ln(self.encode(x)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = x[:, 0] if self.classifier == "token" else x.mean(dim=1)
        return self.trunk_output(x)


class ClassyViT(TransformerTrunk):
    """The ``classy_vit`` trunk: a :class:`ClassyVisionTransformer` under ``model``.

    Its one feature is ``lastCLS`` (``CLASSIFIER: token``) or ``lastPOOL`` (``gap``); ``forward``
    returns it whatever single name is asked, as the original.
    """

    def __init__(
        self,
        options: ClassyViTOptions = ClassyViTOptions(),
        common: TrunkCommon = TrunkCommon(input_type="rgb", apply_input_type=False),
    ) -> None:
        super().__init__(common)
        self.options = options
        self.model = ClassyVisionTransformer(options)
        self.default_input_size = (options.image_size, options.image_size)
        self.default_feature = "lastCLS" if options.classifier == "token" else "lastPOOL"
        self.feature_info = [FeatureInfo(self.default_feature, options.hidden_dim, None, "vector", "model.encoder.ln")]
        self.intermediate_features = [f"model.encoder.layers.layer_{i}" for i in range(options.num_layers)]
        self.set_grad_checkpointing(common.use_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder layer in backward (``MODEL.ACTIVATION_CHECKPOINTING`` at build)."""
        super().set_grad_checkpointing(enable)
        self.model.grad_checkpointing = bool(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the encoder's final LayerNorm: ``(B, tokens, hidden_dim)`` (timm's meaning)."""
        return self.model.forward_features(x)

    def feature_dict(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """``{default_feature: (B, hidden_dim)}``."""
        names = list(names) if names else [self.default_feature]
        self.check_feature_names(names)
        feat = self.model(x)
        return {n: feat for n in names}

    def _intermediates(self, x, taken, stop, norm, want_final):
        grid = (self.model.image_size // self.model.patch_size,) * 2
        x, outs = self.model.encode(x, stop)
        ln, prefix = self.model.encoder.ln, self.model.num_prefix_tokens
        found = [((ln(y) if norm else y)[:, prefix:], grid) for i, y in enumerate(outs) if i in taken]
        return (ln(x) if want_final else None), found

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """``[feature]`` whatever one name is asked (as the original); more than one name raises."""
        check_single_feature("classy_vit", out_feat_keys)
        return [self.model(x)]

    def interpolate_position_embedding(self, pos_embedding: torch.Tensor, grid: Optional[int] = None) -> torch.Tensor:
        """Resize a checkpoint's ``model.encoder.pos_embedding`` ``(seq, 1, dim)`` to this model's grid
        (or to ``grid`` patches a side).

        As classy_vision's ``set_classy_state``: the class-token row is kept, the patch grid is
        resized bicubically with ``align_corners=True``.
        """
        seq_length, n, dim = pos_embedding.shape
        if n != 1 or dim != self.model.hidden_dim:
            raise ValueError(
                f"position embedding of shape {tuple(pos_embedding.shape)}, expected (seq, 1, {self.model.hidden_dim})"
            )
        n_token = self.model.num_prefix_tokens
        new_grid = self.model.image_size // self.model.patch_size if grid is None else grid
        if seq_length == n_token + new_grid * new_grid:
            return pos_embedding
        old_grid = math.isqrt(seq_length - n_token)
        if old_grid * old_grid != seq_length - n_token:
            raise ValueError(f"position embedding of length {seq_length} does not hold a square patch grid")
        img = resample_token_grid(
            pos_embedding[n_token:].transpose(0, 1), (old_grid, old_grid), size=new_grid, mode="bicubic",
            align_corners=True,
        )
        return torch.cat([pos_embedding[:n_token], img.transpose(0, 1)], dim=0)

    @torch.no_grad()
    def resize_pos_embed(self, size: int) -> None:
        """Make ``size`` the trunk's (square) input size, in place, resizing the positional
        embedding the way classy_vision loads a checkpoint made at another size."""
        size = opt.as_int("resize_pos_embed: size", size, minimum=1)
        check_patch_fits("resize_pos_embed: ", size, self.model.patch_size)
        old = self.model.encoder.pos_embedding
        pos = self.interpolate_position_embedding(old.detach(), size // self.model.patch_size)
        self.model.encoder.pos_embedding = nn.Parameter(pos.clone(), requires_grad=old.requires_grad)
        self.model.image_size = size
        self.model.seq_length = pos.shape[0]
        self.options = replace(self.options, image_size=size)
        self.default_input_size = (size, size)


@register_model_trunk("classy_vit")
def build_classy_vit(model_config: Mapping, model_name: str = "classy_vit") -> ClassyViT:
    """Build ``classy_vit`` from ``MODEL`` (reads ``TRUNK.VISION_TRANSFORMERS`` and the shared options:
    rgb or bgr input, used as given; activation checkpointing)."""
    options = ClassyViTOptions.from_config(model_config["TRUNK"]["VISION_TRANSFORMERS"])
    return ClassyViT(options, common_options(model_config, model_name))
