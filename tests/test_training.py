"""TempFrozenParams (MODEL.TEMP_FROZEN_PARAMS_ITER_MAP): the original's grad clearing, and requires_grad mode."""

import pytest
import torch

import vissl_models
from vissl_models.config import ConfigError
from vissl_models.training import TempFrozenParams, clean_param_name

SWAV = {
    "TRUNK": {"NAME": "resnet", "RESNETS": {"DEPTH": 18}},
    "HEAD": {"PARAMS": [["swav_head", {"dims": [512, 32, 16], "use_bn": True, "num_clusters": [20]}]]},
    "TEMP_FROZEN_PARAMS_ITER_MAP": [["module.heads.0.prototypes0.weight", 3]],
}


def swav():
    cfg = vissl_models.load_config({"MODEL": SWAV})
    return cfg.MODEL, vissl_models.build_model(cfg.MODEL)


def step(model, opt, frozen=None, iteration=0):
    opt.zero_grad(set_to_none=True)
    model([torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)])[0][1].square().mean().backward()
    cleared = frozen.clear_grads(iteration) if frozen is not None else 0
    opt.step()
    return cleared


def test_clean_param_name():
    assert clean_param_name("module.heads.0.prototypes0.weight") == "heads.0.prototypes0.weight"
    assert clean_param_name("_orig_mod.module.trunk._fsdp_wrapped_module.x") == "trunk.x"


def test_prototypes_stay_put_for_the_first_iterations():
    cfg, model = swav()
    frozen = TempFrozenParams.from_config(model, cfg)
    assert frozen and frozen.max_iteration == 3
    assert frozen.frozen_names(2) == ["heads.0.prototypes0.weight"] and frozen.frozen_names(3) == []
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    proto = model.heads[0].prototypes0.weight
    start = proto.detach().clone()
    other = model.heads[0].projection_head[0].weight
    other_start = other.detach().clone()
    for it in range(3):
        assert step(model, opt, frozen, it) == 1
        assert torch.equal(proto, start), it  # no update, no weight decay, no momentum
    assert not torch.equal(other, other_start)
    assert step(model, opt, frozen, 3) == 0
    assert not torch.equal(proto, start)


def test_lookups_happen_once():
    cfg, model = swav()
    frozen = TempFrozenParams.from_config(model, cfg)

    def boom(*a, **k):
        raise AssertionError("named_parameters called per step")

    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.named_parameters = boom
    assert frozen.clear_grads(0) == 1
    assert frozen.set_requires_grad(0) is True


def test_requires_grad_mode_changes_only_at_boundaries():
    cfg = vissl_models.load_config({"MODEL": {**SWAV, "TEMP_FROZEN_PARAMS_ITER_MAP": [
        ["heads.0.prototypes0.weight", 2], ["heads.0.projection_head.0.weight", 4]]}}).MODEL
    model = vissl_models.build_model(cfg)
    model.heads[0].projection_head[0].weight.requires_grad_(False)  # frozen before: stays frozen
    frozen = TempFrozenParams.from_config(model, cfg)
    proto = model.heads[0].prototypes0.weight
    changed = [frozen.set_requires_grad(it) for it in range(6)]
    assert changed == [True, False, True, False, True, False]
    assert proto.requires_grad and not model.heads[0].projection_head[0].weight.requires_grad
    frozen.set_requires_grad(0)
    assert not proto.requires_grad


def test_wrapped_models_match_the_same_names():
    cfg, model = swav()
    frozen = TempFrozenParams(torch.compile(model), cfg.TEMP_FROZEN_PARAMS_ITER_MAP)
    model.heads[0].prototypes0.weight.grad = torch.ones(20, 16)
    frozen.clear_grads(0)
    assert model.heads[0].prototypes0.weight.grad is None
    assert TempFrozenParams(model, {"heads.0.prototypes0.weight": 1}).max_iteration == 1
    assert not TempFrozenParams(model, [])
    assert TempFrozenParams(model, []).clear_grads(0) == 0


@pytest.mark.parametrize("iter_map, match", [
    ([["module.heads.0.prototype0.weight", 3]], "no parameter named.*closest.*heads.0.prototypes0.weight"),
    ([["heads.0.prototypes0.weight"]], "expected \\[param_name, num_iterations\\]"),
    ([["heads.0.prototypes0.weight", -1]], "integer >= 0"),
    ([["heads.0.prototypes0.weight", "3"]], "integer >= 0"),
])
def test_bad_maps_raise_and_change_nothing(iter_map, match):
    _, model = swav()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match=match):
        TempFrozenParams(model, iter_map)
    assert before == {n: p.requires_grad for n, p in model.named_parameters()}
