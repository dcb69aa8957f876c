"""The trunk contract (vissl_models.trunks.base.Trunk), checked on every registered trunk's tiny specs.

``feature_info`` against real output shapes, ``feature_dict`` against ``forward``,
``forward_intermediates`` shapes and semantics, and that grad checkpointing gives the same
gradients (and really recomputes).
"""

import copy
import dataclasses

import pytest
import torch

import vissl_models.layers.checkpointing as checkpointing
from specs import TRUNK_SPECS
from utils import build_spec_trunk, build_trunk, deep_update, image
from vissl_models.config import ConfigError
from vissl_models.trunks.base import FEATURE_KINDS, FeatureTrunk, Trunk, TrunkCommon, take_indices

SPEC_IDS = [s.id for s in TRUNK_SPECS]
KIND_DIMS = {"map": 4, "vector": 2, "tokens": 3}


def contract_trunk(spec, seed=0):
    trunk = build_spec_trunk(spec, seed)
    if not isinstance(trunk, Trunk):
        pytest.skip(f"{type(trunk).__name__} ({spec.name}) does not derive from trunks.base.Trunk yet")
    return trunk


def features(trunk, x, names):
    torch.manual_seed(0)  # trunks that draw randomness in eval (MSN token dropping) draw the same
    with torch.no_grad():
        return trunk.feature_dict(x, names)


def _width(info, t):
    return t.shape[-1] if info.kind == "tokens" else t.shape[1]


@pytest.mark.parametrize("spec", TRUNK_SPECS, ids=SPEC_IDS)
def test_feature_info_matches_real_outputs(spec):
    trunk = contract_trunk(spec).eval()
    infos = trunk.feature_info
    names = [f.name for f in infos]
    assert names and len(set(names)) == len(names)
    assert trunk.feature_names[: len(names)] == names
    assert trunk.default_feature in names
    assert trunk.num_features == trunk.feature(trunk.default_feature).channels
    x = image(2, spec.input_size, spec.in_chans)
    out = features(trunk, x, names)
    assert list(out) == names
    for info in infos:
        t = out[info.name]
        assert info.kind in FEATURE_KINDS
        assert t.dim() == KIND_DIMS[info.kind] and t.shape[0] == 2, info
        assert _width(info, t) == info.channels, info
        if info.kind == "map" and info.reduction is None:
            assert t.shape[2:] == (1, 1), info
    # A larger input by the largest stride grows each map by exactly stride / reduction.
    strides = [f.reduction for f in infos if f.kind == "map" and f.reduction]
    if strides:
        step = max(strides)
        h, w = (spec.input_size, spec.input_size) if isinstance(spec.input_size, int) else spec.input_size
        bigger = features(trunk, image(2, (h + step, w + step), spec.in_chans), names)
        for info in infos:
            if info.kind == "map" and info.reduction:
                grown = bigger[info.name].shape[2] - out[info.name].shape[2]
                assert grown * info.reduction == step, info


@pytest.mark.parametrize("spec", TRUNK_SPECS, ids=SPEC_IDS)
def test_feature_dict_matches_forward(spec):
    trunk = contract_trunk(spec).eval()
    x = image(2, spec.input_size, spec.in_chans)
    public = [f.name for f in trunk.feature_info]
    together = features(trunk, x, public)
    for name in public:
        torch.manual_seed(0)
        with torch.no_grad():
            (alone,) = trunk(x, [name])
        assert torch.equal(alone, together[name]), name
    (default,) = features(trunk, x, None).items()
    assert default[0] == trunk.default_feature
    assert torch.equal(default[1], together[trunk.default_feature])
    with pytest.raises(ValueError, match="valid names"):
        trunk.feature_dict(x, ["no_such_feature"])


