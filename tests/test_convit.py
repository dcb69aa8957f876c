"""ConViT (``convit``): key layout, outputs against a direct transcription of the original's maths,
multi-crop, local initialisation and config errors."""

import math

import pytest
import torch
import torch.nn.functional as F

import vissl_models
from vissl_models.config.loader import ConfigError
from vissl_models.trunks.convit import GPSA, relative_positions
from utils import build_trunk, deep_update, model_config

VIT = {"IMAGE_SIZE": 16, "PATCH_SIZE": 4, "NUM_LAYERS": 3, "NUM_HEADS": 4, "HIDDEN_DIM": 16, "MLP_DIM": 32}
CONVIT = {"N_GPSA_LAYERS": 2, "LOCALITY_DIM": 2}


def trunk_config(vit=None, convit=None, **model):
    trunk = {"NAME": "convit", "VISION_TRANSFORMERS": dict(VIT, **(vit or {})), "CONVIT": dict(CONVIT, **(convit or {}))}
    return model_config(**deep_update(model, {"TRUNK": trunk}))


def build(vit=None, convit=None, seed=0, **model):
    sections = {"VISION_TRANSFORMERS": dict(VIT, **(vit or {})), "CONVIT": dict(CONVIT, **(convit or {}))}
    return build_trunk("convit", seed, **deep_update(model, {"TRUNK": sections}))


def expected_layout(num_layers, n_gpsa, dim, heads, mlp, locality_dim, grid, patch, qkv_bias):
    """Keys and shapes as the original's ConViT defines them (module by module, parameters
    of a module before its children)."""
    keys = [
        ("class_token", (1, 1, dim)),
        ("pos_embedding", (1, grid * grid, dim)),
        ("patch_embed.proj.weight", (dim, 3, patch, patch)),
        ("patch_embed.proj.bias", (dim,)),
    ]
    for i in range(num_layers):
        b = f"blocks.{i}."
        keys += [(b + "norm1.weight", (dim,)), (b + "norm1.bias", (dim,))]
        if i < n_gpsa:
            keys.append((b + "attn.alpha", (1, heads, 1, 1)))
            keys.append((b + "attn.qk.weight", (2 * dim, dim)))
            keys += [(b + "attn.qk.bias", (2 * dim,))] if qkv_bias else []
            keys.append((b + "attn.v.weight", (dim, dim)))
            keys += [(b + "attn.v.bias", (dim,))] if qkv_bias else []
            keys += [(b + "attn.proj.weight", (dim, dim)), (b + "attn.proj.bias", (dim,))]
            keys += [(b + "attn.pos_proj.weight", (heads, 3 * locality_dim)), (b + "attn.pos_proj.bias", (heads,))]
        else:
            keys.append((b + "attn.qkv.weight", (3 * dim, dim)))
            keys += [(b + "attn.qkv.bias", (3 * dim,))] if qkv_bias else []
            keys += [(b + "attn.proj.weight", (dim, dim)), (b + "attn.proj.bias", (dim,))]
        keys += [(b + "norm2.weight", (dim,)), (b + "norm2.bias", (dim,))]
        keys += [(b + "mlp.linear_1.weight", (mlp, dim)), (b + "mlp.linear_1.bias", (mlp,))]
        keys += [(b + "mlp.linear_2.weight", (dim, mlp)), (b + "mlp.linear_2.bias", (dim,))]
    keys += [("norm.weight", (dim,)), ("norm.bias", (dim,))]
    return keys


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_state_dict_layout_matches_the_original(qkv_bias):
    trunk = build({"QKV_BIAS": qkv_bias})
    got = [(k, tuple(v.shape)) for k, v in trunk.state_dict().items()]
    assert got == expected_layout(3, 2, 16, 4, 32, 2, 4, 4, qkv_bias)


