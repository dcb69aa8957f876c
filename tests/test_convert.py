"""Weight conversion between VISSL trunks and torchvision / timm / classy_vision.

Each pair: build the library model with random weights (nothing is downloaded), convert, load
into the other side strictly and compare outputs in eval mode. Norm parameters and statistics are
randomised first, so zero-initialised residual branches do not hide a wrong mapping.
"""

import argparse
import io
import os

import pytest
import torch
import torchvision

import vissl_models
from vissl_models.checkpoint import load_checkpoint
from vissl_models.checkpoint.convert import (
    add_convert_parser,
    convert_checkpoint,
    convert_state_dict,
    convert_weights,
    detect_side,
    run_convert,
    supported_pairs,
    vissl_trunk_config,
)
from utils import image, model_config

try:
    import timm
except ImportError:  # an optional extra: the torchvision and classy_vision tests still run
    timm = None

needs_timm = pytest.mark.skipif(timm is None, reason='timm not installed (pip install "vissl_models[timm]")')


def randomize(module, seed=0):
    """Random norm weights, biases and running statistics (1-D tensors); conv/linear keep their init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point() or t.dim() != 1:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("weight") or "gamma" in name:
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return module.eval()


def vissl_trunk(trunk_cfg):
    name = trunk_cfg["NAME"]
    return vissl_models.get_model_trunk(name)(model_config(TRUNK=trunk_cfg), name).eval()


def load_vissl(state, trunk_cfg=None):
    """A VISSL trunk built from the config the weights imply, with them loaded strictly."""
    trunk = vissl_trunk(trunk_cfg or vissl_trunk_config(state))
    trunk.load_state_dict(state, strict=True)
    return trunk


def pooled(model, x):
    """timm's pooled, pre-classifier features."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


# --- ResNe(X)t ----------------------------------------------------------------------------------


