"""Every config in vissl_models/configs/ builds; the per-family showcase configs also run through the CLI."""

import io
import os

import pytest
import torch

import vissl_models
from vissl_models import cli
from vissl_models.config import list_shipped_configs, resolve_config

# The shipped configs as the package sees them, wherever they live in the source tree.
CONFIGS = [resolve_config(name) for name in list_shipped_configs()]

# One config per trunk family named by the issues; `vissl-models summary` runs each for real (slow).
SHOWCASE = [
    "swav_resnet50", "simclr_resnet50", "pirl_resnet50", "linear_eval_resnet50",
    "simclr_regnet_y_400mf", "seer_regnet_y_32gf_trunk", "simclr_efficientnet_b0", "rotnet_alexnet",
    "colorization_alexnet", "dino_convnext_tiny", "mobilenetv3_large_fulltune", "simclrv2_resnet_sk",
    "dino_deit_s16", "dino_xcit_s16", "mocov3_vit_b16", "ibot_deit_s16", "msn_deit_s16", "swin_t_linear_eval",
    "beit_b16_linear_eval", "vit_b16_linear_eval", "simclr_convit_s",
]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p)[:-5])
def test_config_builds_on_the_meta_device(path):
    cfg = vissl_models.load_config(path)
    with torch.device("meta"):
        model = vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert model.trunk is not None and len(model.heads) == len(cfg.MODEL.HEAD.PARAMS)


def test_showcase_configs_exist():
    names = {os.path.basename(p)[:-5] for p in CONFIGS}
    assert not set(SHOWCASE) - names


@pytest.mark.slow
@pytest.mark.parametrize("name", SHOWCASE)
def test_summary_builds_and_runs(name):
    out = io.StringIO()
    assert cli.summary(name, flops=False, out=out) == 0
    assert "outputs" in out.getvalue()
