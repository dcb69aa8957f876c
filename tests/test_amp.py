"""MODEL.AMP_PARAMS -> torch.autocast dtype; bf16 autocast forwards of the shipped configs stay close to fp32.

Tolerance: every output tensor's relative L2 error ||bf16 - fp32|| / ||fp32|| <= 5e-2 (measured
about 0.3-1.2% on the tiny/small versions below; bf16 keeps 8 mantissa bits).
"""

import contextlib
import glob
import os
import warnings

import pytest
import torch

import vissl_models
from vissl_models.cli import synthetic_input
from vissl_models.config import ConfigError
from vissl_models.training import autocast, autocast_dtype, grad_scaler, needs_grad_scaler
from utils import flat_outputs

BF16_REL_TOL = 5e-2
CONFIG_DIR = os.path.join(os.path.dirname(vissl_models.__file__), "configs")


def amp(**params):
    return vissl_models.load_config({"MODEL": {"AMP_PARAMS": params}}).MODEL


def test_off_by_default():
    cfg = vissl_models.load_config().MODEL
    assert autocast_dtype(cfg) is None
    assert isinstance(autocast(cfg, "cpu"), contextlib.nullcontext)
    assert not needs_grad_scaler(cfg)
    assert not grad_scaler(cfg, "cpu").is_enabled()


def test_pytorch_type_defaults_to_float16_like_the_original():
    cfg = amp(USE_AMP=True, AMP_TYPE="pytorch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert autocast_dtype(cfg) == torch.float16
    assert needs_grad_scaler(cfg)


def test_dtype_argument_selects_bfloat16():
    cfg = amp(USE_AMP=True, AMP_TYPE="pytorch", AMP_ARGS={"dtype": "bfloat16"})
    assert autocast_dtype(cfg) == torch.bfloat16
    assert autocast_dtype(cfg.AMP_PARAMS) == torch.bfloat16  # the section itself works too
    assert not needs_grad_scaler(cfg)
    with autocast(cfg, "cpu"):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("level, expected", [("O0", None), ("O1", torch.float16), ("O2", torch.float16),
                                             ("O3", torch.float16)])
def test_apex_levels_map_to_autocast_with_a_warning(level, expected):
    cfg = amp(USE_AMP=True, AMP_TYPE="apex", AMP_ARGS={"opt_level": level})
    if expected is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert autocast_dtype(cfg) is None
        return
    with pytest.warns(UserWarning, match=f"apex AMP opt_level {level}") as record:
        assert autocast_dtype(cfg) == expected
    assert ("master weights" in str(record[0].message)) == (level != "O1")


@pytest.mark.parametrize("params, key", [
    ({"USE_AMP": True, "AMP_TYPE": "nvidia"}, "AMP_TYPE"),
    ({"USE_AMP": True, "AMP_TYPE": "apex", "AMP_ARGS": {"opt_level": "O4"}}, "opt_level"),
    ({"USE_AMP": True, "AMP_TYPE": "pytorch", "AMP_ARGS": {"dtype": "float8"}}, "AMP_ARGS.dtype"),
])
def test_bad_values_name_the_key(params, key):
    with pytest.raises(ConfigError, match=key) as e:
        autocast_dtype(amp(**params))
    assert "allowed" in str(e.value)


def _check_bf16_close(name, overrides=(), size=None):
    cfg = vissl_models.load_config(os.path.join(CONFIG_DIR, name + ".yaml"), overrides)
    model = vissl_models.build_model(cfg.MODEL).eval()
    x = synthetic_input(model, None, (), size)
    with torch.no_grad():
        torch.manual_seed(2)  # MSN drops tokens at random even in eval: same draw for both runs
        ref = list(flat_outputs(model(x)))
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = list(flat_outputs(model(x)))
    assert len(ref) == len(low) > 0
    for a, b in zip(ref, low):
        assert a.dtype == torch.float32
        err = ((b.float() - a).norm() / a.norm()).item()
        assert err <= BF16_REL_TOL, f"{name}: bf16 relative error {err:.4f}"


TWO_LAYER_VIT = ["config.MODEL.TRUNK.VISION_TRANSFORMERS.NUM_LAYERS=2"]
SMALL = {  # shipped configs (shrunk by overrides where they are deep) at 64 px
    "swav_resnet50": [],
    "dino_deit_s16": TWO_LAYER_VIT,
    "ibot_deit_s16": TWO_LAYER_VIT,
    "msn_deit_s16": TWO_LAYER_VIT,
    "simclr_regnet_y_400mf": [],
    "mobilenetv3_large_fulltune": [],
    "simclr_efficientnet_b0": [],
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bf16_autocast_forward_close_to_fp32_small(name):
    _check_bf16_close(name, SMALL[name], size=64)


ALL = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        return 1 << 62


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_forward_close_to_fp32_full(name):
    cfg = vissl_models.load_config(os.path.join(CONFIG_DIR, name + ".yaml"))
    with torch.device("meta"):
        n = sum(p.numel() for p in vissl_models.build_model(cfg.MODEL).parameters())
    if 4 * n * 3 > _available_memory():
        pytest.skip(f"{name}: {n / 1e9:.1f}B parameters do not fit in this machine's free memory")
    _check_bf16_close(name)