def small_resnext():
    """A ResNeXt-50 layout with 4 groups of 8 channels (resnext50_32x4d is slow to build here)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [3, 4, 6, 3], groups=4, width_per_group=8)


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_4x8d"])
def test_torchvision_resnet_to_vissl_and_back(arch):
    tv = randomize(torchvision.models.resnet18() if arch == "resnet18" else small_resnext())
    ref_state = tv.state_dict()
    tv.fc = torch.nn.Identity()
    arch = arch if arch == "resnet18" else None  # no torchvision model of that name to check against
    state = convert_state_dict(ref_state, "torchvision", "vissl", arch)
    assert "fc.weight" not in state and "_feature_blocks.layer4.1.conv1.weight" in state
    ours = load_vissl(state)
    x = image(2, 32)
    with torch.no_grad():
        close(ours(x)[0], tv(x))
    if arch is None:
        expected = {"DEPTH": 50, "WIDTH_MULTIPLIER": 1, "GROUPS": 4, "WIDTH_PER_GROUP": 8}
        assert vissl_trunk_config(state)["RESNETS"] == expected
    back = convert_state_dict(state, "vissl", "torchvision", arch)
    assert set(back) == set(ref_state) - {"fc.weight", "fc.bias"}
    assert all(back[k] is state["_feature_blocks." + k] for k in back)


TORCHVISION_RESNETS = {
    "resnet18": {"DEPTH": 18},
    "resnet34": {"DEPTH": 34},
    "resnet50": {"DEPTH": 50, "GROUPS": 1, "WIDTH_PER_GROUP": 64},
    "resnet101": {"DEPTH": 101, "GROUPS": 1, "WIDTH_PER_GROUP": 64},
    "resnet152": {"DEPTH": 152, "GROUPS": 1, "WIDTH_PER_GROUP": 64},
    "resnext50_32x4d": {"DEPTH": 50, "GROUPS": 32, "WIDTH_PER_GROUP": 4},
    "resnext101_32x8d": {"DEPTH": 101, "GROUPS": 32, "WIDTH_PER_GROUP": 8},
    "resnext101_64x4d": {"DEPTH": 101, "GROUPS": 64, "WIDTH_PER_GROUP": 4},
    # torchvision's wide ResNets widen the bottleneck only: WIDTH_PER_GROUP 128, not WIDTH_MULTIPLIER 2.
    "wide_resnet50_2": {"DEPTH": 50, "GROUPS": 1, "WIDTH_PER_GROUP": 128},
    "wide_resnet101_2": {"DEPTH": 101, "GROUPS": 1, "WIDTH_PER_GROUP": 128},
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_RESNETS))
def test_every_torchvision_resnet_maps_onto_the_resnet_trunk(arch):
    """Keys and shapes only (meta device: no memory, no compute)."""
    with torch.device("meta"):
        tv = torchvision.models.get_model(arch)
        state = convert_state_dict(tv.state_dict(), "torchvision", "vissl", arch)
        cfg = vissl_trunk_config(state)
        assert cfg == {"NAME": "resnet", "RESNETS": dict(TORCHVISION_RESNETS[arch], WIDTH_MULTIPLIER=1)}
        ours = vissl_trunk(cfg)
    assert shapes(ours.state_dict()) == shapes(state)


@needs_timm
def test_timm_resnet_to_vissl_and_back():
    m = randomize(timm.create_model("resnet18", pretrained=False))
    state = convert_state_dict(m.state_dict(), "timm", "vissl", "resnet18")
    ours = load_vissl(state)
    x = image(2, 32)
    with torch.no_grad():
        close(ours(x)[0], pooled(m, x))
    back = convert_state_dict(state, "vissl", "timm", "resnet18")
    assert set(back) == set(m.state_dict()) - {"fc.weight", "fc.bias"}


def test_vissl_width_multiplier_resnet_has_no_library_model():
    with torch.device("meta"):
        wide = vissl_trunk({"NAME": "resnet", "RESNETS": {"DEPTH": 50, "WIDTH_MULTIPLIER": 2}})
        state = wide.state_dict()
        assert vissl_trunk_config(state)["RESNETS"]["WIDTH_MULTIPLIER"] == 2
        with pytest.raises(ValueError, match="do not fit torchvision 'wide_resnet50_2'.*shape differs"):
            convert_state_dict(state, "vissl", "torchvision", "wide_resnet50_2")


# --- RegNet -------------------------------------------------------------------------------------


def tiny_timm_regnet(se_ratio=0.25):
    from timm.models.regnet import RegNet, RegNetCfg

    torch.manual_seed(0)
    cfg = RegNetCfg(w0=8, wa=8, wm=1.6, group_size=8, depth=5, stem_width=8, se_ratio=se_ratio)
    return randomize(RegNet(cfg, num_classes=10))


@pytest.mark.parametrize("se_ratio", [0.25, 0.0], ids=["regnety", "regnetx"])
@needs_timm
def test_timm_regnet_to_vissl_and_back(se_ratio):
    m = tiny_timm_regnet(se_ratio)
    state = convert_state_dict(m.state_dict(), "timm", "vissl")
    cfg = vissl_trunk_config(state)
    assert cfg["REGNET"]["depths"] == [1, 1, 1, 2] and cfg["REGNET"].get("use_se", True) == (se_ratio > 0)
    ours = load_vissl(state, cfg)
    x = image(2, 32)
    with torch.no_grad():
        close(ours(x)[0], pooled(m, x))
    back = convert_state_dict(state, "vissl", "timm")
    assert set(back) == set(m.state_dict()) - {"head.fc.weight", "head.fc.bias"}
    assert "s4.b2.se.fc1.weight" in back or se_ratio == 0


@needs_timm
def test_timm_named_regnet_matches_its_explicit_vissl_config():
    """regnety_002 built by the VISSL trunk's explicit RegNet form loads the converted weights."""
    m = randomize(timm.create_model("regnety_002", pretrained=False))
    state = convert_state_dict(m.state_dict(), "timm", "vissl", "regnety_002")
    explicit = {"NAME": "regnet", "REGNET": {"depth": 13, "w_0": 24, "w_a": 36.44, "w_m": 2.49, "group_width": 8}}
    ours = load_vissl(state, explicit)
    x = image(1, 32)
    with torch.no_grad():
        close(ours(x)[0], pooled(m, x))


