"""Vision transformer trunks (``vision_transformer``, ``vision_transformer_fsdp``): ViT / DeiT.

Options, state_dict keys (``cls_token, pos_embed, patch_embed.proj, blocks.<i>.*, norm,
patch_masking.masked_embed``), feature names, positional-embedding interpolation for other input
sizes, and masked image modeling (iBOT mask tokens, MSN token dropping) follow the original.
Attention runs through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..config import ConfigError
from ..config import options as opt
from ..layers.init import init_transformer_weights, trunc_normal_
from ..layers.transformer import Block, Fp32LayerNorm, PatchEmbed, drop_path_rates, interpolate_pos_embed, to_2tuple
from ..registry import register_model_trunk
from ._transformer_common import (
    TransformerTrunk,
    check_image_batch,
    check_no_hybrid,
    check_patch_fits,
    check_width_fits_heads,
    common_options,
    dropout_rate,
    read_options,
)
from .base import FeatureInfo, TrunkCommon

KEY = "MODEL.TRUNK.VISION_TRANSFORMERS."
MIM_NAMES = ("", "none", "ibot", "msn")
MSN_PARAM_DEFAULTS = {"drop_ratio": 0.0, "global_view_tokens": 196}

# Feature names (``out_feat_keys``), with <n> an integer:
FEATURE_NAMES = (
    "lastCLS",  # class token of the last block (normalised)
    "blkCLS<n>",  # class token of block n (python indexing: -1 is the last)
    "concatCLS<n>",  # class tokens of the last n blocks, concatenated
    "lastMAP",  # patch tokens of the last block as (B, H, W, C)
    "lastBLK",  # every token of the last block
    "concatBLK<n>",  # every token of the last n blocks, concatenated on channels
    "lastPOOL",  # mean of the last block's tokens (no class token only)
    "concatPOOL<n>",  # means of the last n blocks (no class token only)
    "stridePOOL_<count>[_<stride>]",  # means of `count` blocks taken every `stride` from the last
)


@dataclass(frozen=True)
class VisionTransformerOptions:
    """``MODEL.TRUNK.VISION_TRANSFORMERS`` (defaults: ViT-B/16)."""

    image_size: Tuple[int, int] = (224, 224)
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    qkv_bias: bool = False
    qk_scale: Optional[float] = None
    classifier: str = "token"  # read by nothing, as in the original
    checkpoint_mlp: bool = False
    checkpoint_block: bool = False
    use_class_token: bool = True
    masked_image_modeling: str = ""  # "", "ibot" or "msn"
    mim_params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_width_fits_heads(KEY, self.hidden_dim, self.num_heads)
        check_patch_fits(KEY, self.image_size, self.patch_size)

    @classmethod
    def from_config(cls, section: Mapping) -> "VisionTransformerOptions":
        check_no_hybrid(section, KEY)
        mim_name, mim_params = _masked_image_modeling(section.get("MASKED_IMAGE_MODELING", None) or {})
        fields = [
            ("image_size", _image_size), "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim",
            "dropout_rate", "attention_dropout_rate", "drop_path_rate", "qkv_bias", "qk_scale",
            ("classifier", _classifier), ("checkpoint_mlp", opt.as_bool), ("checkpoint_block", opt.as_bool),
            ("use_class_token", opt.as_bool),
        ]
        return cls(**read_options(section, KEY, fields), masked_image_modeling=mim_name, mim_params=mim_params)


def _image_size(key: str, value: Any) -> Tuple[int, int]:
    """``IMAGE_SIZE``: one integer (square) or ``[height, width]``."""
    if isinstance(value, (list, tuple)):
        size = tuple(opt.as_int_list(key, value, min_len=2))
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"{key}: got {list(value)}, expected a positive integer or [height, width]")
        return size
    return to_2tuple(opt.as_int(key, value, minimum=1))


def _classifier(key: str, value: Any) -> str:
    """``CLASSIFIER``: nothing reads it (as in the original), but it must at least be a name."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: got {value!r}, expected a name such as 'token'")
    return value


