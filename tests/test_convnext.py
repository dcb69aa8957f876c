"""ConvNeXt trunk: the original's key layout, LayerNorm semantics, and outputs against timm."""

import pytest
import torch

import vissl_models
from utils import build_trunk, deep_update, model_config, randomize as shared_randomize

TINY = {"DEPTH": [1, 1, 2, 1], "DIMS": [8, 16, 24, 32]}


def build(seed=0, **model):
    return build_trunk("convnext", seed, **deep_update({"TRUNK": {"CONVNEXT": TINY}}, model))


def randomize(module, seed=1):
    """Random weights everywhere (LayerNorm affine and layer scale included, near 1)."""
    return shared_randomize(module, seed, one_d_offset=1.0)


def expected_keys(depths, dims):
    """The original's (official ConvNeXt) state_dict keys and shapes."""
    keys = {
        "downsample_layers.0.0.weight": (dims[0], 3, 4, 4),
        "downsample_layers.0.0.bias": (dims[0],),
        "downsample_layers.0.1.weight": (dims[0],),
        "downsample_layers.0.1.bias": (dims[0],),
        "norm.weight": (dims[-1],),
        "norm.bias": (dims[-1],),
    }
    for i in range(1, 4):
        keys[f"downsample_layers.{i}.0.weight"] = (dims[i - 1],)
        keys[f"downsample_layers.{i}.0.bias"] = (dims[i - 1],)
        keys[f"downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        keys[f"downsample_layers.{i}.1.bias"] = (dims[i],)
    for i, (depth, d) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f"stages.{i}.{j}."
            keys[p + "gamma"] = (d,)
            keys[p + "dwconv.weight"] = (d, 1, 7, 7)
            keys[p + "dwconv.bias"] = (d,)
            keys[p + "norm.weight"] = (d,)
            keys[p + "norm.bias"] = (d,)
            keys[p + "pwconv1.weight"] = (4 * d, d)
            keys[p + "pwconv1.bias"] = (4 * d,)
            keys[p + "pwconv2.weight"] = (d, 4 * d)
            keys[p + "pwconv2.bias"] = (d,)
    return keys


def test_state_dict_layout_matches_original():
    trunk = build()
    got = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
    assert got == expected_keys(TINY["DEPTH"], TINY["DIMS"])
    assert torch.all(trunk.stages[2][1].gamma == 1e-6)


def test_defaults_are_the_originals():
    cfg = model_config(TRUNK={"NAME": "convnext"})
    assert list(cfg.TRUNK.CONVNEXT.DEPTH) == [3, 3, 27, 3]
    assert list(cfg.TRUNK.CONVNEXT.DIMS) == [96, 192, 384, 768]
    assert cfg.TRUNK.CONVNEXT.DROP_PATH_RATE == 0.0


def test_outputs_match_timm_convnext_on_converted_weights():
    convnext = pytest.importorskip("timm.models.convnext")
    trunk = randomize(build()).eval()
    ref = convnext.ConvNeXt(depths=tuple(TINY["DEPTH"]), dims=tuple(TINY["DIMS"]), num_classes=0).eval()
    # timm's own converter for official ConvNeXt checkpoints: an independent key map.
    ref.load_state_dict(convnext.checkpoint_filter_fn(trunk.state_dict(), ref))
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        (out,) = trunk(x)
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
    assert out.shape == (2, 32)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_downsample_layernorm_is_channels_first_with_eps_1e6():
    norm = randomize(build()).downsample_layers[2][0]
    x = torch.randn(2, 16, 3, 5) * 4 + 1
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
    trunk = build()
    assert all(m.eps == 1e-6 for m in trunk.modules() if isinstance(m, torch.nn.LayerNorm))


def test_drop_path_rates_increase_linearly_to_the_last_block():
    trunk = build(TRUNK={"NAME": "convnext", "CONVNEXT": dict(TINY, DROP_PATH_RATE=0.4)})
    blocks = [b for stage in trunk.stages for b in stage]
    assert isinstance(blocks[0].drop_path, torch.nn.Identity)  # rate 0
    rates = [b.drop_path.drop_prob for b in blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_activation_checkpointing_gives_the_same_gradients():
    plain = randomize(build())
    ckpt = build(ACTIVATION_CHECKPOINTING={"USE_ACTIVATION_CHECKPOINTING": True,
                                           "NUM_ACTIVATION_CHECKPOINTING_SPLITS": 3})
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for m in (plain, ckpt):
        m.train()
        (out,) = m(x)
        out.pow(2).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_feature_names():
    trunk = build().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        (default,) = trunk(x)
        both = trunk(x, ["lastCLS", "lastCLS"])
    assert len(both) == 2 and torch.equal(both[0], default)
    with pytest.raises(ValueError, match="lastCLS"):
        trunk(x, ["res5"])


def test_linear_eval_model_from_original_config_shape():
    cfg = vissl_models.load_config({"MODEL": {
        "FEATURE_EVAL_SETTINGS": {"EVAL_MODE_ON": True, "FREEZE_TRUNK_ONLY": True,
                                  "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["lastCLS", ["Identity", []]]]},
        "TRUNK": {"NAME": "convnext", "CONVNEXT": TINY},
        "HEAD": {"PARAMS": [["eval_mlp", {"in_channels": 32, "dims": [32, 10]}]]},
    }})
    model = vissl_models.build_model(cfg.MODEL).eval()
    assert any(k.startswith("trunk.base_model.stages.0.0.") for k in model.state_dict())
    with torch.no_grad():
        (out,) = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize(
    "model, match",
    [
        ({"TRUNK": {"NAME": "convnext", "CONVNEXT": {"DEPTH": [1, 1, 1]}}}, "DEPTH"),
        ({"TRUNK": {"NAME": "convnext", "CONVNEXT": {"DIMS": [8, 16, 0, 32]}}}, "DIMS"),
        ({"TRUNK": {"NAME": "convnext", "CONVNEXT": {"DROP_PATH_RATE": -0.1}}}, "DROP_PATH_RATE"),
        ({"TRUNK": {"NAME": "convnext"}, "INPUT_TYPE": "lab"}, "INPUT_TYPE"),
    ],
)
def test_bad_options_name_the_key(model, match):
    with pytest.raises(vissl_models.ConfigError, match=match):
        vissl_models.get_model_trunk("convnext")(model_config(**model), "convnext")