def test_classy_vision_regnet_to_vissl_and_back():
    from classy_vision.models import build_model

    torch.manual_seed(0)
    classy = randomize(build_model({"name": "regnet_y_400mf"}))
    state = convert_state_dict(classy.state_dict(), "classy_vision", "vissl", "regnet_y_400mf")
    ours = load_vissl(state, {"NAME": "regnet", "REGNET": {"name": "regnet_y_400mf"}})
    x = image(1, 32)
    with torch.no_grad():
        close(ours(x, ["res5"])[0], classy(x))
    back = convert_state_dict(state, "vissl", "classy_vision", "regnet_y_400mf")
    assert shapes(back) == shapes(classy.state_dict())


@needs_timm
def test_torchvision_regnet_to_vissl_and_to_timm():
    tv = randomize(torchvision.models.regnet_y_400mf())
    x = image(1, 32)
    state = convert_state_dict(tv.state_dict(), "torchvision", "vissl", "regnet_y_400mf")
    ours = load_vissl(state)
    # Library to library keeps the classifier: torchvision fc -> timm head.fc.
    tm = timm.create_model("regnety_004", pretrained=False).eval()
    tm.load_state_dict(convert_state_dict(tv.state_dict(), "torchvision", "timm", "regnety_004"), strict=True)
    with torch.no_grad():
        logits = tv(x)
        close(tm(x), logits)
        tv.fc = torch.nn.Identity()
        close(ours(x)[0], tv(x))


@needs_timm
def test_regnet_fsdp_block_groups_convert_to_timm():
    """SEER-style regnet_fsdp keys (``block1-part0.block1-0``) flatten into timm's stages."""
    from specs.regnet import TINY_REGNET

    torch.manual_seed(0)
    cfg = {"NAME": "regnet_fsdp", "REGNET": dict(TINY_REGNET, stage_checkpoints=[[], [], [], [1]])}
    ours = randomize(vissl_trunk(cfg))
    state = ours.state_dict()
    assert any("-part1." in k for k in state)
    m = tiny_timm_regnet()
    m.load_state_dict(convert_state_dict(state, "vissl", "timm"), strict=False)
    x = image(2, 32)
    with torch.no_grad():
        close(pooled(m, x), ours(x)[0])


# --- transformers -------------------------------------------------------------------------------


@needs_timm
def test_timm_vit_to_vissl_and_back():
    m = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2))
    state = convert_state_dict(m.state_dict(), "timm", "vissl")
    cfg = vissl_trunk_config(state, arch="vit_tiny_patch16_224")
    assert cfg["VISION_TRANSFORMERS"] == {
        "PATCH_SIZE": 16, "HIDDEN_DIM": 192, "NUM_LAYERS": 2, "MLP_DIM": 768, "QKV_BIAS": True,
        "IMAGE_SIZE": 32, "NUM_HEADS": 3,
    }
    ours = load_vissl(state, cfg)
    x = image(2, 32)
    with torch.no_grad():
        close(ours(x)[0], pooled(m, x))
    assert set(convert_state_dict(state, "vissl", "timm")) == set(m.state_dict()) - {"head.weight", "head.bias"}


@needs_timm
def test_vissl_vit_without_qkv_bias_gets_zero_biases_for_timm():
    torch.manual_seed(0)
    vit = {"IMAGE_SIZE": 32, "PATCH_SIZE": 16, "HIDDEN_DIM": 192, "NUM_LAYERS": 12, "NUM_HEADS": 3,
           "MLP_DIM": 768, "QKV_BIAS": False}
    ours = randomize(vissl_trunk({"NAME": "vision_transformer", "VISION_TRANSFORMERS": vit}))
    result = convert_weights(ours.state_dict(), "vissl", "timm", "vit_tiny_patch16_224")
    assert torch.equal(result.state["blocks.3.attn.qkv.bias"], torch.zeros(576))
    assert any("zero qkv biases" in n for n in result.notes)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    m.load_state_dict(result.state, strict=False)
    x = image(2, 32)
    with torch.no_grad():
        close(pooled(m, x), ours(x)[0])


def test_ibot_mask_token_is_dropped_for_timm():
    vit = {"IMAGE_SIZE": 32, "PATCH_SIZE": 16, "HIDDEN_DIM": 32, "NUM_LAYERS": 1, "NUM_HEADS": 2,
           "MLP_DIM": 64, "QKV_BIAS": True, "MASKED_IMAGE_MODELING": {"NAME": "ibot"}}
    state = vissl_trunk({"NAME": "vision_transformer", "VISION_TRANSFORMERS": vit}).state_dict()
    assert "patch_masking.masked_embed" in state
    result = convert_weights(state, "vissl", "timm")
    assert result.dropped == ["patch_masking.masked_embed"]
    assert "patch_masking.masked_embed" not in result.state