def _masked_image_modeling(mim: Mapping) -> Tuple[str, Dict[str, Any]]:
    """``MASKED_IMAGE_MODELING``: the method name ("" for none) and its checked parameters."""
    mkey = KEY + "MASKED_IMAGE_MODELING."
    name = mim.get("NAME", "") or ""
    opt.choice(mkey + "NAME", name, MIM_NAMES)
    name = "" if name == "none" else name
    params = dict(mim.get("PARAMS", None) or {})
    allowed = MSN_PARAM_DEFAULTS if name == "msn" else {}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"{mkey}PARAMS: unknown keys {unknown} for NAME {name!r}; accepted: {sorted(allowed)}")
    if name == "msn":
        params = {
            "drop_ratio": dropout_rate(mkey + "PARAMS.drop_ratio", params.get("drop_ratio", 0.0)),
            "global_view_tokens": opt.as_int(
                mkey + "PARAMS.global_view_tokens",
                params.get("global_view_tokens", MSN_PARAM_DEFAULTS["global_view_tokens"]),
                minimum=0,
            ),
        }
    return name, params


class NoPatchMasking(nn.Module):
    """Adds the positional embeddings; a ``mask`` is ignored (as in the original)."""

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor, mask: Optional[torch.Tensor] = None,
                num_prefix_tokens: int = 1) -> torch.Tensor:
        return x + pos_embed


