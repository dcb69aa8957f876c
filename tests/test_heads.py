"""Every registered head: builds from its options, forwards, back-propagates, round-trips."""

import pytest
import torch

import vissl_models
from specs import HEAD_SPECS
from utils import assert_same_outputs, flat_outputs, grads_missing, model_config

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