@needs_timm
def test_timm_xcit_to_vissl_and_back():
    m = randomize(timm.create_model("xcit_nano_12_p16_224", pretrained=False, img_size=32, depth=2))
    tm_state = m.state_dict()
    state = convert_state_dict(tm_state, "timm", "vissl")
    q, k, v = (tm_state[f"cls_attn_blocks.1.attn.{n}.weight"] for n in "qkv")
    assert torch.equal(state["cls_attn_blocks.1.attn.qkv.weight"], torch.cat([q, k, v]))
    assert "pos_embeder.token_projection.weight" in state
    cfg = vissl_trunk_config(state, arch="xcit_nano_12_p16_224")
    assert cfg["NAME"] == "xcit" and cfg["XCIT"]["NUM_HEADS"] == 4 and cfg["XCIT"]["TOKENS_NORM"] is False
    ours = load_vissl(state, cfg)
    x = image(2, 32)
    with torch.no_grad():
        close(ours(x)[0], pooled(m, x))
    back = convert_state_dict(state, "vissl", "timm")
    assert set(back) == set(tm_state) - {"head.weight", "head.bias"}
    assert all(torch.equal(back[n], tm_state[n]) for n in back)


# --- round trips, heads, errors -----------------------------------------------------------------

TINY_VISSL = {
    "resnet": {"NAME": "resnet", "RESNETS": {"DEPTH": 50, "GROUPS": 4, "WIDTH_PER_GROUP": 8}},
    "regnet": {"NAME": "regnet", "REGNET": {
        "depth": 5, "w_0": 8, "w_a": 8, "w_m": 1.6, "group_width": 8, "stem_width": 8}},
    "vision_transformer": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": {
        "IMAGE_SIZE": 32, "PATCH_SIZE": 16, "HIDDEN_DIM": 32, "NUM_LAYERS": 2, "NUM_HEADS": 2, "MLP_DIM": 64,
        "QKV_BIAS": True}},
    "xcit": {"NAME": "xcit", "XCIT": {
        "IMAGE_SIZE": 32, "PATCH_SIZE": 8, "HIDDEN_DIM": 32, "NUM_LAYERS": 2, "NUM_HEADS": 4}},
}


@pytest.mark.parametrize(
    "family,lib", sorted({(f, d) for s, d, f in supported_pairs() if s == "vissl"}), ids=lambda v: v
)
def test_round_trip_gives_identical_tensors(family, lib):
    state = vissl_trunk(TINY_VISSL[family]).state_dict()
    back = convert_state_dict(convert_state_dict(state, "vissl", lib), lib, "vissl")
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert [(s, f) for s, f in detect_side(state) if s == "vissl"] == [("vissl", family)]


def test_unsupported_pairs_list_the_supported_ones():
    state = vissl_trunk(TINY_VISSL["resnet"]).state_dict()
    listed = r"no vissl -> classy_vision conversion for resnet; supported pairs: vissl -> torchvision \(resnet"
    with pytest.raises(ValueError, match=listed):
        convert_state_dict(state, "vissl", "classy_vision")
    with pytest.raises(ValueError, match=r"dst='keras'.*supported pairs: vissl -> torchvision"):
        convert_state_dict(state, "vissl", "keras")
    vit = vissl_trunk(TINY_VISSL["vision_transformer"]).state_dict()
    with pytest.raises(ValueError, match=r"no vissl -> torchvision conversion for vision_transformer"):
        convert_state_dict(vit, "vissl", "torchvision", "vision_transformer")
    with pytest.raises(ValueError, match="not a torchvision model this converter knows"):
        convert_state_dict(state, "vissl", "torchvision", "vgg16")


def test_missing_timm_is_reported_with_the_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)
    state = vissl_trunk(TINY_VISSL["vision_transformer"]).state_dict()
    assert "blocks.0.attn.qkv.weight" in convert_state_dict(state, "vissl", "timm")  # no timm needed
    with pytest.raises(ImportError, match=r'pip install "vissl_models\[timm\]"'):
        convert_state_dict(state, "vissl", "timm", "vit_tiny_patch16_224")