class IBOTMaskedModeling(nn.Module):
    """iBOT: patch tokens where ``mask`` is true become a learned ``masked_embed``, then positions are added.

    ``mask`` is boolean, ``(B, H, W)`` or ``(B, H*W)`` over the patch grid.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.masked_embed = nn.Parameter(torch.zeros(1, embed_dim))

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor, mask: Optional[torch.Tensor] = None,
                num_prefix_tokens: int = 1) -> torch.Tensor:
        if mask is not None:
            mask = mask.reshape(mask.shape[0], -1).to(device=x.device, dtype=torch.bool)
            patches = x[:, num_prefix_tokens:]
            if mask.shape != patches.shape[:2]:
                raise ValueError(
                    f"iBOT mask has {tuple(mask.shape)} entries per batch, the input has "
                    f"{tuple(patches.shape[:2])} patches (batch, tokens)"
                )
            # A select rather than in-place index assignment: same values and gradients, no
            # data-dependent shapes.
            patches = torch.where(mask.unsqueeze(-1), self.masked_embed.to(x.dtype), patches)
            x = torch.cat((x[:, :num_prefix_tokens], patches), dim=1)
        return x + pos_embed


class MSNDropMasking(nn.Module):
    """MSN: add positions, then keep the first token and a random ``1 - drop_ratio`` of the others.

    Applied to sequences of at least ``global_view_tokens + 1`` tokens only (global views), in
    train and eval mode alike. The permutation is drawn with ``torch.randperm`` from the CPU
    generator, as the original does, so a seeded run drops the same tokens.
    """

    def __init__(self, drop_ratio: float, global_view_tokens: int) -> None:
        super().__init__()
        self.drop_ratio = drop_ratio
        self.global_view_tokens = global_view_tokens

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor, mask: Optional[torch.Tensor] = None,
                num_prefix_tokens: int = 1) -> torch.Tensor:
        x = x + pos_embed
        n = x.shape[1]
        if n < self.global_view_tokens + 1 or self.drop_ratio <= 0.0:
            return x
        keep = math.floor((n - 1) * (1.0 - self.drop_ratio))
        perm = torch.randperm(n - 1)[:keep] + 1
        idx = torch.cat((torch.zeros(1, dtype=perm.dtype), perm)).to(x.device)
        return x[:, idx]

    def extra_repr(self) -> str:
        return f"drop_ratio={self.drop_ratio}, global_view_tokens={self.global_view_tokens}"


def _parse_feature(name: str, depth: int, use_class_token: bool) -> Tuple[str, List[int]]:
    """``name`` -> (kind, block indices); kind is ``cls``, ``blk``, ``map`` or ``pool``."""
    blocks = list(range(depth))

    def number(prefix: str) -> int:
        try:
            return int(name[len(prefix):])
        except ValueError:
            raise ValueError(f"feature {name!r}: expected an integer after {prefix!r}") from None

    if name == "lastCLS":
        kind, idx = "cls", [blocks[-1]]
    elif name == "lastMAP":
        kind, idx = "map", [blocks[-1]]
    elif name == "lastBLK":
        kind, idx = "blk", [blocks[-1]]
    elif name == "lastPOOL":
        kind, idx = "pool", [blocks[-1]]
    elif name.startswith("blkCLS"):
        v = number("blkCLS")
        if not -depth <= v < depth:
            raise ValueError(f"feature {name!r}: block {v} does not exist in a {depth}-block trunk")
        kind, idx = "cls", [blocks[v]]
    elif name.startswith("concatCLS"):
        # Python slicing as in the original, so ``concatCLS0`` means every block.
        kind, idx = "cls", blocks[-number("concatCLS"):]
    elif name.startswith("concatBLK"):
        kind, idx = "blk", blocks[-number("concatBLK"):]
    elif name.startswith("concatPOOL"):
        kind, idx = "pool", blocks[-number("concatPOOL"):]
    elif name.startswith("stridePOOL_"):
        try:
            parts = [int(p) for p in name[len("stridePOOL_"):].split("_")]
        except ValueError:
            parts = []
        if len(parts) == 2:
            count, stride = parts
        elif len(parts) == 1:
            count = parts[0]
            if count <= 0:
                raise ValueError(f"feature {name!r}: the count must be positive")
            stride = -(-depth // count)
        else:
            raise ValueError(f"feature {name!r}: expected stridePOOL_<count> or stridePOOL_<count>_<stride>")
        if stride <= 0:
            raise ValueError(f"feature {name!r}: the stride must be positive")
        kind, idx = "pool", blocks[::-stride][:count]
    else:
        raise ValueError(f"feature {name!r} does not exist in this trunk; valid names: {list(FEATURE_NAMES)}")
    if kind in ("cls", "map") and not use_class_token:
        raise ValueError(f"feature {name!r} needs the class token (USE_CLASS_TOKEN is false)")
    if kind == "pool" and use_class_token:
        # The original pools over every token and refuses to mix the class token in.
        raise ValueError(f"feature {name!r} is only available without the class token (USE_CLASS_TOKEN: false)")
    if not idx:
        raise ValueError(f"feature {name!r} selects no block")
    return kind, idx


class VisionTransformer(TransformerTrunk):
    """ViT / DeiT trunk; ``forward(x, out_feat_keys=None, mask=None)`` returns a list of features.

    No names: the normalised class token (or the token mean without a class token) of the last
    block; ``["lastBLK"]``: every normalised token of the last block. Both pass ``mask`` to the
    iBOT masking. Other names (see ``FEATURE_NAMES``) are read from intermediate blocks, without
    the iBOT mask, as in the original. Inputs of another size than ``image_size`` get resized
    positional embeddings (``interpolate_pos_embed``); ``resize_pos_embed`` makes another size
    the stored one. ``lastMAP`` (patch tokens as ``(B, H, W, C)``, channels last as in the
    original) is accepted in ``out_feat_keys`` but is not in ``feature_info``, whose kinds are
    channels-first maps, vectors and tokens.
    """

    def __init__(
        self,
        options: VisionTransformerOptions = VisionTransformerOptions(),
        common: TrunkCommon = TrunkCommon(input_type="rgb", apply_input_type=False),
        fp32_layer_norm: bool = False,
    ) -> None:
        super().__init__(common)
        # As in the original, 'bgr' is accepted and the input is used as given (no channel flip).
        self.options = o = options
        init_seed = common.init_seed
        self.embed_dim = o.hidden_dim
        self.use_class_token = o.use_class_token
        self.num_prefix_tokens = 1 if o.use_class_token else 0
        norm_layer = partial(Fp32LayerNorm if fp32_layer_norm else nn.LayerNorm, eps=1e-6)

        self.patch_embed = PatchEmbed(o.image_size, o.patch_size, in_chans=3, embed_dim=o.hidden_dim)
        num_patches = self.patch_embed.num_patches
        if o.use_class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, o.hidden_dim))
        else:
            self.register_parameter("cls_token", None)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, o.hidden_dim))
        self.pos_drop = nn.Dropout(p=o.dropout_rate)

        blocks = []
        for i, dpr in enumerate(drop_path_rates(o.drop_path_rate, o.num_layers)):
            # Each block is initialised from its own seed, so its weights do not depend on depth.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed + i + 1)
                block = Block(
                    dim=o.hidden_dim,
                    num_heads=o.num_heads,
                    mlp_ratio=o.mlp_dim / o.hidden_dim,
                    qkv_bias=o.qkv_bias,
                    qk_scale=o.qk_scale,
                    drop=o.dropout_rate,
                    attn_drop=o.attention_dropout_rate,
                    drop_path=dpr,
                    norm_layer=norm_layer,
                    checkpoint_mlp=o.checkpoint_mlp,
                    checkpoint_block=o.checkpoint_block,
                )
                block.apply(init_transformer_weights)
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(o.hidden_dim)

        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        init_transformer_weights(self.norm)

        if o.masked_image_modeling == "ibot":
            self.patch_masking: nn.Module = IBOTMaskedModeling(o.hidden_dim)
        elif o.masked_image_modeling == "msn":
            self.patch_masking = MSNDropMasking(o.mim_params["drop_ratio"], o.mim_params["global_view_tokens"])
        else:
            self.patch_masking = NoPatchMasking()

        self.default_input_size = tuple(o.image_size)
        self.default_feature = "lastCLS" if o.use_class_token else "lastPOOL"
        self.final_feature = "lastBLK"
        self.intermediate_features = [f"blocks.{i}" for i in range(o.num_layers)]
        self.feature_info = [self._feature_info(n) for n in self._public_names()]
        # Names parsed once here; forward only looks them up (others, e.g. stridePOOL_*, parse per call).
        self._requests = {
            n: _parse_feature(n, o.num_layers, o.use_class_token) for n in self._public_names() + self.feature_aliases
        }
        self.set_grad_checkpointing(o.checkpoint_block or common.use_checkpointing)
        self.grad_checkpointing = self.grad_checkpointing or o.checkpoint_mlp

    # ------------------------------------------------------------ features (the trunk contract)
    def _public_names(self) -> List[str]:
        d = len(self.blocks)
        if self.use_class_token:
            names = ["lastCLS", "lastBLK"] + [f"blkCLS{i}" for i in range(d)]
            names += [f"concatCLS{n}" for n in range(1, d + 1)]
        else:
            names = ["lastPOOL", "lastBLK"] + [f"concatPOOL{n}" for n in range(1, d + 1)]
        return names + [f"concatBLK{n}" for n in range(1, d + 1)]

    @property
    def feature_aliases(self) -> List[str]:
        """``lastMAP`` (channels-last map) besides ``feature_info``; ``stridePOOL_<count>[_<stride>]``
        is accepted too without the class token (see ``FEATURE_NAMES``)."""
        return ["lastMAP"] if self.use_class_token else []

    def _feature_info(self, name: str) -> FeatureInfo:
        kind, idx = _parse_feature(name, len(self.blocks), self.use_class_token)
        width = self.embed_dim * len(idx)
        module = f"blocks.{idx[-1]}"
        if kind == "blk":
            return FeatureInfo(name, width, self.patch_embed.patch_size[0], "tokens", module)
        return FeatureInfo(name, width, None, "vector", module)

    def _request(self, name: str) -> Tuple[str, List[int]]:
        found = self._requests.get(name)
        return found if found is not None else _parse_feature(name, len(self.blocks), self.use_class_token)

    def _grid(self, x: torch.Tensor) -> Tuple[int, int]:
        p = self.patch_embed.patch_size
        return (x.shape[-2] // p[0], x.shape[-1] // p[1])

    def interpolate_pos_encoding(self, x: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
        """Positional embeddings for the tokens ``x`` (prefix included) of a ``grid_size`` patch grid."""
        return interpolate_pos_embed(
            self.pos_embed, x.shape[1], self.patch_embed.feat_map_size, grid_size, self.num_prefix_tokens
        )

    def prepare_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Patch embedding, class token, positional embeddings and masking: ``(B, tokens, C)``."""
        check_image_batch(x, "vision transformer")
        grid = self._grid(x)
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        pos_embed = self.interpolate_pos_encoding(x, grid)
        x = self.patch_masking(x, pos_embed, mask=mask, num_prefix_tokens=self.num_prefix_tokens)
        return self.pos_drop(x)

    def feature_dict(
        self, x: torch.Tensor, names: Optional[Sequence[str]] = None, mask: Optional[torch.Tensor] = None
    ) -> Dict[str, torch.Tensor]:
        """``{name: feature}`` for ``names`` (default: ``[default_feature]``), running the blocks
        once and only up to the last one needed. ``mask`` goes to the iBOT masking."""
        names = [self.default_feature] if names is None else list(names)
        requests = {n: self._request(n) for n in names}
        needed = {i for _, idx in requests.values() for i in idx}
        grid = self._grid(x)
        x = self.prepare_tokens(x, mask)
        interms: Dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(needed) + 1]):
            x = blk(x)
            if i in needed:
                interms[i] = x
        out: Dict[str, torch.Tensor] = {}
        for name, (kind, idx) in requests.items():
            if kind == "cls":
                # LayerNorm is per token, so normalising only the class token gives the same values.
                parts = [self.norm(interms[i][:, 0]) for i in idx]
            elif kind == "blk":
                parts = [self.norm(interms[i]) for i in idx]
            elif kind == "pool":
                parts = [self.norm(interms[i]).mean(dim=1) for i in idx]
            else:
                feat = self.norm(interms[idx[0]][:, self.num_prefix_tokens:])
                if feat.shape[1] != grid[0] * grid[1]:
                    raise ValueError(f"lastMAP: {feat.shape[1]} patch tokens do not fill the {grid} grid "
                                     "(tokens were dropped by MSN masking)")
                parts = [feat.reshape(feat.shape[0], grid[0], grid[1], feat.shape[-1])]
            out[name] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return out

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every token of the last block, normalised: ``(B, tokens, C)`` (timm's meaning)."""
        return self.feature_dict(x, ["lastBLK"], mask)["lastBLK"]

    def get_intermediate_features(self, x: torch.Tensor, names: Sequence[str]) -> List[torch.Tensor]:
        """One tensor per name of ``FEATURE_NAMES``, in the order asked (repeats included)."""
        feats = self.feature_dict(x, names)
        return [feats[n] for n in names]

    def _intermediates(self, x, taken, stop, norm, want_final):
        grid = self._grid(x)
        x = self.prepare_tokens(x)
        found = []
        for i, blk in enumerate(self.blocks if stop is None else self.blocks[: stop + 1]):
            x = blk(x)
            if i in taken:
                found.append(((self.norm(x) if norm else x)[:, self.num_prefix_tokens:], grid))
        return (self.norm(x) if want_final else None), found

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (``CHECKPOINT_BLOCK``), or nothing at all: disabling
        also ends the MLP-only recompute of ``CHECKPOINT_MLP``."""
        super().set_grad_checkpointing(enable)
        for blk in self.blocks:
            blk.checkpoint_block = bool(enable)
            blk.checkpoint_mlp = blk.checkpoint_mlp and bool(enable)

    @torch.no_grad()
    def resize_pos_embed(self, size: Union[int, Tuple[int, int]]) -> None:
        """Make ``size`` (an int or ``(height, width)``) the trunk's input size, in place: the
        positional embeddings are resampled as a forward at that size would, and stored."""
        size = to_2tuple(size)
        check_patch_fits("resize_pos_embed: ", size, self.patch_embed.patch_size)
        p = self.patch_embed.patch_size
        grid = (size[0] // p[0], size[1] // p[1])
        pos = interpolate_pos_embed(
            self.pos_embed, self.num_prefix_tokens + grid[0] * grid[1], self.patch_embed.feat_map_size, grid,
            self.num_prefix_tokens,
        )
        self.pos_embed = nn.Parameter(pos.clone(), requires_grad=self.pos_embed.requires_grad)
        self.patch_embed.set_img_size(size)
        self.options = replace(self.options, image_size=tuple(size))
        self.default_input_size = tuple(size)

    def get_last_self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights of the last block: ``(B, heads, tokens, tokens)``."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self.blocks[-1].get_attention_map(x)

    def forward(
        self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None, mask: Optional[torch.Tensor] = None
    ) -> List[torch.Tensor]:
        """One feature per name, in the order asked; no names: ``[default_feature]``. As in the
        original, ``mask`` applies to the default feature and to ``["lastBLK"]`` alone only."""
        if not out_feat_keys:
            return [self.feature_dict(x, mask=mask)[self.default_feature]]
        if list(out_feat_keys) == ["lastBLK"]:
            return [self.feature_dict(x, ["lastBLK"], mask)["lastBLK"]]
        return self.get_intermediate_features(x, out_feat_keys)


def _build(model_config: Mapping, name: str, fp32_layer_norm: bool) -> VisionTransformer:
    options = VisionTransformerOptions.from_config(model_config["TRUNK"]["VISION_TRANSFORMERS"])
    common = common_options(model_config, name)
    # Built from its own seed, without changing the caller's random stream (as the original).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(common.init_seed)
        return VisionTransformer(options, common, fp32_layer_norm)


@register_model_trunk("vision_transformer")
def build_vision_transformer(model_config: Mapping, model_name: str = "vision_transformer") -> VisionTransformer:
    """Build the ``vision_transformer`` trunk from ``MODEL`` (reads ``TRUNK.VISION_TRANSFORMERS``)."""
    return _build(model_config, model_name, fp32_layer_norm=False)


@register_model_trunk("vision_transformer_fsdp")
def build_vision_transformer_fsdp(
    model_config: Mapping, model_name: str = "vision_transformer_fsdp"
) -> VisionTransformer:
    """``vision_transformer_fsdp``: the same trunk with float32 LayerNorms (the original's FSDP variant).

    Sharding is applied from outside by the training code; in one process this is the module itself.
    """
    return _build(model_config, model_name, fp32_layer_norm=True)
