"""Every registered trunk: builds from a tiny config, forwards, back-propagates, round-trips."""

import pytest
import torch

import vissl_models
from specs import TRUNK_SPECS
from utils import assert_same_outputs, build_spec_trunk as build_trunk, grads_missing, image

SPEC_IDS = [s.id for s in TRUNK_SPECS]


def test_every_registered_trunk_has_a_spec():
    missing = sorted(set(vissl_models.list_trunks()) - {s.name for s in TRUNK_SPECS})
    assert not missing, f"trunks without a tiny spec in tests/specs: {missing}"


@pytest.mark.parametrize("spec", TRUNK_SPECS, ids=SPEC_IDS)
def test_forward_backward_reaches_every_parameter(spec):
    trunk = build_trunk(spec)
    trunk.train()
    out = trunk(image(2, spec.input_size, spec.in_chans))
    assert isinstance(out, list) and len(out) == 1
    sum(o.float().sum() for o in out).backward()
    assert not grads_missing(trunk, spec.no_grad_ok)


@pytest.mark.parametrize("spec", TRUNK_SPECS, ids=SPEC_IDS)
def test_requested_features_have_documented_shapes(spec):
    if not spec.features:
        pytest.skip("no feature shapes documented for this spec")
    trunk = build_trunk(spec).eval()
    x = image(2, spec.input_size, spec.in_chans)
    names = list(spec.features)
    with torch.no_grad():
        for name in names:
            (feat,) = trunk(x, [name])
            assert tuple(feat.shape) == (2,) + tuple(spec.features[name]), name


@pytest.mark.parametrize("spec", TRUNK_SPECS, ids=SPEC_IDS)
def test_state_dict_round_trip(spec):
    a, b = build_trunk(spec, seed=0).eval(), build_trunk(spec, seed=1).eval()
    b.load_state_dict(a.state_dict())
    x = image(2, spec.input_size, spec.in_chans)
    with torch.no_grad():
        assert_same_outputs(a(x), b(x))


@pytest.mark.parametrize("spec", [s for s in TRUNK_SPECS if s.crop_size], ids=lambda s: s.id)
def test_second_input_size(spec):
    trunk = build_trunk(spec).eval()
    with torch.no_grad():
        (out,) = trunk(image(2, spec.crop_size, spec.in_chans))
    assert out.shape[0] == 2


def test_unknown_feature_name_lists_valid_names():
    trunk = build_trunk(next(s for s in TRUNK_SPECS if s.id == "resnet18"))
    with pytest.raises(ValueError, match="res5avg"):
        trunk(image(1, 32), ["res9"])