@needs_timm
def test_unknown_keys_are_named_not_dropped():
    with torch.device("meta"):
        deep_stem = timm.create_model("resnet50d", pretrained=False).state_dict()
        with pytest.raises(ValueError, match=r"closest is resnet.*conv1\.0\.weight"):
            convert_state_dict(deep_stem, "timm", "vissl")
        with pytest.raises(ValueError, match=r"keys are not part of the timm resnet layout: \['conv1\.0\.weight'"):
            convert_state_dict(deep_stem, "timm", "vissl", "resnet")
        with pytest.raises(ValueError, match=r"'resnet50d' is not a timm model this converter knows"):
            convert_state_dict(deep_stem, "timm", "vissl", "resnet50d")


def test_vissl_linear_head_becomes_the_classifier():
    torch.manual_seed(0)
    model = vissl_models.build_model(model_config(
        TRUNK={"NAME": "resnet", "RESNETS": {"DEPTH": 18}}, HEAD={"PARAMS": [["mlp", {"dims": [512, 10]}]]}))
    randomize(model)
    heads = {k[len("heads."):]: v for k, v in model.state_dict().items() if k.startswith("heads.")}
    trunk = {k[len("trunk."):]: v for k, v in model.state_dict().items() if k.startswith("trunk.")}
    tv = torchvision.models.resnet18(num_classes=10).eval()
    tv.load_state_dict(convert_state_dict(trunk, "vissl", "torchvision", "resnet18", head=heads), strict=True)
    x = image(2, 32)
    with torch.no_grad():
        close(tv(x), model(x)[0])
    with pytest.raises(ValueError, match="takes 512 features but the trunk gives 2048"):
        convert_state_dict(vissl_trunk(TINY_VISSL["resnet"]).state_dict(), "vissl", "torchvision", head=heads)


# --- files and command line ---------------------------------------------------------------------


def test_convert_checkpoint_files_both_ways(tmp_path):
    tv = randomize(torchvision.models.resnet18(num_classes=7))
    src = str(tmp_path / "tv.pth")
    torch.save(tv.state_dict(), src)
    to_vissl = str(tmp_path / "vissl.torch")
    result = convert_checkpoint(src, to_vissl, "vissl", with_head=True)
    assert (result.src, result.family) == ("torchvision", "resnet")
    raw = torch.load(to_vissl, weights_only=True)
    assert raw["type"] == "consolidated"
    assert set(raw["classy_state_dict"]["base_model"]["model"]["heads"]) == {"0.clf.0.weight", "0.clf.0.bias"}
    loaded = load_checkpoint(to_vissl)
    assert loaded.layout.startswith("vissl") and len(loaded.trunk) == len(tv.state_dict()) - 2

    model = vissl_models.build_model(model_config(
        TRUNK={"NAME": "resnet", "RESNETS": {"DEPTH": 18}}, HEAD={"PARAMS": [["mlp", {"dims": [512, 7]}]]})).eval()
    model.set_classy_state(loaded.classy_state())
    x = image(2, 32)
    with torch.no_grad():
        close(model(x)[0], tv(x))

    back = str(tmp_path / "back.pth")
    result = convert_checkpoint(to_vissl, back, "torchvision", arch="resnet18", with_head=True)
    assert result.src == "vissl"
    state = torch.load(back, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in tv.state_dict().items())
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_convert_checkpoint_direction_of_shared_vit_keys(tmp_path):
    """ViT keys are the same in VISSL and timm: --to decides which side the file is."""
    state = vissl_trunk(TINY_VISSL["vision_transformer"]).state_dict()
    path = str(tmp_path / "vit.pth")
    torch.save(state, path)
    assert convert_checkpoint(path, str(tmp_path / "a.pth"), "timm").src == "vissl"
    assert convert_checkpoint(path, str(tmp_path / "b.torch"), "vissl", num_heads=2).src == "timm"
    with pytest.raises(ValueError, match="overwrite the input"):
        convert_checkpoint(path, path, "timm")


