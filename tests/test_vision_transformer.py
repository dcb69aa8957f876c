"""Vision transformer trunks and the DINO / iBOT / MSN / ViT heads: layout, outputs, masking."""

import math

import pytest
import torch
import torch.nn.functional as F

import vissl_models
from vissl_models.config import ConfigError
from vissl_models.layers.transformer import Attention, Block, Fp32LayerNorm, drop_path_rates, interpolate_pos_embed
from utils import build_trunk, model_config, randomize as shared_randomize

TINY = {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 2, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32,
        "QKV_BIAS": True}


def trunk(name="vision_transformer", seed=0, randomize=True, **options):
    t = build_trunk(name, None, "VISION_TRANSFORMERS", {**TINY, **options}).eval()
    if randomize:
        # Non-trivial weights everywhere (LayerNorm affine, biases, positions) for the comparisons.
        shared_randomize(t, seed)
    return t


def ref_tokens(t, x, mask=None, keep=None):
    """Independent ViT forward (explicit softmax, functional ops); every normalised block output."""
    o = t.options
    B, C, heads = x.shape[0], o.hidden_dim, o.num_heads
    tok = F.conv2d(x, t.patch_embed.proj.weight, t.patch_embed.proj.bias, stride=o.patch_size)
    tok = tok.flatten(2).transpose(1, 2)
    if mask is not None:
        tok = torch.where(mask.reshape(B, -1, 1), t.patch_masking.masked_embed, tok)
    pos = t.pos_embed
    if t.cls_token is not None:
        tok = torch.cat([t.cls_token.expand(B, -1, -1), tok], 1)
    if tok.shape[1] != pos.shape[1]:
        g = o.image_size[0] // o.patch_size
        grid = pos[:, 1:].reshape(1, g, g, C).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=math.sqrt((tok.shape[1] - 1) / (g * g)), mode="bicubic")
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, C)], 1)
    tok = tok + pos
    if keep is not None:
        tok = tok[:, keep]
    outs = []
    for blk in t.blocks:
        N = tok.shape[1]
        h = F.layer_norm(tok, (C,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        q, k, v = F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(B, N, C)
        tok = tok + F.linear(h, blk.attn.proj.weight, blk.attn.proj.bias)
        h = F.layer_norm(tok, (C,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        h = F.linear(F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        tok = tok + h
        outs.append(F.layer_norm(tok, (C,), t.norm.weight, t.norm.bias, 1e-6))
    return outs


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- layout
def test_state_dict_keys_follow_original_layout():
    t = trunk(randomize=False, MASKED_IMAGE_MODELING={"NAME": "ibot", "PARAMS": {}})
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = (["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
                + [f"blocks.{i}.{k}" for i in range(2) for k in block]
                + ["norm.weight", "norm.bias", "patch_masking.masked_embed"])
    sd = t.state_dict()
    assert list(sd) == expected
    assert sd["pos_embed"].shape == (1, 17, 16) and sd["blocks.0.mlp.fc1.weight"].shape == (32, 16)
    no_cls = trunk(randomize=False, USE_CLASS_TOKEN=False).state_dict()
    assert "cls_token" not in no_cls and no_cls["pos_embed"].shape == (1, 16, 16)


def test_blocks_are_initialised_from_their_own_seed():
    shallow, deep = trunk(randomize=False), trunk(randomize=False, NUM_LAYERS=4)
    for k, v in shallow.blocks[1].state_dict().items():
        assert torch.equal(v, deep.blocks[1].state_dict()[k]), k
    assert (shallow.blocks[0].mlp.fc1.bias == 0).all() and shallow.blocks[0].mlp.fc1.weight.std() < 0.03


def test_drop_path_rates_are_linear_in_float32():
    rates = drop_path_rates(0.1, 12)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and len(rates) == 12
    assert rates == torch.linspace(0, 0.1, 12).tolist()


# ---------------------------------------------------------------- outputs
@pytest.mark.parametrize("size", [32, 16, 24, 48])
def test_outputs_match_explicit_reference_at_any_input_size(size):
    t = trunk()
    x = torch.randn(2, 3, size, size)
    ref = ref_tokens(t, x)
    with torch.no_grad():
        (cls,) = t(x)
        (blk,) = t(x, ["lastBLK"])
    close(cls, ref[-1][:, 0])
    close(blk, ref[-1])


def test_intermediate_features_match_reference():
    t = trunk(NUM_LAYERS=3)
    x = torch.randn(2, 3, 32, 32)
    ref = ref_tokens(t, x)
    names = ["concatCLS2", "lastCLS", "blkCLS0", "blkCLS-2", "lastMAP", "concatBLK2", "concatCLS0"]
    with torch.no_grad():
        out = t(x, names)
    close(out[0], torch.cat([ref[1][:, 0], ref[2][:, 0]], -1))
    close(out[1], ref[2][:, 0])
    close(out[2], ref[0][:, 0])
    close(out[3], ref[1][:, 0])
    close(out[4], ref[2][:, 1:].reshape(2, 4, 4, 16))
    close(out[5], torch.cat([ref[1], ref[2]], -1))
    # Python slicing as in the original: the last 0 blocks means all of them.
    close(out[6], torch.cat([r[:, 0] for r in ref], -1))


def test_pool_features_without_class_token():
    t = trunk(NUM_LAYERS=3, USE_CLASS_TOKEN=False)
    x = torch.randn(2, 3, 32, 32)
    ref = ref_tokens(t, x)
    with torch.no_grad():
        default, last, concat, stride, stride_default = t(x, ["lastPOOL"]) + t(
            x, ["lastPOOL", "concatPOOL2", "stridePOOL_2_2", "stridePOOL_2"])
    close(default, ref[-1].mean(1))
    close(last, ref[-1].mean(1))
    close(concat, torch.cat([ref[1].mean(1), ref[2].mean(1)], -1))
    close(stride, torch.cat([ref[2].mean(1), ref[0].mean(1)], -1))
    close(stride_default, torch.cat([ref[2].mean(1), ref[0].mean(1)], -1))  # stride ceil(3 / 2) = 2
    with torch.no_grad():
        (pooled,) = t(x)
    close(pooled, ref[-1].mean(1))


def test_multi_crop_of_two_sizes_through_the_model():
    cfg = {"TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": TINY},
           "HEAD": {"PARAMS": [["dino_head", {"in_dim": 16, "num_clusters": [12], "hidden_dim": 24,
                                             "bottleneck_dim": 8, "normalize_last_layer": False}]]}}
    model = vissl_models.build_model(cfg).eval()
    with torch.no_grad():
        for p in model.trunk.parameters():
            p.normal_(0, 0.3)
    crops = [torch.randn(1, 3, 32, 32) for _ in range(2)] + [torch.randn(1, 3, 16, 16) for _ in range(3)]
    with torch.no_grad():
        (out,) = model(crops)
        feats = torch.cat([ref_tokens(model.trunk, torch.cat(crops[:2]))[-1][:, 0],
                           ref_tokens(model.trunk, torch.cat(crops[2:]))[-1][:, 0]])
        (expected,) = model.heads[0](feats)
    assert len(out) == 1 and out[0].shape == (5, 12)
    close(out[0], expected)


def test_positional_embeddings_keep_the_class_embedding_when_resized():
    t = trunk()
    pos = t.interpolate_pos_encoding(torch.zeros(1, 5, 16), (2, 2))  # class + 2 x 2 patches (16 px)
    assert pos.shape == (1, 5, 16)
    assert torch.equal(pos[:, 0], t.pos_embed[:, 0])
    assert t.interpolate_pos_encoding(torch.zeros(1, 17, 16), (4, 4)) is t.pos_embed


# ---------------------------------------------------------------- interpolation helper
def test_interpolate_pos_embed_uses_the_scale_factor_like_the_original():
    pos = torch.randn(1, 1 + 14 * 14, 8)
    out = interpolate_pos_embed(pos, 1 + 36)
    grid = pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=math.sqrt(36 / 196), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 36, 8)
    assert torch.equal(out, torch.cat([pos[:, :1], ref], 1))
    assert interpolate_pos_embed(pos, 197) is pos


def test_interpolate_pos_embed_other_aspect_ratio_and_errors():
    pos = torch.randn(1, 16, 4)  # no prefix, 4 x 4
    out = interpolate_pos_embed(pos, 8, grid_size=(4, 4), new_grid_size=(2, 4), num_prefix_tokens=0)
    ref = F.interpolate(pos.reshape(1, 4, 4, 4).permute(0, 3, 1, 2), size=(2, 4), mode="bicubic")
    close(out, ref.permute(0, 2, 3, 1).reshape(1, 8, 4))
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(torch.randn(1, 1 + 12, 4), 5)
    with pytest.raises(ValueError, match="cannot resize"):
        interpolate_pos_embed(pos, 9, new_grid_size=(2, 4), num_prefix_tokens=0)


# ---------------------------------------------------------------- masked image modeling
def test_ibot_mask_replaces_patch_tokens_with_the_mask_embedding():
    t = trunk(MASKED_IMAGE_MODELING={"NAME": "ibot", "PARAMS": {}})
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 4, 4) < 0.5
    mask[0, 0, 0], mask[1, 0, 0] = True, False
    with torch.no_grad():
        (masked,) = t(x, ["lastBLK"], mask=mask)
        (cls,) = t(x, mask=mask)
        (plain,) = t(x, ["lastBLK"])
        (unmasked,) = t(x, ["lastBLK"], mask=torch.zeros(2, 16, dtype=torch.bool))
        # Named intermediate features never see the mask (as in the original).
        (inter,) = t(x, ["concatCLS1"], mask=mask)
    ref = ref_tokens(t, x, mask=mask)[-1]
    close(masked, ref)
    close(cls, ref[:, 0])
    close(unmasked, plain)
    close(inter, plain[:, 0])
    assert not torch.allclose(masked, plain)


def test_ibot_mask_gets_gradients_and_checks_its_shape():
    t = trunk(MASKED_IMAGE_MODELING={"NAME": "ibot", "PARAMS": {}}).train()
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    t(torch.randn(2, 3, 32, 32), ["lastBLK"], mask=mask)[0].sum().backward()
    assert t.patch_masking.masked_embed.grad is not None
    with pytest.raises(ValueError, match="mask"):
        t(torch.randn(2, 3, 32, 32), mask=torch.zeros(2, 3, 3, dtype=torch.bool))


def test_msn_drops_tokens_of_global_views_in_eval_mode_with_the_seeded_cpu_generator():
    t = trunk(MASKED_IMAGE_MODELING={"NAME": "msn", "PARAMS": {"drop_ratio": 0.7, "global_view_tokens": 16}})
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(3)
    keep = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(16)[: math.floor(16 * 0.3)]])
    torch.manual_seed(3)
    with torch.no_grad():
        (blk,) = t(x, ["lastBLK"])
    assert blk.shape == (2, 1 + 4, 16)
    close(blk, ref_tokens(t, x, keep=keep)[-1])
    with torch.no_grad():
        torch.manual_seed(3)
        (a,) = t(x)
        torch.manual_seed(4)
        (b,) = t(x)
        small = torch.randn(2, 3, 16, 16)
        (local,) = t(small, ["lastBLK"])
    close(a, blk[:, 0])
    assert not torch.allclose(a, b)
    # Views shorter than global_view_tokens + 1 (local crops) keep every token.
    close(local, ref_tokens(t, small)[-1])


def test_ibot_multi_input_model_routes_the_mask():
    cfg = {"TRUNK": {"NAME": "vision_transformer",
                     "VISION_TRANSFORMERS": {**TINY, "MASKED_IMAGE_MODELING": {"NAME": "ibot", "PARAMS": {}}}},
           "HEAD": {"PARAMS": [["ibot_head", {"in_dim": 16, "out_dim": 12, "hidden_dim": 24, "bottleneck_dim": 8,
                                             "shared_head": True, "normalize_last_layer": False}]]},
           "MULTI_INPUT_HEAD_MAPPING": [["global_views", {"feat_names": ["lastBLK"], "additional_keys": ["mask"]}],
                                        ["local_views", {"feat_names": ["lastCLS"]}]]}
    model = vissl_models.build_model(cfg).eval()
    batch = {"global_views": torch.randn(2, 3, 32, 32), "mask": torch.rand(2, 4, 4) < 0.3,
             "local_views": torch.randn(4, 3, 16, 16)}
    with torch.no_grad():
        (cls, patches), (local,) = model(batch)
        (tokens,) = model.trunk(batch["global_views"], ["lastBLK"], mask=batch["mask"])
        expected = model.heads[0](tokens)
    assert cls.shape == (2, 12) and patches.shape == (2, 16, 12) and local.shape == (4, 12)
    close(cls, expected[0])
    close(patches, expected[1])
    sd = model.state_dict()
    assert torch.equal(sd["heads.0.prototypes1.weight_v"], sd["heads.0.prototypes0.weight_v"])


# ---------------------------------------------------------------- attention, blocks, compile
def test_sdpa_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4, qkv_bias=True, qk_scale=0.3).eval()
    x = torch.randn(2, 7, 16)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-2, -1)) * 0.3).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 16))
    with torch.no_grad():
        close(attn(x), expected)
        close(attn.attention_map(x), weights)


