"""The trunk contract on the transformer trunks, beyond tests/test_trunk_contract.py (which runs the
shared checks, grad checkpointing included, on every spec): token features and their reductions,
the intermediate formats, stopping early, the families' checkpointing keys, resize_pos_embed, and
timm's ViT for ``forward_intermediates``.
"""

import copy
import functools

import pytest
import torch

import vissl_models
from specs import TRUNK_SPECS
from utils import deep_update, model_config

TRANSFORMERS = {
    "vision_transformer", "vision_transformer_fsdp", "xcit", "xcit_fsdp", "swin_transformer",
    "swin_transformer_official", "beit", "convit", "classy_vit",
}
ALL_SPECS = [s for s in TRUNK_SPECS if s.name in TRANSFORMERS]
# One spec per trunk name (the first), plus the ViT without class token: enough variety, kept fast.
SPECS = [s for i, s in enumerate(ALL_SPECS) if s.name not in {t.name for t in ALL_SPECS[:i]}]
SPECS += [s for s in ALL_SPECS if s.id == "vit_tiny_no_class_token"]
# The heavier checks skip the variants that share all their code (fsdp, official Swin).
CORE = [s for s in SPECS if not s.name.endswith(("_fsdp", "_official"))]


def build(spec, **model):
    cfg = model_config(**deep_update(deep_update(spec.model, {"TRUNK": {"NAME": spec.name}}), model))
    trunk = vissl_models.get_model_trunk(spec.name)(cfg, spec.name)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial weights everywhere (norms, biases, gates)
        for p in trunk.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return trunk.eval()


def images(trunk, batch=2, size=None):
    h, w = trunk.default_input_size if size is None else (size, size)
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(1))


