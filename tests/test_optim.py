"""get_optimizer_param_groups: the original's default/dino param-group rules, LARC flags, model method."""

import pytest
import torch
from torch import nn

import vissl_models
from vissl_models.config import ConfigError
from vissl_models.training import get_optimizer_param_groups, larc_step_, restore_weight_decay_, schedule_start_value

RESNET18 = {"NAME": "resnet", "RESNETS": {"DEPTH": 18}}
SWAV_HEAD = [["swav_head", {"dims": [512, 32, 16], "use_bn": True, "num_clusters": [20]}]]
TINY_VIT = {"NAME": "vision_transformer", "VISION_TRANSFORMERS": {
    "IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 1, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32,
    "QKV_BIAS": True}}
DINO_HEAD = [["dino_head", {"in_dim": 16, "num_clusters": 12, "hidden_dim": 16, "bottleneck_dim": 8}]]


def build(trunk, head, model=None, optimizer=None):
    cfg = vissl_models.load_config({"MODEL": {"TRUNK": trunk, "HEAD": {"PARAMS": head}, **(model or {})},
                                    "OPTIMIZER": optimizer or {}})
    return cfg, vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER)


def by_name(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}


def assert_partition(model, groups):
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_default_rules_resnet_swav():
    cfg, model = build(RESNET18, SWAV_HEAD)
    groups = get_optimizer_param_groups(model, cfg.MODEL, cfg.OPTIMIZER)
    assert_partition(model, groups)
    g = by_name(model, groups)
    assert set(g) == {"trunk_regularized", "trunk_unregularized", "head_regularized", "head_unregularized"}
    # regularize_bn: false -> every BN weight and bias unregularized; conv weights regularized.
    assert all(".bn" in n or "downsample.1" in n or "bn1" in n for n in g["trunk_unregularized"])
    assert all(n.endswith(".weight") and "conv" in n or "downsample.0" in n for n in g["trunk_regularized"])
    # regularize_bias: true -> head Linear biases regularized with the weights; head BN unregularized.
    assert "heads.0.projection_head.0.bias" in g["head_regularized"]
    assert "heads.0.prototypes0.weight" in g["head_regularized"]
    assert g["head_unregularized"] == ["heads.0.projection_head.1.bias", "heads.0.projection_head.1.weight"]
    lr, wd = cfg.OPTIMIZER.param_schedulers.lr["values"][0], cfg.OPTIMIZER.weight_decay
    for group in groups:
        assert group["lr"] == lr
        assert group["weight_decay"] == (wd if group["name"].endswith("_regularized") else 0.0)


def test_regularize_bn_and_not_bias():
    cfg, model = build(RESNET18, SWAV_HEAD, optimizer={"regularize_bn": True, "regularize_bias": False})
    g = by_name(model, get_optimizer_param_groups(model, cfg.MODEL, cfg.OPTIMIZER))
    assert "trunk._feature_blocks.bn1.weight" in g["trunk_regularized"]
    assert "trunk._feature_blocks.bn1.bias" in g["trunk_unregularized"]
    assert "heads.0.projection_head.0.bias" in g["head_unregularized"]
    assert "heads.0.projection_head.1.weight" in g["head_regularized"]


def test_head_lr_and_weight_decay_from_head_optimizer_params():
    opt = {"head_optimizer_params": {"use_different_lr": True, "use_different_wd": True, "weight_decay": 0.05},
           "param_schedulers": {"lr_head": {"name": "cosine", "start_value": 0.5, "end_value": 0.0}}}
    cfg, model = build(RESNET18, SWAV_HEAD, optimizer=opt)
    groups = {g["name"]: g for g in get_optimizer_param_groups(model, cfg.MODEL, cfg.OPTIMIZER)}
    assert groups["head_regularized"]["lr"] == 0.5 and groups["head_regularized"]["weight_decay"] == 0.05
    assert groups["head_unregularized"]["weight_decay"] == 0.0
    assert groups["trunk_regularized"]["lr"] == 0.1 and groups["trunk_regularized"]["weight_decay"] == 1e-4
    # Without the flags the head follows the trunk, whatever lr_head / head weight_decay say.
    opt["head_optimizer_params"].update(use_different_lr=False, use_different_wd=False)
    cfg, model = build(RESNET18, SWAV_HEAD, optimizer=opt)
    groups = {g["name"]: g for g in get_optimizer_param_groups(model, cfg.MODEL, cfg.OPTIMIZER)}
    assert groups["head_regularized"]["lr"] == 0.1 and groups["head_regularized"]["weight_decay"] == 1e-4
    # Scheduler values given by the caller win (the original's optimizer_schedulers).
    sched = object()
    groups = get_optimizer_param_groups(model, cfg.MODEL, cfg.OPTIMIZER, {"lr": sched, "weight_decay": 0.3})
    assert all(g["lr"] is sched for g in groups)
    assert {g["weight_decay"] for g in groups} == {0.3, 0.0}


def test_vit_non_regularized_parameters_and_weight_norm_head():
    cfg, model = build(TINY_VIT, DINO_HEAD, optimizer={"non_regularized_parameters": ["cls_token", "pos_embed"]})
    groups = get_optimizer_param_groups(model, cfg.MODEL, cfg.OPTIMIZER)
    assert_partition(model, groups)
    g = by_name(model, groups)
    assert set(g["remaining_unregularized"]) == {"trunk.cls_token", "trunk.pos_embed"}
    assert not any("cls_token" in n or "pos_embed" in n for k, v in g.items() if k != "remaining_unregularized"
                   for n in v)
    # LayerNorms follow regularize_bn (false): unregularized.
    assert any("norm" in n for n in g["trunk_unregularized"])
    # The weight-normalised prototypes: weight_v regularized in the head; weight_g is frozen
    # (normalize_last_layer) and left out.
    assert "heads.0.prototypes0.weight_v" in g["head_regularized"]
    assert not any("weight_g" in n for v in g.values() for n in v)