def test_last_self_attention_map():
    t = trunk()
    with torch.no_grad():
        maps = t.get_last_self_attention(torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 2, 17, 17)
    close(maps.sum(-1), torch.ones(2, 2, 17))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_block_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = Block(16, 2, mlp_ratio=2.0, qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
    x = torch.randn(2, 17, 16)
    with torch.no_grad():
        eager = block(x)
        compiled = torch.compile(block, fullgraph=True, backend=backend)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for flags in ({}, {"CHECKPOINT_MLP": True}, {"CHECKPOINT_BLOCK": True, "CHECKPOINT_MLP": True}):
        t = trunk(**flags).train()
        t(x)[0].sum().backward()
        grads.append({n: p.grad.clone() for n, p in t.named_parameters()})
    for other in grads[1:]:
        for n, g in grads[0].items():
            close(other[n], g)


def test_fsdp_variant_is_the_same_module_with_float32_layer_norms():
    plain, fsdp = trunk(), trunk("vision_transformer_fsdp", randomize=False)
    assert list(plain.state_dict()) == list(fsdp.state_dict())
    fsdp.load_state_dict(plain.state_dict())
    assert isinstance(fsdp.norm, Fp32LayerNorm) and isinstance(fsdp.blocks[0].norm1, Fp32LayerNorm)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(fsdp(x)[0], plain(x)[0])
        half = fsdp.norm(torch.randn(3, 16).bfloat16())
    assert half.dtype == torch.bfloat16


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "options, match",
    [
        ({"HYBRID": "resnet"}, "HYBRID"),
        ({"MASKED_IMAGE_MODELING": {"NAME": "mae", "PARAMS": {}}}, "MASKED_IMAGE_MODELING.NAME"),
        ({"MASKED_IMAGE_MODELING": {"NAME": "msn", "PARAMS": {"drop": 0.5}}}, "unknown keys"),
        ({"MASKED_IMAGE_MODELING": {"NAME": "msn", "PARAMS": {"drop_ratio": 1.0}}}, "drop_ratio"),
        ({"NUM_HEADS": 3}, "HIDDEN_DIM: got 16, expected a multiple of NUM_HEADS"),
        ({"DROP_PATH_RATE": -0.1}, "DROP_PATH_RATE"),
        ({"QKV_BIAS": "yes"}, "QKV_BIAS"),
    ],
)
def test_bad_options_raise_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        trunk(randomize=False, **options)