def test_every_transformer_trunk_has_a_spec():
    assert {s.name for s in ALL_SPECS} == {s.name for s in SPECS} == TRANSFORMERS


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_feature_info_matches_feature_dict(spec):
    trunk = build(spec)
    names = [f.name for f in trunk.feature_info]
    assert trunk.default_feature in names
    assert trunk.num_features == trunk.feature(trunk.default_feature).channels
    assert set(names) <= set(trunk.feature_names)
    x = images(trunk)
    with torch.no_grad():
        feats = trunk.feature_dict(x, names)
    assert list(feats) == names
    for info in trunk.feature_info:
        t = feats[info.name]
        if info.kind == "vector":
            assert t.shape == (2, info.channels) and info.reduction is None, info
        else:
            assert info.kind == "tokens" and t.ndim == 3 and t.shape[-1] == info.channels, info
            grid = (x.shape[-2] // info.reduction) * (x.shape[-1] // info.reduction)
            assert t.shape[1] == grid + trunk.num_prefix_tokens, info


@pytest.mark.parametrize("spec", CORE, ids=lambda s: s.id)
def test_feature_dict_equals_forward(spec):
    trunk = build(spec)
    x = images(trunk)
    with torch.no_grad():
        assert torch.equal(trunk.feature_dict(x)[trunk.default_feature], trunk(x)[0])
        names = [n for n in trunk.feature_names if n != "lastMAP"][:4]
        if spec.name in ("convit", "classy_vit"):  # one feature, whatever single name is asked
            names = names[:1]
        feats = trunk.feature_dict(x, names)
        for name in names:
            (expected,) = trunk(x, [name])
            assert torch.equal(feats[name], expected), name


@pytest.mark.parametrize("spec", CORE, ids=lambda s: s.id)
def test_forward_features_is_the_final_normalised_map_or_tokens(spec):
    trunk = build(spec)
    x = images(trunk)
    with torch.no_grad():
        final = trunk.forward_features(x)
        pooled = trunk(x)[0]
    if spec.name.startswith("swin"):
        assert final.shape[-1] == trunk.num_features and final.ndim == 4  # (B, H, W, C), timm's layout
        torch.testing.assert_close(final.flatten(1, 2).mean(1), pooled)
    elif trunk.default_feature == "lastPOOL":
        torch.testing.assert_close(final.mean(1), pooled)
    else:
        torch.testing.assert_close(final[:, 0], pooled)


@pytest.mark.parametrize("spec", CORE, ids=lambda s: s.id)
def test_forward_intermediates(spec):
    trunk = build(spec)
    x = images(trunk)
    n = len(trunk.intermediate_features)
    with torch.no_grad():
        final, maps = trunk.forward_intermediates(x, stop_early=False)
        torch.testing.assert_close(final, trunk.forward_features(x))
        assert len(maps) == n and all(m.ndim == 4 and m.shape[0] == 2 for m in maps)
        # The other formats hold the same values.
        tokens = trunk.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        nhwc = trunk.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        for m, t, h in zip(maps, tokens, nhwc, strict=True):
            assert torch.equal(m.permute(0, 2, 3, 1), h)
            assert torch.equal(h.flatten(1, 2), t)
        # An int takes the last n, a list those indices; the last one normalised is the final's patches.
        last = trunk.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        first_and_last = trunk.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert len(last) == 1 and len(first_and_last) == 2
    assert torch.equal(first_and_last[0], maps[0]) and torch.equal(first_and_last[1], maps[-1])
    if not spec.name.startswith("xcit"):  # XCiT's final tokens come from the class-attention blocks
        patches = final.flatten(1, 2) if final.ndim == 4 else final[:, final.shape[1] - last[0][0, 0].numel():]
        torch.testing.assert_close(last[0].flatten(2).transpose(1, 2), patches)
    with pytest.raises(ValueError, match="indices"):
        trunk.forward_intermediates(x, indices=n + 1)
    with pytest.raises(ValueError, match="output_fmt"):
        trunk.forward_intermediates(x, output_fmt="NCL")


@pytest.mark.parametrize("spec", CORE, ids=lambda s: s.id)
def test_forward_intermediates_stops_early(spec):
    trunk = build(spec)
    x = images(trunk)
    with torch.no_grad():
        full = trunk.forward_intermediates(x, stop_early=False, intermediates_only=True)
        final, early = trunk.forward_intermediates(x, indices=[0])
    assert torch.equal(early[0], full[0]) and torch.equal(final, early[0])
    # Nothing after the first block runs: break the later ones and ask again.
    later = trunk.layers[1:] if spec.name.startswith("swin") else trunk.intermediate_features[1:]
    if not spec.name.startswith("swin"):
        later = [trunk.get_submodule(name) for name in later]
    for module in later:
        module.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(AssertionError("ran a later block")))
    with torch.no_grad():
        assert torch.equal(trunk.forward_intermediates(x, indices=[0], intermediates_only=True)[0], full[0])


@pytest.mark.parametrize(
    "name, section, key",
    [
        ("vision_transformer", "VISION_TRANSFORMERS", "CHECKPOINT_BLOCK"),
        ("xcit", "XCIT", "CHECKPOINT_XCA_BLOCK"),
        ("xcit", "XCIT", "CHECKPOINT_ATTN_BLOCK"),
    ],
)
def test_family_checkpointing_keys_switch_grad_checkpointing_on(name, section, key):
    spec = next(s for s in SPECS if s.name == name)
    assert not build(spec, TRUNK={section: {key: False}}).grad_checkpointing
    assert build(spec, TRUNK={section: {key: True}}).grad_checkpointing


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_lab_input_is_refused_by_every_transformer(spec):
    with pytest.raises(vissl_models.config.ConfigError, match="MODEL.INPUT_TYPE: got 'lab'"):
        build(spec, INPUT_TYPE="lab")


