"""RegNet family: classy_vision key layout and outputs, regnet_v2/regnet_fsdp block groups, errors."""

import copy
import re

import pytest
import torch
from classy_vision.models import build_model as classy_build_model
from specs.regnet import TINY_ANYNET, TINY_REGNET

from vissl_models.config import ConfigError
from vissl_models.trunks.regnet import RegNetOptions
from vissl_models.trunks.regnet_fsdp import BlockGroup, stage_groups
from utils import assert_same_outputs, build_trunk, image

ALL_FEATURES = ["conv1", "res2", "res3", "res4", "res5", "avgpool", "flatten"]


def trunk(name, regnet, seed=0, **model):
    return build_trunk(name, seed, "REGNET", regnet, **model)


def classy_to_vissl(key):
    """classy_vision RegNet key -> the trunk's (stem -> conv1, trunk_output.blockN -> res{N+1})."""
    if key.startswith("stem."):
        return "_feature_blocks.conv1." + key[len("stem."):]
    m = re.match(r"trunk_output\.block(\d+)\.(.*)", key)
    return f"_feature_blocks.res{int(m.group(1)) + 1}.{m.group(2)}"


def without_groups(key):
    """regnet_v2 key -> regnet key: drop the block group level (``block4-part1.``)."""
    return re.sub(r"block\d+-part\d+\.", "", key)


def test_named_regnet_has_classy_keys_and_outputs():
    torch.manual_seed(0)
    reference = classy_build_model({"name": "regnet_y_400mf"}).eval()
    ours = trunk("regnet", {"name": "regnet_y_400mf"}, seed=1).eval()
    state = {classy_to_vissl(k): v for k, v in reference.state_dict().items()}
    assert set(state) == set(ours.state_dict())
    assert "_feature_blocks.conv1.stem.0.weight" in state
    assert "_feature_blocks.res2.block1-0.f.se.excitation.0.weight" in state
    ours.load_state_dict(state)
    x = image(2, 32)
    with torch.no_grad():
        expected = reference(x)  # the classy model's forward: stem then stages
        res5, flat = ours(x, ["res5", "flatten"])
    torch.testing.assert_close(res5, expected)
    torch.testing.assert_close(flat, expected.mean(dim=(2, 3)))
    assert flat.shape == (2, 440)


@pytest.mark.parametrize("name", ["regnet_v2", "regnet_fsdp"])
def test_v2_groups_blocks_and_matches_regnet(name):
    v2 = trunk(name, dict(TINY_REGNET, stage_checkpoints=[[1], [], [], [1]])).eval()
    keys = list(v2.state_dict())
    assert "_feature_blocks.res5.block4-part0.block4-0.f.a.0.weight" in keys
    assert "_feature_blocks.res5.block4-part1.block4-1.f.a.0.weight" in keys
    assert "_feature_blocks.res3.block2-part0.block2-0.proj.weight" in keys
    classy = trunk("regnet", TINY_REGNET, seed=3).eval()
    remapped = {without_groups(k): v for k, v in v2.state_dict().items()}
    assert set(remapped) == set(classy.state_dict())
    classy.load_state_dict(remapped)
    x = image(2, 32)
    with torch.no_grad():
        assert_same_outputs(v2(x, ALL_FEATURES), classy(x, ALL_FEATURES))
    assert v2.trunk_depth == classy.trunk_depth


def test_anynet_v2_matches_anynet_regnet():
    v2 = trunk("regnet_v2", TINY_ANYNET).eval()
    classy = trunk("regnet", TINY_ANYNET, seed=5).eval()
    classy.load_state_dict({without_groups(k): v for k, v in v2.state_dict().items()})
    x = image(2, 32)
    with torch.no_grad():
        assert_same_outputs(v2(x, ["res3", "flatten"]), classy(x, ["res3", "flatten"]))


def test_v2_weights_come_from_model_init_seed():
    a = trunk("regnet_v2", TINY_REGNET, seed=1).state_dict()
    b = trunk("regnet_v2", TINY_REGNET, seed=2).state_dict()
    c = trunk("regnet_v2", TINY_REGNET, seed=1, _MODEL_INIT_SEED=7).state_dict()
    key = "_feature_blocks.res3.block2-part0.block2-0.f.b.0.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])