def test_masked_image_modeling_none_means_no_masking():
    t = trunk(randomize=False, MASKED_IMAGE_MODELING={"NAME": "none", "PARAMS": {}})
    assert "patch_masking.masked_embed" not in t.state_dict()


def test_lab_input_is_refused():
    cfg = model_config(INPUT_TYPE="lab", TRUNK={"NAME": "vision_transformer", "VISION_TRANSFORMERS": TINY})
    with pytest.raises(ConfigError, match="INPUT_TYPE"):
        vissl_models.get_model_trunk("vision_transformer")(cfg, "vision_transformer")


@pytest.mark.parametrize(
    "names, match",
    [(["res5"], "does not exist"), (["lastPOOL"], "without the class token"), (["blkCLS7"], "does not exist"),
     (["concatCLSx"], "integer"), (["stridePOOL_a"], "stridePOOL")],
)
def test_bad_feature_names(names, match):
    with pytest.raises(ValueError, match=match):
        trunk(randomize=False)(torch.randn(1, 3, 32, 32), names)


def test_class_token_features_need_the_class_token():
    with pytest.raises(ValueError, match="class token"):
        trunk(randomize=False, USE_CLASS_TOKEN=False)(torch.randn(1, 3, 32, 32), ["lastCLS"])


# ---------------------------------------------------------------- heads
def head(name, **kwargs):
    torch.manual_seed(0)
    return vissl_models.get_model_head(name)(model_config(), **kwargs)


