"""EfficientNet trunk: classy_vision keys and outputs, drop connect, feature order, errors."""

import copy
import re

import pytest
import torch
from classy_vision.models.efficientnet import MODEL_PARAMS
from classy_vision.models.efficientnet import EfficientNet as ClassyEfficientNet
from specs.efficientnet import B0

import vissl_models
from vissl_models.config import ConfigError
from utils import build_trunk, image, model_config


def trunk(seed=0, model=None, **options):
    return build_trunk("efficientnet", seed, "EFFICIENT_NETS", dict(B0, **options), **(model or {}))


def classy_reference(**options):
    kwargs = dict(B0, **options)
    kwargs["model_params"] = MODEL_PARAMS[kwargs.pop("model_version")]
    return ClassyEfficientNet(num_classes=10, **kwargs)


def classy_to_vissl(key, stage_sizes):
    """classy key -> trunk key: stem/head into conv1/conv_final, ``blocks.{s}-{i}`` numbered in order."""
    for old, new in (("conv_stem.", "conv1.0."), ("bn0.", "conv1.1."), ("conv_head.", "conv_final.0."), ("bn1.", "conv_final.1.")):
        if key.startswith(old):
            return "_feature_blocks." + new + key[len(old):]
    m = re.match(r"blocks\.block(\d+)-(\d+)\.(.*)", key)
    return f"_feature_blocks.block{sum(stage_sizes[: int(m.group(1))]) + int(m.group(2))}.{m.group(3)}"


def test_keys_and_outputs_match_classy_efficientnet():
    reference = classy_reference().eval()
    ours = trunk(seed=1).eval()
    names = [k for k, _ in reference.blocks.named_children()]
    stage_sizes = [sum(1 for n in names if n.startswith(f"block{s}-")) for s in range(7)]
    state = {classy_to_vissl(k, stage_sizes): v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert set(state) == set(ours.state_dict())
    assert len(ours.feature_names) == 1 + 16 + 4
    ours.load_state_dict(state)
    x = image(2, 32)
    with torch.no_grad():
        (pooled,) = ours(x)  # default feature: dropout (identity in eval)
        expected = reference(x)
    torch.testing.assert_close(reference.fc(pooled), expected, rtol=1e-4, atol=1e-5)


def test_drop_connect_rates_ramp_with_block_index():
    model = trunk(drop_connect_rate=0.4)
    rates = dict(zip(model.feature_names, model._drop_rates))
    assert rates["conv1"] is None and rates["conv_final"] is None and rates["dropout"] is None
    assert rates["block0"] == 0.0
    assert rates["block8"] == pytest.approx(0.4 * 8 / 16)
    assert rates["block15"] == pytest.approx(0.4 * 15 / 16)


@pytest.mark.parametrize("rate", [0.0, 0.9])
def test_drop_connect_draws_only_in_training(rate):
    model = trunk(drop_connect_rate=rate)
    x = image(8, 32)
    outs = {}
    with torch.no_grad():
        for mode in ("eval", "train"):
            getattr(model, mode)()
            for seed in (1, 2):
                torch.manual_seed(seed)
                outs[mode, seed] = model(x, ["block15"])[0]
    torch.testing.assert_close(outs["eval", 1], outs["eval", 2])
    # In training BatchNorm uses batch statistics either way; only drop connect draws at random.
    assert torch.equal(outs["train", 1], outs["train", 2]) == (rate == 0.0)


def test_features_come_in_requested_order():
    model = trunk().eval()
    x = image(2, 32)
    with torch.no_grad():
        out = model(x, ["conv_final", "block1", "conv1", "block1"])
    assert [tuple(t.shape[1:]) for t in out] == [(1280, 1, 1), (24, 8, 8), (32, 16, 16), (24, 8, 8)]
    with pytest.raises(ValueError, match="conv_final"):
        model(x, ["res5"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model_version": "B9"}, "B7"),
        ({"widht_divisor": 8}, "unknown keys"),
        ({"use_se": "yes"}, "use_se"),
        ({"model": {"INPUT_TYPE": "lab"}}, "'rgb' or 'bgr'"),
    ],
)
def test_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        trunk(**options)


def test_activation_checkpointing_from_the_config_keeps_gradients_and_drop_connect():
    ckpt = trunk(drop_connect_rate=0.5, model={"ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": True}})
    assert ckpt.grad_checkpointing
    plain = copy.deepcopy(ckpt)
    plain.set_grad_checkpointing(False)
    plain.train()
    ckpt.train()
    x = image(2, 32)
    outs = []
    for model in (plain, ckpt):
        torch.manual_seed(3)  # the same drop-connect draws, replayed in the recompute
        (out,) = model(x, ["flatten"])
        out.pow(2).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    grads = dict(plain.named_parameters())
    for n, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[n].grad, rtol=1e-4, atol=1e-6, msg=n)


def test_missing_keys_are_named():
    cfg = model_config(TRUNK={"NAME": "efficientnet", "EFFICIENT_NETS": {"model_version": "B0"}})
    with pytest.raises(ConfigError, match=r"missing \['bn_momentum'"):
        vissl_models.get_model_trunk("efficientnet")(cfg, "efficientnet")


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"bn_momentum": "x"}, "MODEL.TRUNK.EFFICIENT_NETS.bn_momentum: got 'x', expected a number"),
        ({"width_divisor": 0}, "MODEL.TRUNK.EFFICIENT_NETS.width_divisor: got 0, expected an integer >= 1"),
        ({"min_width": "a"}, "MODEL.TRUNK.EFFICIENT_NETS.min_width: got 'a', expected an integer"),
        ({"model_version": "b0"}, "MODEL.TRUNK.EFFICIENT_NETS.model_version: got 'b0', expected one of"),
    ],
)
def test_bad_values_name_the_lower_case_key(options, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        trunk(**options)


def test_min_width_null_or_integer():
    from vissl_models.trunks.efficientnet import USUAL_VALUES, EfficientNetOptions

    assert EfficientNetOptions.from_config(USUAL_VALUES).min_width is None
    assert EfficientNetOptions.from_config(dict(USUAL_VALUES, min_width=16.0)).min_width == 16