@pytest.mark.parametrize("spec", [s for s in TRUNK_SPECS], ids=SPEC_IDS)
def test_feature_dict_stops_after_the_last_block_needed(spec):
    trunk = contract_trunk(spec).eval()
    if not isinstance(trunk, FeatureTrunk):
        pytest.skip("not a feature-block trunk")
    blocks = list(trunk._feature_blocks.keys())
    ran = []
    hooks = [trunk._feature_blocks[b].register_forward_hook(lambda m, i, o, b=b: ran.append(b)) for b in blocks]
    first = trunk.feature_info[0]
    features(trunk, image(2, spec.input_size, spec.in_chans), [first.name])
    for h in hooks:
        h.remove()
    assert ran == blocks[: blocks.index(first.module) + 1]


@pytest.mark.parametrize("spec", TRUNK_SPECS, ids=SPEC_IDS)
def test_forward_intermediates(spec):
    trunk = contract_trunk(spec).eval()
    x = image(2, spec.input_size, spec.in_chans)
    n = len(trunk.intermediate_features)
    assert n >= 1
    with torch.no_grad():
        torch.manual_seed(0)
        final, inter = trunk.forward_intermediates(x, stop_early=False)
        torch.manual_seed(0)
        full = trunk.forward_features(x)
        torch.manual_seed(0)
        last_two = trunk.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.manual_seed(0)
        early_final, first = trunk.forward_intermediates(x, indices=[0])
        torch.manual_seed(0)
        nhwc = trunk.forward_intermediates(x, indices=[-1], output_fmt="NHWC", intermediates_only=True)
    assert len(inter) == n and all(t.shape[0] == 2 and t.dim() in (3, 4) for t in inter)
    assert torch.equal(final, full)
    assert len(last_two) == min(2, n) and torch.equal(last_two[-1], inter[-1])
    assert len(first) == 1 and torch.equal(first[0], inter[0]) and torch.equal(early_final, inter[0])
    expected = inter[-1].permute(0, 2, 3, 1) if inter[-1].dim() == 4 else inter[-1]
    assert torch.equal(nhwc[0], expected)
    with pytest.raises(ValueError, match="out of range"):
        trunk.forward_intermediates(x, indices=[n])
    with pytest.raises(ValueError, match="output_fmt"):
        trunk.forward_intermediates(x, output_fmt="NLC?")


@pytest.mark.parametrize("spec", TRUNK_SPECS, ids=SPEC_IDS)
def test_grad_checkpointing_gives_the_same_gradients(spec, monkeypatch):
    plain = contract_trunk(spec)
    ckpt = copy.deepcopy(plain)
    plain.set_grad_checkpointing(False)
    ckpt.set_grad_checkpointing(True)
    plain.train()
    ckpt.train()
    calls = []
    real = checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = image(2, spec.input_size, spec.in_chans)
    for trunk in (plain, ckpt):
        torch.manual_seed(0)  # same drop-path / dropout draws
        sum(t.float().pow(2).sum() for t in trunk.feature_dict(x).values()).backward()
        if trunk is plain:
            assert not calls, "checkpointing ran with set_grad_checkpointing(False)"
    assert calls, "set_grad_checkpointing(True) did not recompute anything"
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in ckpt.named_parameters():
        if grads[n] is None:
            assert p.grad is None, n
        else:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
    buffers = dict(plain.named_buffers())
    for n, b in ckpt.named_buffers():
        torch.testing.assert_close(b, buffers[n], msg=n)  # BatchNorm statistics updated once


@pytest.mark.parametrize("spec", [s for s in TRUNK_SPECS if s.name != "regnet_fsdp"],
                         ids=[s.id for s in TRUNK_SPECS if s.name != "regnet_fsdp"])
def test_the_config_switch_sets_grad_checkpointing(spec):
    # regnet_fsdp, as the original, checkpoints only the block groups the config names.
    switch = {"ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": True}}
    trunk = contract_trunk(dataclasses.replace(spec, model=deep_update(spec.model, switch)))
    assert trunk.grad_checkpointing


def test_take_indices_reads_indices_as_timm():
    assert take_indices(5) == ([0, 1, 2, 3, 4], 4)
    assert take_indices(5, 2) == ([3, 4], 4)
    assert take_indices(5, [-1, 0, 0]) == ([0, 4], 4)
    for bad in (0, 6, [5], [-6], []):
        with pytest.raises(ValueError):
            take_indices(5, bad)


