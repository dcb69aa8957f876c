"""Swin trunks: the original's key layout and index buffers, outputs against torchvision's Swin,
window masks and attention against explicit math, input sizes, errors."""

import pytest
import torch
import torch.nn.functional as F

from vissl_models.config.loader import ConfigError
from vissl_models.trunks.swin_transformer import WindowAttention, relative_position_index, shifted_window_mask
from utils import build_trunk

TINY = {"IMAGE_SIZE": 32, "PATCH_SIZE": 4, "EMBED_DIM": 16, "DEPTHS": [2, 2], "NUM_HEADS": [2, 4], "WINDOW_SIZE": 4}


def build(name="swin_transformer", seed=0, **swin):
    return build_trunk(name, seed, "SWIN_TRANSFORMER", dict(TINY, **swin))


def randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] > 8 else 0.0))
    return module


def brute_force_index(wh, ww):
    """Relative-offset index by the definition: one table row per (dh, dw) offset, row-major."""
    coords = [(h, w) for h in range(wh) for w in range(ww)]
    return torch.tensor(
        [[(hi - hj + wh - 1) * (2 * ww - 1) + (wi - wj + ww - 1) for (hj, wj) in coords] for (hi, wi) in coords]
    )


def slice_mask(H, W, ws, shift):
    """The shifted-window mask built region by region with slices, the Swin paper's way."""
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, h, w, :] = cnt
            cnt += 1
    win = img.view(1, H // ws, ws, W // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def test_state_dict_layout_and_buffers_match_original():
    vissl, official = build(), build("swin_transformer_official")
    keys = {k: tuple(v.shape) for k, v in vissl.state_dict().items()}
    assert keys["patch_embed.proj.weight"] == (16, 3, 4, 4)
    assert keys["patch_embed.norm.weight"] == (16,)
    assert keys["layers.0.downsample.reduction.weight"] == (32, 64)
    assert keys["layers.0.downsample.norm.weight"] == (64,)
    assert "layers.1.downsample.reduction.weight" not in keys
    assert keys["norm.weight"] == (32,)
    # stage 0: 8x8 map, window 4; stage 1: 4x4 map, one window of 4
    assert keys["layers.0.blocks.1.attn.relative_position_bias_table"] == (49, 2)
    assert keys["layers.1.blocks.0.attn.relative_position_bias_table"] == (49, 4)
    assert keys["layers.1.blocks.1.mlp.fc1.weight"] == (128, 32)
    for k, v in vissl.state_dict().items():
        if k.endswith("relative_position_index"):
            assert v.dtype == torch.int64 and torch.equal(v, brute_force_index(4, 4)), k
    # the official variant adds the shift masks of shifted blocks (stage 1 is one unshifted window)
    extra = set(official.state_dict()) - set(keys)
    assert extra == {"layers.0.blocks.1.attn_mask"}
    assert torch.equal(official.state_dict()["layers.0.blocks.1.attn_mask"], slice_mask(8, 8, 4, 2))


@pytest.mark.parametrize("window", [(1, 1), (3, 5), (7, 7)])
def test_relative_position_index_matches_definition(window):
    assert torch.equal(relative_position_index(window), brute_force_index(*window))


def test_window_shrinks_to_small_maps_as_in_original():
    trunk = build(IMAGE_SIZE=24, WINDOW_SIZE=7)  # stage maps 6x6 and 3x3: one window each
    blocks = [b for layer in trunk.layers for b in layer.blocks]
    assert [(b.window_size, b.shift_size) for b in blocks] == [(6, 0), (6, 0), (3, 0), (3, 0)]
    assert torch.equal(blocks[0].attn.relative_position_index, brute_force_index(6, 6))


@pytest.mark.parametrize("H,W,ws,shift", [(8, 8, 4, 2), (14, 21, 7, 3), (6, 9, 3, 1)])
def test_shifted_window_mask_matches_slice_construction(H, W, ws, shift):
    assert torch.equal(shifted_window_mask(H, W, ws, shift), slice_mask(H, W, ws, shift))


@pytest.mark.parametrize("with_mask", [False, True])
def test_window_attention_matches_explicit_softmax(with_mask):
    torch.manual_seed(0)
    attn = randomize(WindowAttention(8, (3, 3), 2, qkv_bias=True)).eval()
    nW, B, N = 4, 2, 9
    x = torch.randn(B * nW, N, 8)
    mask = slice_mask(6, 6, 3, 1) if with_mask else None
    with torch.no_grad():
        out = attn(x, mask)
        q, k, v = attn.qkv(x).reshape(B * nW, N, 3, 2, 4).permute(2, 0, 3, 1, 4)
        logits = (q * 4 ** -0.5) @ k.transpose(-2, -1)
        bias = attn.relative_position_bias_table[brute_force_index(3, 3).view(-1)].view(N, N, 2).permute(2, 0, 1)
        logits = logits + bias
        if with_mask:
            logits = (logits.view(B, nW, 2, N, N) + mask[None, :, None]).view(-1, 2, N, N)
        ref = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B * nW, N, 8))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def to_torchvision(state):
    """Our (the original's) keys -> torchvision's ``SwinTransformer`` keys."""
    out = {}
    for k, v in state.items():
        if k.endswith(("relative_position_index", "attn_mask")):
            continue
        parts = k.split(".")
        if parts[0] == "patch_embed":
            k = "features.0." + {"proj": "0", "norm": "2"}[parts[1]] + "." + parts[2]
        elif parts[0] == "layers":
            i = int(parts[1])
            if parts[2] == "blocks":
                k = f"features.{2 * i + 1}." + ".".join(parts[3:])
                k = k.replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.3")
            else:
                k = f"features.{2 * i + 2}." + ".".join(parts[3:])
        out[k] = v
    return out


