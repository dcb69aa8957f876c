"""``classy_vit``: same keys, shapes and outputs as classy_vision's VisionTransformer under ``model.``."""

import pytest
import torch
from classy_vision.models import VisionTransformer as ClassyVisionViT

import vissl_models
from vissl_models.config.loader import ConfigError
from utils import build_trunk, model_config

VIT = {"IMAGE_SIZE": 16, "PATCH_SIZE": 4, "NUM_LAYERS": 2, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32}


def build(vit=None, seed=0, **model):
    return build_trunk("classy_vit", seed, "VISION_TRANSFORMERS", dict(VIT, **(vit or {})), **model)


def classy_reference(classifier="token", image_size=16, **kw):
    args = dict(image_size=image_size, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    args.update(kw)
    return ClassyVisionViT(classifier=classifier, **args)


def expected_layout(classifier, num_layers=2, dim=16, mlp=32, patch=4, grid=4):
    """The keys the original's ClassyViT has (classy_vision's ViT under ``model``), as read from
    classy_vision: own parameters before submodules, layers named ``layer_<i>``."""
    seq = grid * grid + (classifier == "token")
    keys = [("model.class_token", (1, 1, dim))] if classifier == "token" else []
    keys += [("model.conv_proj.weight", (dim, 3, patch, patch)), ("model.conv_proj.bias", (dim,))]
    keys += [("model.encoder.pos_embedding", (seq, 1, dim))]
    for i in range(num_layers):
        b = f"model.encoder.layers.layer_{i}."
        keys += [
            (b + "ln_1.weight", (dim,)), (b + "ln_1.bias", (dim,)),
            (b + "self_attention.in_proj_weight", (3 * dim, dim)), (b + "self_attention.in_proj_bias", (3 * dim,)),
            (b + "self_attention.out_proj.weight", (dim, dim)), (b + "self_attention.out_proj.bias", (dim,)),
            (b + "ln_2.weight", (dim,)), (b + "ln_2.bias", (dim,)),
            (b + "mlp.linear_1.weight", (mlp, dim)), (b + "mlp.linear_1.bias", (mlp,)),
            (b + "mlp.linear_2.weight", (dim, mlp)), (b + "mlp.linear_2.bias", (dim,)),
        ]
    keys += [("model.encoder.ln.weight", (dim,)), ("model.encoder.ln.bias", (dim,))]
    return keys


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_state_dict_layout(classifier):
    trunk = build({"CLASSIFIER": classifier})
    got = [(k, tuple(v.shape)) for k, v in trunk.state_dict().items()]
    assert got == expected_layout(classifier)
    ref = classy_reference(classifier)
    assert got == [("model." + k, tuple(v.shape)) for k, v in ref.state_dict().items()]


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if "ln" in name and name.endswith("weight") else 0.0))


@pytest.mark.parametrize("classifier", ["token", "gap"])
@pytest.mark.parametrize("train", [False, True])
def test_outputs_equal_classy_vision_with_the_same_weights(classifier, train):
    ref = classy_reference(classifier)
    _randomize(ref)
    trunk = build({"CLASSIFIER": classifier})
    trunk.load_state_dict({"model." + k: v for k, v in ref.state_dict().items()})
    ref.train(train)
    trunk.train(train)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        (out,) = trunk(x, ["avgpool"])
        expected = ref(x)
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_initialisation_follows_classy_vision():
    trunk = build({"NUM_LAYERS": 1, "HIDDEN_DIM": 64, "NUM_HEADS": 4, "MLP_DIM": 64})
    m = trunk.model
    assert torch.count_nonzero(m.class_token) == 0
    assert torch.count_nonzero(m.conv_proj.bias) == 0
    layer = m.encoder.layers.layer_0
    assert torch.count_nonzero(layer.self_attention.in_proj_bias) == 0
    assert layer.mlp.linear_1.bias.abs().max() < 1e-4  # normal(std=1e-6)
    assert 0.01 < m.encoder.pos_embedding.std() < 0.03


def test_in_a_model_as_the_original_linear_eval_config():
    # uru10x10_vit_b16.yaml asks the trunk for "avgpool" in feature-extractor mode.
    cfg = model_config(
        TRUNK={"NAME": "classy_vit", "VISION_TRANSFORMERS": VIT},
        FEATURE_EVAL_SETTINGS={
            "EVAL_MODE_ON": True,
            "FREEZE_TRUNK_ONLY": True,
            "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["avgpool", ["Identity", []]]],
        },
        HEAD={"PARAMS": [["eval_mlp", {"in_channels": 16, "dims": [16, 10]}]]},
    )
    model = vissl_models.build_model(cfg).eval()
    assert any(k.startswith("trunk.base_model.model.encoder.") for k in model.state_dict())
    with torch.no_grad():
        (out,) = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)


def test_inputs_and_feature_names():
    trunk = build().eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match="IMAGE_SIZE"):
            trunk(torch.randn(1, 3, 12, 12))
        with pytest.raises(ValueError, match="single feature"):
            trunk(torch.randn(1, 3, 16, 16), ["a", "b"])


def test_interpolate_position_embedding_as_classy_set_classy_state():
    small = classy_reference("token", image_size=8)
    _randomize(small)
    big_ref = classy_reference("token", image_size=16)
    state = {"model": {"trunk": {k: v.clone() for k, v in small.state_dict().items()}, "heads": {}}}
    big_ref.set_classy_state(state)
    trunk = build()
    resized = trunk.interpolate_position_embedding(small.encoder.pos_embedding.detach())
    torch.testing.assert_close(resized, big_ref.encoder.pos_embedding.detach())
    assert trunk.interpolate_position_embedding(resized) is resized


@pytest.mark.parametrize(
    "vit, model, match",
    [
        ({"IMAGE_SIZE": 18}, {}, "IMAGE_SIZE"),
        ({"HIDDEN_DIM": 15}, {}, "HIDDEN_DIM"),
        ({"CLASSIFIER": "pool"}, {}, "CLASSIFIER"),
        ({}, {"INPUT_TYPE": "lab"}, "INPUT_TYPE"),
    ],
)
def test_config_errors(vit, model, match):
    with pytest.raises(ConfigError, match=match):
        build(vit, **model)