# --- Options every trunk shares: read once, checked the same way ---------------------------------

RESTRICTED = [
    ("efficientnet", {"TRUNK": {"EFFICIENT_NETS": dict(model_version="B0", bn_momentum=0.01, bn_epsilon=0.001,
                                                       drop_connect_rate=0.2, width_divisor=8, min_width=None,
                                                       use_se=True)}}, "lab", "takes 'rgb' or 'bgr'$"),
    ("regnet", {"TRUNK": {"REGNET": {"name": "regnet_y_400mf"}}}, "lab", "takes 'rgb' or 'bgr'$"),
    ("mobilenetv3_tv", {}, "bgr", "takes 'rgb'$"),
    ("convnext", {}, "lab", "takes 'rgb'$"),
    ("alexnet_colorization", {}, "rgb", "takes 'lab'$"),
]


@pytest.mark.parametrize("name, model, input_type, allowed", RESTRICTED, ids=[r[0] for r in RESTRICTED])
def test_input_type_rule_is_one_message(name, model, input_type, allowed):
    with pytest.raises(ConfigError, match=rf"^MODEL\.INPUT_TYPE: got '{input_type}', trunk '{name}' {allowed}"):
        build_trunk(name, INPUT_TYPE=input_type, **model)


@pytest.mark.parametrize(
    "name, model, key",
    [
        ("resnet", {"TRUNK": {"RESNETS": {"DEPTH": 18, "WIDTH_MULTIPLIER": "2"}}}, "MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER"),
        ("resnet", {"TRUNK": {"RESNETS": {"DEPTH": "18"}}}, "MODEL.TRUNK.RESNETS.DEPTH"),
        ("resnet_sk", {"TRUNK": {"RESNETS_SK": {"DEPTH": 50, "WIDTH_MULTIPLIER": "1"}}},
         "MODEL.TRUNK.RESNETS_SK.WIDTH_MULTIPLIER"),
        ("convnext", {"TRUNK": {"CONVNEXT": {"DIMS": [8, "16", 24, 32]}}}, r"MODEL.TRUNK.CONVNEXT.DIMS\[1\]"),
        ("mobilenetv3_tv", {"TRUNK": {"MOBILE_NET": {"TIMM_BN": "no"}}}, "MODEL.TRUNK.MOBILE_NET.TIMM_BN"),
        ("regnet", {"TRUNK": {"REGNET": {"depth": "5", "w_0": 8, "w_a": 8, "w_m": 1.6, "group_width": 8}}},
         "MODEL.TRUNK.REGNET.depth"),
        ("resnet", {"ACTIVATION_CHECKPOINTING": {"NUM_ACTIVATION_CHECKPOINTING_SPLITS": "2"}},
         "MODEL.ACTIVATION_CHECKPOINTING.NUM_ACTIVATION_CHECKPOINTING_SPLITS"),
        ("regnet_v2", {"_MODEL_INIT_SEED": "0"}, "MODEL._MODEL_INIT_SEED"),
        ("alexnet_rotnet", {"ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": "yes"}},
         "MODEL.ACTIVATION_CHECKPOINTING.USE_ACTIVATION_CHECKPOINTING"),
    ],
)
def test_a_string_for_a_number_names_the_key(name, model, key):
    before = deep_update({}, model)
    with pytest.raises(ConfigError, match=rf"^{key}: got "):
        build_trunk(name, **model)
    assert model == before  # the caller's config is left as it was


def test_common_options_default_and_stem_input_type():
    common = TrunkCommon()
    assert (common.input_type, common.use_checkpointing, common.checkpointing_splits, common.init_seed) == (
        "rgb", False, 2, 0)
    assert TrunkCommon(input_type="lab", apply_input_type=False).stem_input_type == "rgb"
    assert TrunkCommon(input_type="bgr").stem_input_type == "bgr"
