"""Every registered head: builds from its options, forwards, back-propagates, round-trips."""

import inspect

import pytest
import torch

import vissl_models
import vissl_models.heads
from specs import HEAD_SPECS
from utils import assert_same_outputs, flat_outputs, grads_missing, model_config, tiny_model
from vissl_models.config import ConfigError

SPEC_IDS = [s.id for s in HEAD_SPECS]


def build_head(spec, seed=0):
    torch.manual_seed(seed)
    return vissl_models.get_model_head(spec.name)(model_config(**spec.model), **spec.kwargs)


def test_every_registered_head_has_a_spec():
    missing = sorted(set(vissl_models.list_heads()) - {s.name for s in HEAD_SPECS})
    assert not missing, f"heads without a tiny spec in tests/specs: {missing}"


@pytest.mark.parametrize("spec", HEAD_SPECS, ids=SPEC_IDS)
def test_forward_backward(spec):
    head = build_head(spec).train()
    x = torch.randn(*spec.input_shape, requires_grad=True)
    out = list(flat_outputs(head(x)))
    assert out and all(torch.isfinite(o).all() for o in out)
    sum(o.float().sum() for o in out).backward()
    assert x.grad is not None
    assert not grads_missing(head, spec.no_grad_ok)


@pytest.mark.parametrize("spec", HEAD_SPECS, ids=SPEC_IDS)
def test_state_dict_round_trip(spec):
    a, b = build_head(spec, 0).eval(), build_head(spec, 1).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(*spec.input_shape)
    with torch.no_grad():
        assert_same_outputs(a(x), b(x))


# ----------------------------------------------------------------------------- options
def test_head_classes_take_the_original_constructor_order():
    cfg = model_config(HEAD={"BATCHNORM_EPS": 1e-3})
    torch.manual_seed(0)
    direct = vissl_models.heads.MLP(cfg, dims=[16, 8], use_bn=True, skip_last_layer_relu_bn=False)
    torch.manual_seed(0)
    built = vissl_models.get_model_head("mlp")(cfg, dims=[16, 8], use_bn=True, skip_last_layer_relu_bn=False)
    assert type(direct) is type(built) and direct.clf[1].eps == 1e-3
    for (ka, va), (kb, vb) in zip(direct.state_dict().items(), built.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    # Positional, as the original's classes are called, and with no config at all (defaults).
    assert vissl_models.heads.SwAVPrototypesHead(cfg, [16, 8], False, [5]).prototypes0.out_features == 5
    assert vissl_models.heads.MLP(None, [4, 2]).clf[0].in_features == 4


def test_every_registered_head_documents_each_of_its_options():
    for name in vissl_models.list_heads():
        builder = vissl_models.get_model_head(name)
        doc = inspect.getdoc(builder) or ""
        assert name.replace("_fsdp", "") in doc, f"{name}: docstring does not name the head"
        params = list(inspect.signature(builder).parameters.values())[1:]
        for p in params:
            if p.kind is not p.VAR_KEYWORD:
                assert p.name in doc, f"{name}: option {p.name!r} is not documented"


BAD_OPTIONS = [
    ("mlp", {"dims": [16, 0, 8]}, r"head 'mlp' option 'dims'\[1\]: got 0"),
    ("mlp", {"dims": [16, -3]}, r"head 'mlp' option 'dims'\[1\]: got -3"),
    ("mlp", {"dims": [16]}, r"head 'mlp' option 'dims': .*at least 2"),
    ("mlp", {"dims": ["16", 8]}, r"head 'mlp' option 'dims'\[0\]: got '16', expected an integer"),
    ("mlp", {"dims": [16, 8], "use_bn": "yes"}, r"head 'mlp' option 'use_bn': got 'yes'"),
    ("mlp_res", {"dims": [16, 0]}, r"head 'mlp_res' option 'dims'\[1\]"),
    ("eval_mlp", {"in_channels": "8", "dims": [8, 2]}, r"head 'eval_mlp' option 'in_channels': got '8'"),
    ("swav_head", {"dims": [16, 8], "use_bn": False, "num_clusters": [10, 0]},
     r"head 'swav_head' option 'num_clusters'\[1\]: got 0"),
    ("swav_head", {"dims": [16, 8], "use_bn": False, "num_clusters": 4, "activation_name": "Tanh"},
     r"head 'swav_head' option 'activation_name': got 'Tanh'"),
    ("dino_head", {"in_dim": 16, "num_clusters": [20, 30]}, r"head 'dino_head' option 'num_clusters'"),
    ("dino_head", {"in_dim": "16", "num_clusters": 20}, r"head 'dino_head' option 'in_dim': got '16'"),
    ("dino_head", {"in_dim": 16, "num_clusters": 20, "bottleneck_dim": 0}, r"'bottleneck_dim': got 0"),
    ("ibot_head", {"in_dim": 16, "out_dim": 20, "num_layers": 0}, r"head 'ibot_head' option 'num_layers'"),
    ("ibot_head", {"in_dim": 16, "out_dim": 20, "norm": "gn"}, r"head 'ibot_head' option 'norm': got 'gn'"),
    ("ibot_distillation_head", {"in_dim": 16, "out_dim": 20, "num_layers": 1}, r"'num_layers': got 1"),
    ("msn_head", {"in_dim": 16, "num_prototypes": 8, "temperature": 0}, r"head 'msn_head' option 'temperature'"),
    ("msn_head", {"in_dim": 16, "num_prototypes": "8"}, r"head 'msn_head' option 'num_prototypes'"),
    ("siamese_concat_view", {"num_towers": 0}, r"head 'siamese_concat_view' option 'num_towers': got 0"),
    ("vision_transformer_head", {"in_plane": 16, "num_classes": 10, "hidden_dim": -1}, r"'hidden_dim': got -1"),
    ("mobilenet_v3_head", {"drop_out": 1.5}, r"head 'mobilenet_v3_head' option 'drop_out': got 1.5"),
    ("eval_mlp_pooled", {"in_channels": 0, "dims": [8, 2]}, r"head 'eval_mlp_pooled' option 'in_channels'"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD_OPTIONS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_OPTIONS)])
def test_bad_head_options_raise_config_error_naming_the_option(name, kwargs, message):
    rng = torch.get_rng_state()
    with pytest.raises(ConfigError, match=message):
        vissl_models.get_model_head(name)(model_config(), **kwargs)
    assert torch.equal(torch.get_rng_state(), rng), "options are read before any layer is built"


@pytest.mark.parametrize("dims", [[512, 0], [512, -4], [512, "16"]])
def test_bad_head_dims_in_a_model_config_raise_config_error(dims):
    with pytest.raises(ConfigError, match=r"head 'mlp' option 'dims'\[1\]"):
        tiny_model(HEAD={"PARAMS": [["mlp", {"dims": dims}]]})