def test_non_trainable_params_are_frozen_and_left_out():
    cfg, model = build(RESNET18, SWAV_HEAD, model={"NON_TRAINABLE_PARAMS": ["module.heads.0.prototypes0.weight"]})
    groups = model.get_optimizer_param_groups()
    assert not model.heads[0].prototypes0.weight.requires_grad
    assert_partition(model, groups)
    assert "heads.0.prototypes0.weight" not in by_name(model, groups)["head_regularized"]


def test_unknown_non_trainable_name_raises_and_changes_nothing():
    cfg, model = build(RESNET18, SWAV_HEAD, model={"NON_TRAINABLE_PARAMS": [
        "heads.0.prototypes0.weight", "heads.0.prototype0.weight"]})
    with pytest.raises(ConfigError, match="NON_TRAINABLE_PARAMS.*prototype0") as e:
        model.get_optimizer_param_groups()
    assert "heads.0.prototypes0.weight" in str(e.value)  # the closest name is suggested
    assert all(p.requires_grad for p in model.parameters())


def test_single_group_dino_constructor_and_bad_constructor():
    cfg, model = build(TINY_VIT, DINO_HEAD, optimizer={"construct_single_param_group_only": True})
    groups = model.get_optimizer_param_groups()
    assert [g["name"] for g in groups] == ["all"]
    assert_partition(model, groups)
    cfg, model = build(TINY_VIT, DINO_HEAD, optimizer={"param_group_constructor": "dino", "weight_decay": 0.04})
    groups = model.get_optimizer_param_groups()
    assert_partition(model, groups)
    g = by_name(model, groups)
    assert all(n.endswith(".bias") or "norm" in n for n in g["unregularized"])
    assert "trunk.cls_token" in g["regularized"]
    assert {x["name"]: x["weight_decay"] for x in groups} == {"regularized": 0.04, "unregularized": 0.0}
    with pytest.raises(ConfigError, match="param_group_constructor.*allowed"):
        get_optimizer_param_groups(model, cfg.MODEL, {"param_group_constructor": "layer_decayy"})


def test_schedule_start_values():
    assert schedule_start_value({"name": "multistep", "values": [0.3, 0.03]}) == 0.3
    assert schedule_start_value({"name": "composite", "schedulers": [
        {"name": "linear", "start_value": 0.01, "end_value": 0.1}, {"name": "cosine", "start_value": 0.1}]}) == 0.01
    with pytest.raises(ConfigError, match="param_schedulers.lr.name.*allowed"):
        schedule_start_value({"name": "polynomial"})


def test_larc_flags_and_step():
    cfg, model = build(RESNET18, SWAV_HEAD, optimizer={"use_larc": True, "exclude_bias_and_norm": True})
    groups = model.get_optimizer_param_groups()
    assert_partition(model, groups)
    for g in groups:
        assert all((p.ndim > 1) == g["larc"] for p in g["params"])
    # LARC: grad <- (grad + wd * p) * trust * ||p|| / (||grad|| + wd * ||p|| + eps), weight decay folded in.
    p = nn.Parameter(torch.randn(4, 3))
    p.grad = torch.randn(4, 3)
    w = p.detach()
    expected = (p.grad + 0.1 * w) * (0.02 * w.norm() / (p.grad.norm() + 0.1 * w.norm() + 1e-8))
    group = {"params": [p], "lr": 0.5, "weight_decay": 0.1, "larc": True}
    untouched = {"params": [nn.Parameter(torch.ones(2))], "lr": 0.5, "weight_decay": 0.1, "larc": False}
    untouched["params"][0].grad = torch.ones(2)
    larc_step_([group, untouched], trust_coefficient=0.02)
    torch.testing.assert_close(p.grad, expected)
    assert group["weight_decay"] == 0.0 and torch.equal(untouched["params"][0].grad, torch.ones(2))
    restore_weight_decay_([group, untouched])
    assert group["weight_decay"] == 0.1 and "larc_weight_decay" not in group


def test_build_model_optimizer_config_drives_the_groups_and_sgd_steps():
    cfg, model = build(RESNET18, SWAV_HEAD, optimizer={"weight_decay": 0.01})
    wrapped = torch.compile(model)  # the wrapper is looked through (nothing is compiled here)
    groups = get_optimizer_param_groups(wrapped, cfg.MODEL, cfg.OPTIMIZER)
    assert by_name(model, groups) == by_name(model, model.get_optimizer_param_groups())
    assert {g["weight_decay"] for g in groups} == {0.01, 0.0}
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    before = model.heads[0].prototypes0.weight.detach().clone()
    model(torch.randn(2, 3, 32, 32))[0][1].sum().backward()
    opt.step()
    assert not torch.equal(before, model.heads[0].prototypes0.weight)
    # Without an OPTIMIZER config the library defaults apply.
    _, plain = build(RESNET18, SWAV_HEAD)
    plain.optimizer_config = None
    assert {g["weight_decay"] for g in plain.get_optimizer_param_groups()} == {1e-4, 0.0}