def test_dino_head_prototypes_use_old_style_weight_norm():
    h = head("dino_head", in_dim=16, num_clusters=[20], hidden_dim=24, bottleneck_dim=8)
    assert [k for k in h.state_dict() if k.startswith("prototypes0")] == ["prototypes0.weight_g", "prototypes0.weight_v"]
    assert (h.prototypes0.weight_g == 1).all() and not h.prototypes0.weight_g.requires_grad
    x = torch.randn(4, 16)
    z = F.normalize(h.mlp(x), dim=-1)
    v = h.prototypes0.weight_v
    close(h(x)[0], z @ (v / v.norm(dim=1, keepdim=True)).T)
    with pytest.raises(ValueError, match="num_clusters"):
        head("dino_head", in_dim=16, num_clusters=[20, 30])


def test_dino_head_fsdp_keeps_weight_g_as_a_buffer_when_normalized():
    h = head("dino_head_fsdp", in_dim=16, num_clusters=[20], hidden_dim=24, bottleneck_dim=8)
    assert "prototypes0.weight_g" in dict(h.named_buffers()) and "prototypes0.weight_g" in h.state_dict()
    trainable = head("dino_head_fsdp", in_dim=16, num_clusters=[20], bottleneck_dim=8, normalize_last_layer=False)
    assert trainable.prototypes0.weight_g.requires_grad