def test_stage_groups_follow_the_original_rules():
    opts = RegNetOptions(stage_checkpoints=((2,), (), (1, 3), (4,)), stage_checkpointing=((), (), (True, False)))
    assert stage_groups(opts, 0, 4, True) == [(2, True), (4, True)]  # closing group added, flag from config
    assert stage_groups(opts, 1, 3, True) == [(3, False)]  # no boundary: one group, never checkpointed
    assert stage_groups(opts, 2, 5, False) == [(1, True), (3, False), (5, False)]
    assert stage_groups(opts, 3, 4, False) == [(4, False)]
    assert stage_groups(opts, 9, 2, True) == [(2, False)]  # stages past the lists
    with pytest.raises(ConfigError, match="sorted"):
        stage_groups(RegNetOptions(stage_checkpoints=((3, 1),)), 0, 4, True)
    with pytest.raises(ConfigError, match="within the stage depth 4"):
        stage_groups(RegNetOptions(stage_checkpoints=((5,),)), 0, 4, True)
    with pytest.raises(ConfigError, match="one flag per boundary"):
        stage_groups(RegNetOptions(stage_checkpoints=((1,),), stage_checkpointing=((True, True),)), 0, 4, True)


def _groups(module):
    return {n: m.checkpointed for n, m in module.named_modules() if isinstance(m, BlockGroup)}


@pytest.mark.parametrize("name", ["regnet_v2", "regnet_fsdp"])
def test_group_checkpointing_keeps_gradients_and_bn_statistics(name):
    config = dict(TINY_REGNET, stage_checkpoints=[[1], [], [], [1]])
    plain = trunk(name, config).train()
    ckpt = trunk(name, config, ACTIVATION_CHECKPOINTING={"USE_ACTIVATION_CHECKPOINTING": True}).train()
    assert _groups(ckpt) == {
        "_feature_blocks.res2.block1-part0": True,
        "_feature_blocks.res3.block2-part0": False,
        "_feature_blocks.res4.block3-part0": False,
        "_feature_blocks.res5.block4-part0": True,
        "_feature_blocks.res5.block4-part1": True,
    }
    # regnet_fsdp leaves checkpointing to the groups; regnet_v2 also splits the trunk.
    assert ckpt.grad_checkpointing == (name == "regnet_v2") and ckpt.checkpointing_splits == 2
    ckpt.load_state_dict(plain.state_dict())
    x = image(4, 32)
    for model in (plain, ckpt):
        model(x)[0].pow(2).sum().backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)
    stats = plain.state_dict()
    for k, v in ckpt.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert v.item() == 1, k  # the recompute pass did not count a second batch
        torch.testing.assert_close(v, stats[k])


def test_regnet_trunk_activation_checkpointing_keeps_gradients():
    plain = trunk("regnet", TINY_REGNET).train()
    ckpt = trunk(
        "regnet",
        TINY_REGNET,
        ACTIVATION_CHECKPOINTING={"USE_ACTIVATION_CHECKPOINTING": True, "NUM_ACTIVATION_CHECKPOINTING_SPLITS": 3},
    ).train()
    ckpt.load_state_dict(plain.state_dict())
    x = image(4, 32)
    for model in (plain, ckpt):
        model(x, ["res4", "flatten"])[1].sum().backward()
    grads = dict(plain.named_parameters())
    for n, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[n].grad, rtol=1e-4, atol=1e-6)


def test_feature_names_and_order():
    model = trunk("regnet", TINY_REGNET).eval()
    assert model.feature_names == ALL_FEATURES
    x = image(2, 32)
    with torch.no_grad():
        distinct = model(x, ["res5", "res3"])  # distinct names: network order, as in the original
        repeated = model(x, ["avgpool", "res4", "avgpool"])  # a repeated name: requested order
    assert [t.shape[1] for t in distinct] == [16, 32]
    assert [t.shape[1] for t in repeated] == [32, 24, 32]
    with pytest.raises(ValueError, match="res2"):
        model(x, ["res6"])


