"""resnet_sk: the original's key layout, selective-kernel maths, feature names, config errors."""

import pytest
import torch
import torch.nn.functional as F

from vissl_models.config import ConfigError
from vissl_models.trunks.resnet_sk import BottleneckBlock, ResNetSKOptions, SelectiveKernel
from utils import build_trunk, model_config


def build(depth=50, width=1, sk=0.0625, **model):
    options = {"DEPTH": depth, "WIDTH_MULTIPLIER": width, "SK_RATIO": sk}
    return build_trunk("resnet_sk", None, "RESNETS_SK", options, **model)


def _bn_eval(bn, x):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _randomize_bn(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def test_state_dict_keys_follow_the_original_layout():
    sd = build(sk=0.0625).state_dict()
    expected = {
        "net.0.0.weight": (32, 3, 3, 3),  # SK stem: three 3x3 convs, the first strided
        "net.0.2.weight": (32, 32, 3, 3),
        "net.0.4.weight": (64, 32, 3, 3),
        "net.0.5.0.running_var": (64,),
        "net.1.blocks.0.projection.shortcut.2.weight": (256, 64, 1, 1),  # pad, avg-pool, 1x1 conv
        "net.1.blocks.0.projection.bn.0.weight": (256,),
        "net.1.blocks.0.net.2.main_conv.0.weight": (128, 64, 3, 3),
        "net.1.blocks.0.net.2.mixing_conv.0.weight": (32, 64, 1, 1),  # max(64 / 16, 32) channels
        "net.1.blocks.0.net.2.mixing_conv.2.weight": (128, 32, 1, 1),
        "net.1.blocks.2.net.4.0.bias": (256,),
        "net.4.blocks.2.net.3.weight": (2048, 512, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith(("net.1.blocks.1.projection", "net.avgpool", "net.flatten")) for k in sd)
    assert {k.split(".")[1] for k in sd} == {"0", "1", "2", "3", "4"}
    # 3 + 4 + 6 + 3 blocks at depth 50
    assert {int(k.split(".")[3]) for k in sd if k.startswith("net.3.")} == set(range(6))


def test_without_selective_kernels_the_stem_is_one_7x7_conv():
    sd = build(sk=0.0, INPUT_TYPE="lab").state_dict()
    assert tuple(sd["net.0.0.weight"].shape) == (64, 1, 7, 7)  # lab: the stem takes L only
    assert "net.0.1.0.weight" in sd and "net.0.2.weight" not in sd
    assert tuple(sd["net.2.blocks.0.projection.shortcut.weight"].shape) == (512, 256, 1, 1)
    assert tuple(sd["net.1.blocks.0.net.2.weight"].shape) == (64, 64, 3, 3)
    assert not any("main_conv" in k for k in sd)


def test_selective_kernel_matches_a_two_path_reference():
    torch.manual_seed(0)
    sk = SelectiveKernel(8, 6, stride=2, sk_ratio=0.5).eval()
    _randomize_bn(sk)
    x = torch.randn(3, 8, 9, 9)
    conv, bn = sk.main_conv[0], sk.main_conv[1][0]
    y = F.relu(_bn_eval(bn, F.conv2d(x, conv.weight, stride=2, padding=1)))
    a, b = y[:, :6], y[:, 6:]
    g = (a + b).mean(dim=(2, 3), keepdim=True)
    c1, bn1, c2 = sk.mixing_conv[0], sk.mixing_conv[1][0], sk.mixing_conv[2]
    z = F.conv2d(F.relu(_bn_eval(bn1, F.conv2d(g, c1.weight))), c2.weight)
    za, zb = z[:, :6], z[:, 6:]
    wa = torch.exp(za) / (torch.exp(za) + torch.exp(zb))
    expected = a * wa + b * (1 - wa)
    with torch.no_grad():
        torch.testing.assert_close(sk(x), expected, rtol=1e-5, atol=1e-6)
    assert sk.mixing_conv[0].out_channels == 32  # the bottleneck never goes below 32 channels


@pytest.mark.parametrize("sk_ratio", [0.0, 0.25])
@pytest.mark.parametrize("size", [7, 8])
def test_projecting_block_keeps_both_paths_aligned(sk_ratio, size):
    block = BottleneckBlock(8, 4, stride=2, sk_ratio=sk_ratio, use_projection=True).eval()
    with torch.no_grad():
        out = block(torch.randn(2, 8, size, size))
    assert out.shape == (2, 16, (size + 1) // 2, (size + 1) // 2)
    assert (out >= 0).all()


def test_default_output_is_the_spatial_mean_of_res5():
    trunk = build(sk=0.0).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        (default,) = trunk(x, [])
        res5, res5avg, flat = trunk(x, ["res5", "res5avg", "flatten"])
    assert default.shape == (2, 2048)
    torch.testing.assert_close(default, res5.mean(dim=(2, 3)))
    torch.testing.assert_close(res5avg.flatten(1), default)
    torch.testing.assert_close(flat, default)


@pytest.mark.parametrize(
    "section, match",
    [
        ({"DEPTH": 34}, r"MODEL.TRUNK.RESNETS_SK.DEPTH: got 34, expected one of \[50, 101, 152, 200\]"),
        ({"WIDTH_MULTIPLIER": 0}, "MODEL.TRUNK.RESNETS_SK.WIDTH_MULTIPLIER"),
        ({"SK_RATIO": -0.1}, "MODEL.TRUNK.RESNETS_SK.SK_RATIO"),
        ({"SK_RATIO": "x"}, "expected a number"),
    ],
)
def test_bad_options_raise_config_errors(section, match):
    with pytest.raises(ConfigError, match=match):
        ResNetSKOptions.from_config({**{"DEPTH": 152, "WIDTH_MULTIPLIER": 1, "SK_RATIO": 0.0625}, **section})


def test_defaults_are_the_originals():
    cfg = model_config(TRUNK={"NAME": "resnet_sk"})
    assert ResNetSKOptions.from_config(cfg.TRUNK.RESNETS_SK) == ResNetSKOptions(152, 3, 0.0625)
