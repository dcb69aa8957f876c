"""The five AlexNet trunks: key layouts, a functional reference, input handling, feature order."""

import os

import pytest
import torch
import torch.nn.functional as F

import vissl_models
from vissl_models.config import ConfigError
from utils import build_trunk

CONFIGS = os.path.join(os.path.dirname(vissl_models.__file__), "configs")
NAMES = ["alexnet_bvlc", "alexnet_colorization", "alexnet_deepcluster", "alexnet_jigsaw", "alexnet_rotnet"]


def build(name, **model):
    model.setdefault("INPUT_TYPE", "lab" if name == "alexnet_colorization" else "rgb")
    return build_trunk(name, seed=None, **model)


def _conv_keys(idx, bn):
    keys = [f"_feature_blocks.{idx}.0.weight", f"_feature_blocks.{idx}.0.bias"]
    if bn:
        keys += [f"_feature_blocks.{idx}.1.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    return keys


# conv block indices in the nine-block list, and which of them have BatchNorm, per variant
LAYOUT = {
    "alexnet_bvlc": ((), [(96, 3, 11), (256, 48, 5), (384, 256, 3), (384, 192, 3), (256, 192, 3)]),
    "alexnet_colorization": ((0, 2, 4, 5, 6), [(96, 1, 11), (256, 48, 5), (384, 256, 3), (384, 192, 3), (256, 192, 3)]),
    "alexnet_deepcluster": ((0, 2, 4, 5, 6), [(96, 2, 11), (256, 96, 5), (384, 256, 3), (384, 384, 3), (256, 384, 3)]),
    "alexnet_jigsaw": ((4, 5, 6), [(96, 3, 11), (256, 48, 5), (384, 256, 3), (384, 192, 3), (256, 192, 3)]),
    "alexnet_rotnet": ((0, 2, 4, 5, 6), [(64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3)]),
}


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_follow_the_original(name):
    bn_blocks, weights = LAYOUT[name]
    expected = ["sobel.0.weight", "sobel.0.bias", "sobel.1.weight", "sobel.1.bias"] if name == "alexnet_deepcluster" else []
    for idx in (0, 2, 4, 5, 6):
        expected += _conv_keys(idx, idx in bn_blocks)
    sd = build(name).state_dict()
    assert list(sd) == expected
    for idx, (cout, cin, k) in zip((0, 2, 4, 5, 6), weights):
        assert tuple(sd[f"_feature_blocks.{idx}.0.weight"].shape) == (cout, cin, k, k)


def test_bvlc_matches_a_functional_reference():
    torch.manual_seed(0)
    trunk = build("alexnet_bvlc").eval()
    x = torch.randn(2, 3, 67, 67)
    w = {k: v for k, v in trunk.state_dict().items()}

    def conv(t, i, stride=1, padding=0, groups=1):
        return F.relu(F.conv2d(t, w[f"_feature_blocks.{i}.0.weight"], w[f"_feature_blocks.{i}.0.bias"], stride, padding, 1, groups))

    def lrn_pool(t):
        return F.max_pool2d(F.local_response_norm(t, 5, 1e-4, 0.75, 1.0), 3, 2)

    c1 = conv(x, 0, stride=4)
    c2 = conv(lrn_pool(c1), 2, padding=2, groups=2)
    c3 = conv(lrn_pool(c2), 4, padding=1)
    c5 = conv(conv(c3, 5, padding=1, groups=2), 6, padding=1, groups=2)
    pool5 = F.max_pool2d(c5, 3, 2)
    with torch.no_grad():
        out = trunk(x, ["conv1", "conv3", "conv5", "flatten"])
    for got, want in zip(out, (c1, c3, c5, pool5), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_jigsaw_normalizes_after_pooling():
    torch.manual_seed(0)
    trunk = build("alexnet_jigsaw").eval()
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        conv1, pool1 = trunk(x, ["conv1", "pool1"])
    torch.testing.assert_close(pool1, F.local_response_norm(F.max_pool2d(conv1, 3, 2), 5, 1e-4, 0.75, 1.0))


def test_features_come_back_in_the_requested_order():
    trunk = build("alexnet_rotnet").eval()
    x = torch.randn(1, 3, 67, 67)
    with torch.no_grad():
        conv3, conv1, pool5 = trunk(x, ["conv3", "conv1", "pool5"])
        again = trunk(x, ["conv2", "conv2"])
    assert conv3.shape[1] == 384 and conv1.shape[1] == 64 and pool5.shape[-1] == 1
    assert len(again) == 2 and torch.equal(again[0], again[1])
    (default,) = trunk(x)
    assert default.shape == pool5.shape  # "flatten" (the default) keeps pool5's 4-d shape


def test_colorization_reads_only_the_l_channel():
    trunk = build("alexnet_colorization").eval()
    x = torch.randn(2, 3, 67, 67)
    y = x.clone()
    y[:, 1:] = torch.randn(2, 2, 67, 67)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x)[0], trunk(y)[0])


def test_colorization_requires_lab_input():
    with pytest.raises(ConfigError, match=r"MODEL.INPUT_TYPE: got 'rgb'.*'lab'"):
        build("alexnet_colorization", INPUT_TYPE="rgb")


def test_deepcluster_sobel_is_fixed_and_sees_gray_only():
    trunk = build("alexnet_deepcluster").eval()
    assert not any(p.requires_grad for p in trunk.sobel.parameters())
    assert torch.all(trunk.sobel[0].weight == 1.0 / 3.0)
    gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    torch.testing.assert_close(trunk.sobel[1].weight[:, 0], torch.stack([gx, gx.t()]))
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        # the gray conversion is a channel mean, so the channel order does not matter
        torch.testing.assert_close(trunk(x)[0], trunk(x.flip(1))[0], rtol=1e-5, atol=1e-5)
    # As in the original, INPUT_TYPE does not change what it sees: a 3-channel Lab tensor goes
    # through the gray conversion as it is (one of the original's configs does exactly this).
    lab = build("alexnet_deepcluster", INPUT_TYPE="lab").eval()
    lab.load_state_dict(trunk.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(lab(x)[0], trunk(x)[0])


def test_activation_checkpointing_gives_the_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = build("alexnet_rotnet")
    ckpt = build("alexnet_rotnet", ACTIVATION_CHECKPOINTING={"USE_ACTIVATION_CHECKPOINTING": True, "NUM_ACTIVATION_CHECKPOINTING_SPLITS": 3})
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 67, 67)
    for m in (plain, ckpt):
        m.train()
        sum(f.pow(2).sum() for f in m(x, ["conv2", "conv5"])).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("config", ["rotnet_alexnet", "colorization_alexnet"])
def test_linear_eval_configs_build_and_run(config):
    cfg = vissl_models.load_config(os.path.join(CONFIGS, f"{config}.yaml"))
    model = vissl_models.build_model(cfg.MODEL).eval()
    assert all(k.startswith(("trunk.base_model._feature_blocks.", "heads.")) for k in model.state_dict())
    assert not any(p.requires_grad for p in model.trunk.parameters())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 227, 227))
    assert [tuple(o.shape) for o in out] == [(1, 1000)] * 5