# ----------------------------------------------------------------------------- reference
def _randomize(trunk, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trunk.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "alpha" in name:
                p.copy_(2.0 * noise)
            else:
                p.copy_(0.3 * noise)


def _rel_indices_as_original(n_patches, locality_dim):
    """(1, N, N, 3d): dx repeated d times, then dy, then dx**2 + dy**2, built entry by entry."""
    g = int(n_patches ** 0.5)
    rel = torch.zeros(1, n_patches, n_patches, 3 * locality_dim)
    for a in range(n_patches):
        for b in range(n_patches):
            dx = (b % g) - (a % g)
            dy = (b // g) - (a // g)
            rel[0, a, b, :locality_dim] = dx
            rel[0, a, b, locality_dim : 2 * locality_dim] = dy
            rel[0, a, b, 2 * locality_dim :] = dx * dx + dy * dy
    return rel


def reference_forward(sd, x, *, heads, n_gpsa, locality_dim, classifier="token", qk_scale=None, patch=4):
    """The original ConViT forward, written out on a state dict (eval mode, no dropout)."""
    p = lambda k: sd[k]  # noqa: E731
    B = x.shape[0]
    t = F.conv2d(x, p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=patch).flatten(2).transpose(1, 2)
    pos = p("pos_embedding")
    if t.shape[1] != pos.shape[1]:
        g0, dim = int(math.sqrt(pos.shape[1])), pos.shape[2]
        pos = pos.reshape(1, g0, g0, dim).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, scale_factor=math.sqrt(t.shape[1] / (g0 * g0)), mode="bicubic")
        pos = pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    t = t + pos
    dim = t.shape[-1]
    hd = dim // heads
    scale = qk_scale or hd ** -0.5
    cls = p("class_token").expand(B, -1, -1)
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(n_layers):
        b = f"blocks.{i}."
        if i == n_gpsa:
            t = torch.cat([cls, t], dim=1)
        N = t.shape[1]
        h = F.layer_norm(t, (dim,), p(b + "norm1.weight"), p(b + "norm1.bias"), eps=1e-5)
        if i < n_gpsa:
            qk = F.linear(h, p(b + "attn.qk.weight"), sd.get(b + "attn.qk.bias"))
            qk = qk.reshape(B, N, 2, heads, hd).permute(2, 0, 3, 1, 4)
            v = F.linear(h, p(b + "attn.v.weight"), sd.get(b + "attn.v.bias"))
            v = v.reshape(B, N, heads, hd).permute(0, 2, 1, 3)
            rel = _rel_indices_as_original(N, locality_dim).expand(B, -1, -1, -1)
            pos_score = F.linear(rel, p(b + "attn.pos_proj.weight"), p(b + "attn.pos_proj.bias")).permute(0, 3, 1, 2)
            pos_score = (pos_score / locality_dim).softmax(-1)
            patch_score = (qk[0] @ qk[1].transpose(-2, -1) * scale).softmax(-1)
            gate = torch.sigmoid(p(b + "attn.alpha"))
            attn = (1 - gate) * patch_score + gate * pos_score
            attn = attn / attn.sum(-1, keepdim=True)
        else:
            qkv = F.linear(h, p(b + "attn.qkv.weight"), sd.get(b + "attn.qkv.bias"))
            q, k, v = qkv.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
            attn = (q @ k.transpose(-2, -1) * scale).softmax(-1)
        a = (attn @ v).transpose(1, 2).reshape(B, N, dim)
        t = t + F.linear(a, p(b + "attn.proj.weight"), p(b + "attn.proj.bias"))
        h = F.layer_norm(t, (dim,), p(b + "norm2.weight"), p(b + "norm2.bias"), eps=1e-5)
        h = F.linear(F.gelu(F.linear(h, p(b + "mlp.linear_1.weight"), p(b + "mlp.linear_1.bias"))),
                     p(b + "mlp.linear_2.weight"), p(b + "mlp.linear_2.bias"))
        t = t + h
    t = F.layer_norm(t, (dim,), p("norm.weight"), p("norm.bias"), eps=1e-5)
    return t[:, 0] if classifier == "token" else t.mean(dim=1)


@pytest.mark.parametrize(
    "vit, convit",
    [
        ({}, {}),
        ({"CLASSIFIER": "gap", "QKV_BIAS": True, "QK_SCALE": 0.4}, {"LOCALITY_DIM": 3}),
        ({"NUM_HEADS": 2}, {"N_GPSA_LAYERS": 0}),
        ({}, {"N_GPSA_LAYERS": 3}),
    ],
    ids=["default", "gap_bias_scale", "no_gpsa", "all_gpsa"],
)
@pytest.mark.parametrize("size", [16, 12, 24])
def test_outputs_match_the_original_maths(vit, convit, size):
    trunk = build(vit, convit).eval()
    _randomize(trunk)
    opts = trunk.options
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        (out,) = trunk(x)
        ref = reference_forward(
            trunk.state_dict(), x, heads=opts.num_heads, n_gpsa=opts.n_gpsa_layers,
            locality_dim=opts.locality_dim, classifier=opts.classifier, qk_scale=opts.qk_scale,
        )
    assert out.shape == (2, 16)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_gpsa_fused_path_equals_explicit_attention():
    torch.manual_seed(0)
    attn = GPSA(16, num_heads=4, qkv_bias=True, locality_dim=2).eval()
    with torch.no_grad():
        attn.alpha.normal_()
        attn.pos_proj.weight.normal_()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        weights = attn.attention_map(x)
        v = attn.v(x).reshape(2, 9, 4, 4).transpose(1, 2)
        explicit = attn.proj((weights @ v).transpose(1, 2).reshape(2, 9, 16))
        torch.testing.assert_close(attn(x), explicit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 9))