def test_vit_to_vissl_without_a_head_count_is_refused_and_writes_nothing(tmp_path):
    """The fused qkv hides the head count; a guessed one loads strictly but computes other features."""
    state = vissl_trunk(TINY_VISSL["vision_transformer"]).state_dict()
    path = str(tmp_path / "vit.pth")
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"number of attention heads.*--arch.*--num-heads"):
        convert_checkpoint(path, str(tmp_path / "out.torch"), "vissl")
    with pytest.raises(ValueError, match=r"num_heads=3: expected a positive integer dividing the width 32"):
        convert_checkpoint(path, str(tmp_path / "out.torch"), "vissl", num_heads=3)
    assert os.listdir(tmp_path) == ["vit.pth"]
    with pytest.raises(ValueError, match="number of attention heads"):
        vissl_trunk_config(state)


def test_timm_xcit_to_vissl_needs_the_model_name_for_its_config(tmp_path):
    """timm's XCiTs differ in TOKENS_NORM, which their weights do not show."""
    state = vissl_trunk(TINY_VISSL["xcit"]).state_dict()
    timm_state = convert_state_dict(state, "vissl", "timm")
    path = str(tmp_path / "xcit.pth")
    torch.save(timm_state, path)
    with pytest.raises(ValueError, match="TOKENS_NORM .* give --arch"):
        convert_checkpoint(path, str(tmp_path / "x.torch"), "vissl")
    assert os.listdir(tmp_path) == ["xcit.pth"]


@pytest.mark.parametrize("family", ["resnet", "regnet", "vision_transformer", "xcit"])
def test_vissl_output_comes_with_a_config_that_loads_it(tmp_path, family):
    torch.manual_seed(0)
    trunk = randomize(vissl_trunk(TINY_VISSL[family]))
    path = str(tmp_path / "in.pth")
    torch.save(trunk.state_dict(), path)
    out = str(tmp_path / "out.torch")
    heads = 2 if family == "vision_transformer" else None
    result = convert_checkpoint(path, out, "vissl", src="vissl" if family == "xcit" else None, num_heads=heads)
    assert result.config_path == str(tmp_path / "out.yaml")
    cfg = vissl_models.load_config(result.config_path)
    assert cfg.MODEL.HEAD.PARAMS == [["identity", {}]]
    if family == "xcit":
        assert cfg.MODEL.TRUNK.XCIT.NUM_HEADS == 4  # read from the attention temperatures
        assert any("TOKENS_NORM" in n for n in result.notes)
    model = vissl_models.build_model(cfg.MODEL).eval()
    report = model.load_weights(out)
    assert not report.missing and not report.unexpected
    x = image(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], trunk(x)[0], rtol=0, atol=0)


def test_resnet_without_batchnorm_statistics_gets_no_guessed_config(tmp_path):
    trunk = vissl_trunk({"NAME": "resnet", "RESNETS": {"DEPTH": 18, "NORM": "GroupNorm", "GROUPNORM_GROUPS": 4}})
    with pytest.raises(ValueError, match="GroupNorm .* or LayerNorm, which the weights cannot tell apart"):
        vissl_trunk_config(trunk.state_dict())
    path = str(tmp_path / "gn.pth")
    torch.save(trunk.state_dict(), path)
    with pytest.raises(ValueError, match="--no-config"):
        convert_checkpoint(path, str(tmp_path / "gn.torch"), "vissl")
    assert os.listdir(tmp_path) == ["gn.pth"]
    assert convert_checkpoint(path, str(tmp_path / "gn.torch"), "vissl", write_config=False).config_path is None


def test_kept_classifier_is_in_the_written_config(tmp_path):
    tv = randomize(torchvision.models.resnet18(num_classes=5))
    path = str(tmp_path / "tv.pth")
    torch.save(tv.state_dict(), path)
    result = convert_checkpoint(path, str(tmp_path / "rn18.torch"), "vissl", with_head=True)
    cfg = vissl_models.load_config(result.config_path)
    assert cfg.MODEL.TRUNK.RESNETS.DEPTH == 18 and cfg.MODEL.HEAD.PARAMS == [["mlp", {"dims": [512, 5]}]]
    model = vissl_models.build_model(cfg.MODEL).eval()
    model.load_weights(str(tmp_path / "rn18.torch"))
    x = image(2, 32)
    with torch.no_grad():
        close(model(x)[0], tv(x))