def test_bgr_input_flips_channels():
    rgb = trunk("regnet", TINY_REGNET).eval()
    bgr = trunk("regnet", TINY_REGNET, INPUT_TYPE="bgr").eval()
    bgr.load_state_dict(rgb.state_dict())
    x = image(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(bgr(x)[0], rgb(x.flip(1))[0])


@pytest.mark.parametrize(
    "name, regnet, model, message",
    [
        ("regnet", {}, {}, "is empty"),
        ("regnet", {"name": "regnet_y_9gf"}, {}, "regnet_y_8gf"),
        ("regnet", {"name": "regnet_y_8gf", "bn_epsilon": 1e-3}, {}, r"would be ignored"),
        ("regnet", dict(TINY_REGNET, bot_mul=2.0), {}, "valid keys"),
        ("regnet", dict(TINY_REGNET, stem_width=8, bn_epsilom=1e-3), {}, "did you mean 'bn_epsilon'"),
        ("regnet", {"depth": 5, "w_0": 8}, {}, r"missing \['w_a', 'w_m', 'group_width'\]"),
        ("regnet", dict(TINY_REGNET, w_0=12), {}, "multiple of 8"),
        ("regnet", dict(TINY_REGNET, stem_type="big_stem"), {}, "simple_stem_in"),
        ("regnet", dict(TINY_REGNET, activation="gelu"), {}, "silu"),
        ("regnet", dict(TINY_ANYNET, strides=[2, 2]), {}, "one value per stage"),
        ("regnet", dict(TINY_REGNET, stage_checkpoints=[[1]]), {}, "regnet_v2 and regnet_fsdp"),
        ("regnet", TINY_REGNET, {"INPUT_TYPE": "lab"}, "'rgb' or 'bgr'"),
        ("regnet_v2", {"name": "regnet_y_8gf"}, {}, "not a named model"),
        ("regnet_fsdp", dict(TINY_REGNET, stage_checkpoints=[2]), {}, "one list per stage"),
    ],
)
def test_config_errors_name_the_key(name, regnet, model, message):
    with pytest.raises(ConfigError, match=message):
        trunk(name, regnet, **model)


@pytest.mark.parametrize(
    "regnet, expected",
    [
        (dict(TINY_REGNET, depth="x"), "MODEL.TRUNK.REGNET.depth: got 'x', expected an integer"),
        (dict(TINY_REGNET, group_width=0), "MODEL.TRUNK.REGNET.group_width: got 0, expected an integer >= 1"),
        (dict(TINY_REGNET, bottleneck_multiplier=None), "MODEL.TRUNK.REGNET.bottleneck_multiplier: got None"),
        (dict(TINY_REGNET, stem_width=2.5), "MODEL.TRUNK.REGNET.stem_width: got 2.5, expected an integer"),
        (dict(TINY_ANYNET, depths=[1, "a", 1]), "MODEL.TRUNK.REGNET.depths[1]: got 'a', expected an integer"),
    ],
)
def test_bad_values_name_the_lower_case_key(regnet, expected):
    before = copy.deepcopy(regnet)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        trunk("regnet", regnet)
    assert regnet == before


def test_absent_optional_keys_take_classy_defaults():
    options = RegNetOptions.from_config(TINY_REGNET)
    assert (options.depth, options.w_0, options.w_a, options.w_m, options.group_width) == (5, 8, 8.0, 1.6, 8)
    assert options.stem_width == 8
    assert (options.stem_type, options.block_type, options.activation) == (
        "simple_stem_in", "res_bottleneck_block", "relu"
    )
    assert (options.use_se, options.se_ratio, options.bn_epsilon, options.bn_momentum) == (True, 0.25, 1e-5, 0.1)
    assert options.bottleneck_multiplier == 1.0
    assert options.stage_checkpoints == () and options.stage_checkpointing == ()
    # names are matched in any case, as classy_vision does, and stored lower-case
    assert RegNetOptions.from_config(dict(TINY_REGNET, activation="SiLU")).activation == "silu"