def test_relative_positions():
    rel = relative_positions(3)
    # patch 1 = (row 0, col 1), patch 5 = (row 1, col 2): offset (dx, dy) = (1, 1), distance**2 = 2
    assert rel[1, 5].tolist() == [1, 1, 2]
    assert rel[5, 1].tolist() == [-1, -1, 2]
    assert (rel[torch.arange(9), torch.arange(9)] == 0).all()


def test_multi_crop_runs_each_size_once_and_concatenates():
    cfg = trunk_config(HEAD={"PARAMS": [["mlp", {"dims": [16, 8]}]]})
    torch.manual_seed(0)
    model = vissl_models.build_model(cfg).eval()
    crops = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 12, 12)]
    with torch.no_grad():
        (out,) = model(crops)
        big = model.trunk(torch.cat(crops[:2]))[0]
        small = model.trunk(crops[2])[0]
        expected = model.heads[0](torch.cat([big, small]))
    assert out.shape == (6, 8)
    torch.testing.assert_close(out, expected)


def test_scale_factor_rounding_case_still_gives_the_grid():
    # A 15x15 embedding grid for a 13x13 input: floor(15 * sqrt(169 / 225)) == 12, where the
    # original fails; here the embedding is resized to 13x13.
    trunk = build({"IMAGE_SIZE": 30, "PATCH_SIZE": 2, "NUM_LAYERS": 1, "MLP_DIM": 16}, {"N_GPSA_LAYERS": 1}).eval()
    with torch.no_grad():
        (out,) = trunk(torch.randn(1, 3, 26, 26))
    assert out.shape == (1, 16) and torch.isfinite(out).all()