def test_config_path_collisions_are_refused(tmp_path):
    state = vissl_trunk(TINY_VISSL["resnet"]).state_dict()
    path = str(tmp_path / "w.yaml")
    torch.save(state, path)
    with pytest.raises(ValueError, match="overwritten by its .yaml config"):
        convert_checkpoint(path, str(tmp_path / "model.yaml"), "vissl")
    with pytest.raises(ValueError, match="overwrite the input"):
        convert_checkpoint(path, str(tmp_path / "w.torch"), "vissl")  # its config would be w.yaml
    assert os.listdir(tmp_path) == ["w.yaml"]
    convert_checkpoint(path, str(tmp_path / "w.torch"), "vissl", write_config=False)
    assert sorted(os.listdir(tmp_path)) == ["w.torch", "w.yaml"]


def test_vissl_key_names_in_another_container_are_repackaged(tmp_path):
    state = vissl_trunk(TINY_VISSL["xcit"]).state_dict()  # official XCiT names: only VISSL's layout
    path = str(tmp_path / "xcit.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    out = str(tmp_path / "xcit.torch")
    result = convert_checkpoint(path, out, "vissl")
    assert (result.src, result.dst, result.family) == ("vissl", "vissl", "xcit") and "repackaged" in result.notes[0]
    trunk = torch.load(out, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]
    assert all(torch.equal(trunk[k], v) for k, v in state.items()) and len(trunk) == len(state)


def test_convert_checkpoint_refuses_unknown_layouts_and_keeps_old_output(tmp_path, monkeypatch):
    path = str(tmp_path / "other.pth")
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="give --from and --arch"):
        convert_checkpoint(path, str(tmp_path / "o.pth"), "vissl")

    good = str(tmp_path / "good.pth")
    torch.save(vissl_trunk(TINY_VISSL["resnet"]).state_dict(), good)
    out = tmp_path / "out.pth"
    out.write_bytes(b"previous")

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(good, str(out), "timm")
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["good.pth", "other.pth", "out.pth"]


@needs_timm
def test_cli_convert(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vissl-models")
    add_convert_parser(parser.add_subparsers(dest="command"))
    m = timm.create_model("regnetx_002", pretrained=False)
    src = str(tmp_path / "regnetx.pth")
    torch.save({"state_dict": m.state_dict()}, src)
    out = io.StringIO()
    args = parser.parse_args(["convert", src, str(tmp_path / "x.torch"), "--to", "vissl", "--arch", "regnetx_002"])
    assert run_convert(args, out) == 0
    text = out.getvalue()
    assert "converted regnet weights timm -> vissl" in text
    assert "dropped 2: head.fc.weight, head.fc.bias" in text
    assert "name: anynet" in text and "use_se: false" in text

    assert f"model config -> {tmp_path / 'x.yaml'}" in text
    assert vissl_models.load_config(str(tmp_path / "x.yaml")).MODEL.TRUNK.REGNET.name == "anynet"

    args = parser.parse_args(["convert", src, str(tmp_path / "y.pth"), "--to", "timm"])
    assert run_convert(args, io.StringIO()) == 2
    assert "already in the timm layout" in capsys.readouterr().err


def test_cli_convert_vit_needs_the_head_count(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vissl-models")
    add_convert_parser(parser.add_subparsers(dest="command"))
    src = str(tmp_path / "vit.pth")
    torch.save(vissl_trunk(TINY_VISSL["vision_transformer"]).state_dict(), src)
    out = str(tmp_path / "v.torch")
    assert run_convert(parser.parse_args(["convert", src, out, "--to", "vissl"]), io.StringIO()) == 2
    assert "--num-heads" in capsys.readouterr().err and os.listdir(tmp_path) == ["vit.pth"]
    text = io.StringIO()
    assert run_convert(parser.parse_args(["convert", src, out, "--to", "vissl", "--num-heads", "2"]), text) == 0
    assert "NUM_HEADS: 2" in text.getvalue() and sorted(os.listdir(tmp_path)) == ["v.torch", "v.yaml", "vit.pth"]
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", src, out, "--to", "vissl", "--num-heads", "0"])