def test_ibot_shared_head_ties_prototypes():
    h = head("ibot_head", in_dim=16, out_dim=20, hidden_dim=24, bottleneck_dim=8, shared_head=True)
    assert h.prototypes1 is h.prototypes0 and h.last_norm2 is h.last_norm
    assert {"prototypes1.weight_g", "prototypes1.weight_v"} <= set(h.state_dict())
    separate = head("ibot_head", in_dim=16, out_dim=20, patch_out_dim=6, hidden_dim=24, bottleneck_dim=8)
    cls, patches = separate(torch.randn(2, 5, 16))
    assert cls.shape == (2, 20) and patches.shape == (2, 4, 6)


def test_ibot_head_reuses_one_norm_instance_like_the_original():
    h = head("ibot_head", in_dim=16, out_dim=20, hidden_dim=24, bottleneck_dim=8, norm="bn", num_layers=3)
    assert h.mlp[1] is h.mlp[4]
    assert {"mlp.1.running_mean", "mlp.4.running_mean"} <= set(h.state_dict())
    with pytest.raises(ConfigError, match="norm"):
        head("ibot_head", in_dim=16, out_dim=20, norm="gn")
    with pytest.raises(ConfigError, match="act"):
        head("ibot_distillation_head", in_dim=16, out_dim=20, act="tanh")
    with pytest.raises(ConfigError, match="num_layers"):
        head("ibot_distillation_head", in_dim=16, out_dim=20, num_layers=1)


def test_msn_head_soft_assignment():
    h = head("msn_head", in_dim=16, num_prototypes=10, hidden_dim=24, output_dim=8, temperature=0.2).eval()
    x = torch.randn(4, 16)
    q = F.normalize(h.fc(x), dim=-1)
    probs = torch.softmax(q @ F.normalize(h.prototypes, dim=1).T / 0.2, dim=1)
    close(h(x), probs)
    assert "proto_labels" not in h.state_dict() and "prototypes" in h.state_dict()
    smooth = head("msn_head", in_dim=16, num_prototypes=10, hidden_dim=24, output_dim=8, label_smoothing=0.1)
    close(smooth.proto_labels.sum(1), torch.ones(10))
    assert smooth.proto_labels[0, 0] == pytest.approx(0.91) and smooth.proto_labels[0, 1] == pytest.approx(0.01)
    frozen = head("msn_head", in_dim=16, num_prototypes=10, output_dim=8, freeze_prototypes=True)
    assert not frozen.prototypes.requires_grad


def test_vision_transformer_head_layout_and_init():
    h = head("vision_transformer_head", in_plane=16, num_classes=10, hidden_dim=24)
    assert list(h.state_dict()) == ["layers.pre_logits.weight", "layers.pre_logits.bias",
                                    "layers.head.weight", "layers.head.bias"]
    assert (h.layers.head.bias == 0).all() and (h.layers.pre_logits.bias == 0).all()
    x = torch.randn(3, 16)
    close(h(x), h.layers.head(torch.tanh(h.layers.pre_logits(x))))


def test_trunk_compiles_without_graph_breaks_for_two_input_sizes():
    torch._dynamo.reset()
    t = trunk()
    compiled = torch.compile(t, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for size in (32, 16):
            x = torch.randn(2, 3, size, size)
            close(compiled(x)[0], t(x)[0])
