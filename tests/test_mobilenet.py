"""MobileNet-V3 trunks and heads, and ``eval_mlp_pooled``.

Outputs are checked against the full torchvision / timm MobileNet-V3 models with their weights
split into trunk and head the way the original's weight-download helpers split them.
"""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vissl_models
from utils import model_config


def build_trunk(name, seed=0, **mobile_net):
    torch.manual_seed(seed)
    cfg = model_config(TRUNK={"NAME": name, "MOBILE_NET": mobile_net})
    return vissl_models.get_model_trunk(name)(cfg, name)


def build_head(name, **kwargs):
    return vissl_models.get_model_head(name)(model_config(), **kwargs)


def randomize_norms(module, seed=1):
    """Random BatchNorm statistics and affine parameters, so eval-mode outputs depend on them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module


@pytest.fixture(scope="module")
def tv_trunk():
    return build_trunk("mobilenetv3_tv").eval()


@pytest.fixture(scope="module")
def timm_trunk():
    pytest.importorskip("timm")
    return build_trunk("mobilenetv3_timm").eval()


# ---------------------------------------------------------------- trunks
def test_tv_trunk_and_head_reproduce_torchvision_mobilenet_v3(tv_trunk):
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(3)
    ref = randomize_norms(mobilenet_v3_large(num_classes=10)).eval()
    sd = ref.state_dict()
    # The original's torchvision split: classifier.* -> head, everything else -> trunk "model.*".
    tv_trunk.load_state_dict({f"model.{k}": v for k, v in sd.items() if not k.startswith("classifier.")})
    head = build_head("mobilenet_v3_head", num_classes=10).eval()
    head.load_state_dict({k: v for k, v in sd.items() if k.startswith("classifier.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = tv_trunk(x)
        out = head(feats)
        expected = ref(x)
    assert len(feats) == 1 and feats[0].shape == (2, 960)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_timm_trunk_and_head_reproduce_timm_mobilenetv3(timm_trunk):
    import timm

    torch.manual_seed(3)
    ref = randomize_norms(timm.create_model("mobilenetv3_large_100", num_classes=10)).eval()
    sd = ref.state_dict()
    head_keys = {"conv_head.weight": "classifier.0.weight", "conv_head.bias": "classifier.0.bias",
                 "classifier.weight": "classifier.4.weight", "classifier.bias": "classifier.4.bias"}
    timm_trunk.load_state_dict({f"model.{k}": v for k, v in sd.items() if k not in head_keys})
    head = build_head("mobilenet_v3_head_timm", num_classes=10).eval()
    head.load_state_dict({new: sd[old] for old, new in head_keys.items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = head(timm_trunk(x))
        expected = ref(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_tv_with_timm_bn_equals_timm_trunk_on_converted_weights(timm_trunk):
    """The original's ConvertorTimmTV maps timm trunk weights onto torchvision's in order."""
    tv = build_trunk("mobilenetv3_tv", TIMM_BN=True).eval()
    assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in tv.modules() if isinstance(m, nn.BatchNorm2d))
    randomize_norms(timm_trunk, seed=5)
    src, dst = timm_trunk.state_dict(), tv.state_dict()
    assert len(src) == len(dst)
    converted = {}
    for (k_dst, v_dst), v_src in zip(dst.items(), src.values(), strict=True):
        assert v_dst.shape == v_src.shape, k_dst
        converted[k_dst] = v_src
    tv.load_state_dict(converted)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv(x, ["trunk"])[0], timm_trunk(x, ["trunk"])[0], rtol=1e-4, atol=1e-5)


def test_tv_default_batchnorm_is_torchvisions(tv_trunk):
    norms = [m for m in tv_trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)


def test_state_dict_keys_follow_the_originals_layout(tv_trunk, timm_trunk):
    tv = {k: tuple(v.shape) for k, v in tv_trunk.state_dict().items()}
    assert tv["model.features.0.0.weight"] == (16, 3, 3, 3)
    assert tv["model.features.4.block.2.fc1.weight"] == (24, 72, 1, 1)
    assert tv["model.features.16.0.weight"] == (960, 160, 1, 1)
    assert not any(k.startswith("model.classifier") for k in tv)
    tm = {k: tuple(v.shape) for k, v in timm_trunk.state_dict().items()}
    assert tm["model.blocks.2.0.se.conv_reduce.weight"] == (24, 72, 1, 1)
    assert tm["model.blocks.6.0.conv.weight"] == (960, 160, 1, 1)
    assert len(tm) == 308 and not any(k.startswith(("model.conv_head", "model.classifier")) for k in tm)
    with_head = build_trunk("mobilenetv3_timm", TRUNK_ONLY=False).state_dict()
    assert tuple(with_head["model.conv_head.weight"].shape) == (1280, 960, 1, 1)
    assert set(with_head) - set(tm) == {"model.conv_head.weight", "model.conv_head.bias"}


def test_named_features(tv_trunk, timm_trunk):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        trunk, pool, pool_norm, pool2 = tv_trunk(x, ["trunk", "trunk_pool", "trunk_pool_norm", "trunk_pool"])
        torch.testing.assert_close(pool, trunk.mean(dim=(2, 3)))
        torch.testing.assert_close(pool_norm, F.normalize(pool, dim=-1))
        assert torch.equal(pool, pool2)
        # Requested order is kept.
        first, second = timm_trunk(x, ["trunk_pool_norm", "trunk"])
        assert first.shape == (2, 960) and second.ndim == 4
        # With TRUNK_ONLY timm's head path is pool + hardswish (no conv_head), as in the original.
        flat, flat_norm, pool = timm_trunk(x, ["flatten", "flatten_norm", "trunk_pool"])
        torch.testing.assert_close(flat, F.hardswish(pool))
        torch.testing.assert_close(flat_norm, F.normalize(flat, dim=-1))
    with pytest.raises(ValueError, match="trunk_pool_norm"):
        tv_trunk(x, ["flatten"])


def test_timm_without_trunk_only_returns_pre_logits():
    pytest.importorskip("timm")
    trunk = build_trunk("mobilenetv3_timm", TRUNK_ONLY=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (default,) = trunk(x)
        (flat,) = trunk(x, ["flatten"])
        (pool,) = trunk(x, ["trunk_pool"])
    assert default.shape == (2, 1280)
    torch.testing.assert_close(default, flat)
    expected = F.hardswish(trunk.model.conv_head(pool[:, :, None, None])).flatten(1)
    torch.testing.assert_close(default, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mobilenetv3_tv", "mobilenetv3_timm"])
def test_pretrained_is_refused_with_a_way_out(name):
    with pytest.raises(vissl_models.ConfigError, match="never downloads.*WEIGHTS_INIT.PARAMS_FILE"):
        build_trunk(name, PRETRAINED=True)


@pytest.mark.parametrize("name", ["mobilenetv3_tv", "mobilenetv3_timm"])
def test_bad_options_name_the_key(name):
    with pytest.raises(vissl_models.ConfigError, match="MOBILE_NET.NAME"):
        build_trunk(name, NAME="mobilenetv3_small_100")
    with pytest.raises(vissl_models.ConfigError, match="INPUT_TYPE"):
        vissl_models.get_model_trunk(name)(model_config(TRUNK={"NAME": name}, INPUT_TYPE="bgr"), name)


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r'pip install "vissl_models\[timm\]"'):
        build_trunk("mobilenetv3_timm")


# ---------------------------------------------------------------- heads
@pytest.mark.parametrize("name", ["mobilenet_v3_head", "mobilenet_v3_head_timm"])
def test_mobilenet_heads_layout_and_init(name):
    torch.manual_seed(0)
    head = build_head(name, in_channels=16, mid_channels=12, num_classes=5, with_bn=True)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    first = (12, 16) if name == "mobilenet_v3_head" else (12, 16, 1, 1)
    last = "classifier.3" if name == "mobilenet_v3_head" else "classifier.4"
    assert shapes["classifier.0.weight"] == first and shapes[f"{last}.weight"] == (5, 12)
    assert shapes["channel_bn.running_var"] == (16,)
    assert torch.all(getattr(head.classifier, last.split(".")[1]).bias == 0)
    assert getattr(head.classifier, last.split(".")[1]).weight.std().item() == pytest.approx(0.01, rel=0.3)
    assert "channel_bn.weight" not in build_head(name, in_channels=16).state_dict()


@pytest.mark.parametrize("name", ["mobilenet_v3_head", "mobilenet_v3_head_timm"])
def test_mobilenet_heads_with_bn_match_a_manual_computation(name):
    torch.manual_seed(0)
    head = randomize_norms(build_head(name, in_channels=16, mid_channels=12, num_classes=5, with_bn=True)).eval()
    x = torch.randn(4, 16)
    bn = head.channel_bn
    z = (x - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5) * bn.weight + bn.bias
    first, last = head.classifier[0], head.classifier[-1]
    expected = last(F.hardswish(z @ first.weight.reshape(12, 16).T + first.bias))
    with torch.no_grad():
        torch.testing.assert_close(head([x]), expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(head(x[:, :, None, None]), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="N x 16"):
        head(torch.randn(4, 16, 2, 2))


def test_eval_mlp_pooled_applies_one_classifier_per_token():
    from vissl_models.heads.mlp_pooled import EnsembleOutput

    torch.manual_seed(0)
    head = randomize_norms(build_head("eval_mlp_pooled", in_channels=8, dims=[8, 5])).eval()
    assert set(head.state_dict()) == {
        "channel_bn.weight", "channel_bn.bias", "channel_bn.running_mean", "channel_bn.running_var",
        "channel_bn.num_batches_tracked", "clf.0.weight", "clf.0.bias",
    }
    x = torch.randn(4, 3, 8)
    with torch.no_grad():
        out = head(x)
    assert isinstance(out, EnsembleOutput) and out.outputs.shape == (3, 4, 5)
    bn, fc = head.channel_bn, head.clf[0]
    for s in range(3):
        z = (x[:, s] - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5) * bn.weight + bn.bias
        torch.testing.assert_close(out.outputs[s], fc(z), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="batch, seq, 8"):
        head(torch.randn(4, 8))


def test_eval_mlp_pooled_ignores_params_multiplier():
    torch.manual_seed(0)
    plain = build_head("eval_mlp_pooled", in_channels=8, dims=[8, 5])
    torch.manual_seed(0)
    cfg = model_config(HEAD={"PARAMS_MULTIPLIER": 3.0})
    scaled = vissl_models.get_model_head("eval_mlp_pooled")(cfg, in_channels=8, dims=[8, 5])
    assert torch.equal(plain.clf[0].weight, scaled.clf[0].weight)


def test_linear_eval_on_named_features_as_in_the_originals_benchmark():
    cfg = vissl_models.load_config({"MODEL": {
        "FEATURE_EVAL_SETTINGS": {
            "EVAL_MODE_ON": True, "FREEZE_TRUNK_ONLY": True, "SHOULD_FLATTEN_FEATS": True,
            "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["trunk_pool", ["Identity", []]],
                                              ["trunk", ["AdaptiveAvgPool2d", [[2, 1]]]]],
        },
        "TRUNK": {"NAME": "mobilenetv3_tv"},
        "HEAD": {"PARAMS": [["eval_mlp", {"in_channels": 960, "dims": [960, 10]}],
                            ["mobilenet_v3_head", {"in_channels": 1920, "num_classes": 10, "with_bn": True}]]},
    }})
    model = vissl_models.build_model(cfg.MODEL).eval()
    assert "trunk.base_model.model.features.0.0.weight" in model.state_dict()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 10), (2, 10)]