@pytest.mark.parametrize("name", ["swin_transformer", "swin_transformer_official"])
def test_outputs_match_torchvision_swin(name):
    from torchvision.models.swin_transformer import SwinTransformer

    # 56px, patch 4: a 14x14 map (two windows a side, shifted) then 7x7 (one window, no shift)
    ours = randomize(build(name, IMAGE_SIZE=56, WINDOW_SIZE=7)).eval()
    ref = SwinTransformer([4, 4], 16, [2, 2], [2, 4], [7, 7], stochastic_depth_prob=0.0, num_classes=1).eval()
    missing, unexpected = ref.load_state_dict(to_torchvision(ours.state_dict()), strict=False)
    assert set(missing) <= {"head.weight", "head.bias"} | {k for k in missing if "relative_position_index" in k}
    assert not unexpected
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        (feat,) = ours(x)
        expected = ref.flatten(ref.avgpool(ref.permute(ref.norm(ref.features(x)))))
    torch.testing.assert_close(feat, expected, rtol=1e-4, atol=1e-5)


def test_any_input_size_pads_like_the_original():
    trunk = randomize(build()).eval()
    x = torch.randn(2, 3, 22, 30)
    with torch.no_grad():
        (feat,) = trunk(x)
        # the image is zero-padded to whole patches before the patch embedding
        (padded,) = trunk(F.pad(x, (0, 2, 0, 2)))
    assert feat.shape == (2, 32)
    torch.testing.assert_close(feat, padded)
    official = build("swin_transformer_official")
    official.load_state_dict(trunk.state_dict(), strict=False)
    official.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(official(x)[0], trunk(x)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="IMAGE_SIZE"):
        official(torch.randn(1, 3, 24, 24))


def test_errors():
    with pytest.raises(ValueError, match="lastCLS"):
        build()(torch.randn(1, 3, 32, 32), ["res5"])
    with pytest.raises(ConfigError, match="NUM_HEADS"):
        build(NUM_HEADS=[2])
    with pytest.raises(ConfigError, match="NUM_HEADS"):
        build(NUM_HEADS=[3, 4])
    with pytest.raises(ConfigError, match="multiple of the window"):
        build("swin_transformer_official", IMAGE_SIZE=40, WINDOW_SIZE=4)  # 10x10 map, window 4
    with pytest.raises(ConfigError, match="no tokens"):
        build(IMAGE_SIZE=8, DEPTHS=[1, 1, 1], NUM_HEADS=[2, 2, 2])


@pytest.mark.parametrize("name,size", [("swin_transformer", 22), ("swin_transformer_official", 32)])
def test_compiles_without_graph_breaks(name, size):
    torch._dynamo.reset()
    trunk = build(name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(trunk, fullgraph=True, backend="eager")(x)[0], trunk(x)[0])