def test_resize_pos_embed_vit_gives_what_interpolation_gave():
    spec = next(s for s in SPECS if s.id == "vit_tiny")
    trunk = build(spec)
    x = images(trunk, size=48)
    with torch.no_grad():
        before = trunk(x, ["lastCLS", "lastBLK"])
        trunk.resize_pos_embed(48)
        after = trunk(x, ["lastCLS", "lastBLK"])
    assert trunk.pos_embed.shape == (1, 1 + 36, 16) and trunk.default_input_size == (48, 48)
    assert trunk.patch_embed.num_patches == 36 and trunk.options.image_size == (48, 48)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    info = {f.name: f for f in trunk.feature_info}
    with torch.no_grad():
        assert trunk.feature_dict(images(trunk), ["lastBLK"])["lastBLK"].shape[1] == 1 + (48 // info["lastBLK"].reduction) ** 2


def test_resize_pos_embed_vit_rectangular():
    spec = next(s for s in SPECS if s.id == "vit_tiny")
    trunk = build(spec)
    trunk.resize_pos_embed((16, 32))
    assert trunk.pos_embed.shape == (1, 1 + 2 * 4, 16)
    with torch.no_grad():
        assert trunk.forward_intermediates(torch.randn(1, 3, 16, 32), intermediates_only=True)[0].shape == (1, 16, 2, 4)


def test_resize_pos_embed_convit_gives_what_interpolation_gave():
    spec = next(s for s in SPECS if s.name == "convit")
    trunk = build(spec)
    x = images(trunk, size=48)
    with torch.no_grad():
        before = trunk(x)[0]
        trunk.resize_pos_embed(48)
        after = trunk(x)[0]
    assert trunk.pos_embedding.shape[1] == (48 // trunk.patch_size) ** 2
    assert torch.equal(before, after) and trunk.default_input_size == (48, 48)


def test_resize_pos_embed_classy_vit_as_classy_loads_another_size():
    spec = next(s for s in SPECS if s.id == "classy_vit_token")
    trunk = build(spec)
    old = trunk.model.encoder.pos_embedding.detach().clone()
    trunk.resize_pos_embed(48)
    big = build(spec, TRUNK={"VISION_TRANSFORMERS": {"IMAGE_SIZE": 48}})
    assert torch.equal(trunk.model.encoder.pos_embedding, big.interpolate_position_embedding(old))
    with torch.no_grad():
        assert trunk(images(trunk))[0].shape == (2, 16)


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.name == "beit"], ids=lambda s: s.id)
def test_resize_pos_embed_beit(spec):
    trunk = build(spec)
    state = copy.deepcopy(trunk.state_dict())
    x = images(trunk)
    with torch.no_grad():
        ref = trunk(x)[0]
    trunk.resize_pos_embed(48)
    assert trunk.default_input_size == (48, 48)
    shapes = {k: v.shape for k, v in trunk.state_dict().items()}
    for k, v in state.items():
        if "relative_position" in k:
            # (2*6-1)^2 offsets + 3 class-token entries for the 6x6 grid
            assert shapes[k][0] in (11 * 11 + 3, 37), k
        elif k == "pos_embed":
            assert shapes[k] == (1, 37, 16)
        else:
            assert shapes[k] == v.shape, k
    with torch.no_grad():
        assert trunk(images(trunk))[0].shape == (2, 16)
    trunk.resize_pos_embed(32)  # the bicubic round trip of a 4x4 grid through 6x6 is not exact,
    with torch.no_grad():  # but the model runs at the old size again
        assert trunk(x)[0].shape == ref.shape
    with pytest.raises(ValueError, match="IMAGE_SIZE"):
        trunk(images(trunk, size=48))


def test_vit_forward_intermediates_match_timm():
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    spec = next(s for s in SPECS if s.id == "vit_tiny")
    trunk = build(spec)
    ref = timm_vit.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, qkv_bias=True,
        num_classes=0, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()
    state = {k: v for k, v in trunk.state_dict().items() if not k.startswith("patch_masking")}
    ref.load_state_dict(state)
    x = images(trunk)
    with torch.no_grad():
        for kwargs in ({}, {"indices": [0], "norm": True}, {"indices": 1, "output_fmt": "NLC"}):
            # stop_early=False: timm's final output is then the same as ours (forward_features)
            ours = trunk.forward_intermediates(x, stop_early=False, **kwargs)
            theirs = ref.forward_intermediates(x, stop_early=False, **kwargs)
            torch.testing.assert_close(ours[0], theirs[0])
            for a, b in zip(ours[1], theirs[1], strict=True):
                torch.testing.assert_close(a, b)