def test_local_init_makes_gpsa_convolutional():
    trunk = build({"NUM_HEADS": 4}, {"LOCALITY_STRENGTH": 2.0, "LOCALITY_DIM": 2})
    gpsa = trunk.blocks[0].attn
    torch.testing.assert_close(gpsa.v.weight, torch.eye(16))
    w = gpsa.pos_proj.weight.detach()
    # head h1 + 2 * h2 of a 2x2 kernel: 2 * strength * (h2 - 0.5, h1 - 0.5), then -strength
    for h1 in range(2):
        for h2 in range(2):
            row = w[h1 + 2 * h2]
            assert row[:2].tolist() == [4 * (h2 - 0.5)] * 2
            assert row[2:4].tolist() == [4 * (h1 - 0.5)] * 2
            assert row[4:].tolist() == [-2.0, -2.0]
    # Each head's positional attention peaks at its own offset from the query patch.
    pos = gpsa.positional_attention(16)[0]  # 4x4 grid, query patch 5 = (row 1, col 1)
    peaks = pos[:, 5].argmax(-1).tolist()
    assert sorted(peaks) == [0, 1, 4, 5]
    # Without USE_LOCAL_INIT v keeps the generic truncated-normal init.
    plain = build(convit={"USE_LOCAL_INIT": False}).blocks[0].attn
    assert not torch.allclose(plain.v.weight, torch.eye(16))
    # A non-positive LOCALITY_STRENGTH means 1 / (layer + 1).
    decayed = build(convit={"LOCALITY_STRENGTH": 0.0})
    assert [b.attn.locality_strength for b in decayed.blocks[:2]] == [1.0, 0.5]


def test_class_token_in_local_layers_without_gpsa_is_the_same_model():
    a = build(convit={"N_GPSA_LAYERS": 0}).eval()
    b = build(convit={"N_GPSA_LAYERS": 0, "CLASS_TOKEN_IN_LOCAL_LAYERS": True}).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0])


def test_feature_names_and_inputs():
    trunk = build().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert trunk(x)[0].shape == trunk(x, ["avgpool"])[0].shape == (1, 16)
        with pytest.raises(ValueError, match="single feature"):
            trunk(x, ["a", "b"])
        with pytest.raises(ValueError, match="square"):
            trunk(torch.randn(1, 3, 16, 12))


def test_interpolate_position_embedding():
    trunk = build()
    same = trunk.interpolate_position_embedding(trunk.pos_embedding.detach())
    assert same is not None and same.shape == (1, 16, 16)
    resized = trunk.interpolate_position_embedding(torch.randn(1, 64, 16))
    assert resized.shape == (1, 16, 16)
    const = trunk.interpolate_position_embedding(torch.ones(1, 9, 16))
    torch.testing.assert_close(const, torch.ones(1, 16, 16))
    with pytest.raises(ValueError):
        trunk.interpolate_position_embedding(torch.randn(1, 10, 16))


@pytest.mark.parametrize(
    "vit, convit, match",
    [
        ({}, {"CLASS_TOKEN_IN_LOCAL_LAYERS": True}, "CLASS_TOKEN_IN_LOCAL_LAYERS"),
        ({}, {"QKV_BIAS": True}, "CONVIT.QKV_BIAS"),
        ({}, {"QK_SCALE": 0.5}, "CONVIT.QK_SCALE"),
        ({"IMAGE_SIZE": 18}, {}, "IMAGE_SIZE"),
        ({"HIDDEN_DIM": 18}, {}, "HIDDEN_DIM"),
        ({"CLASSIFIER": "pool"}, {}, "CLASSIFIER"),
        ({"HYBRID": "resnet"}, {}, "HYBRID"),
        ({"QK_SCALE": True}, {}, "QK_SCALE"),
        ({}, {"LOCALITY_DIM": 0}, "LOCALITY_DIM"),
    ],
)
def test_config_errors(vit, convit, match):
    with pytest.raises(ConfigError, match=match):
        build(vit, convit)


def test_qkv_keys_under_convit_that_agree_are_accepted():
    # As in the original simclr/convit_b.yaml: the same values as VISION_TRANSFORMERS.
    trunk = build(convit={"QKV_BIAS": False, "QK_SCALE": False})
    assert trunk.blocks[0].attn.qk.bias is None
