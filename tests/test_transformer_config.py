"""Config checks every transformer trunk shares: each bad value raises a ConfigError naming its key."""

import pytest
import torch

import vissl_models
from vissl_models.config import ConfigError
from utils import model_config

VIT = {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 2, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32}
# trunk name -> (section it reads, tiny options, rate keys it reads)
TRUNKS = {
    "vision_transformer": ("VISION_TRANSFORMERS", VIT, ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE", "DROP_PATH_RATE")),
    "vision_transformer_fsdp": (
        "VISION_TRANSFORMERS", VIT, ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE", "DROP_PATH_RATE")
    ),
    "convit": (
        "VISION_TRANSFORMERS", VIT, ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE", "DROP_PATH_RATE")
    ),
    "classy_vit": ("VISION_TRANSFORMERS", VIT, ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE")),
    "xcit": (
        "XCIT", {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 1, "NUM_HEADS": 2, "HIDDEN_DIM": 16},
        ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE", "DROP_PATH_RATE"),
    ),
    "xcit_fsdp": (
        "XCIT", {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 1, "NUM_HEADS": 2, "HIDDEN_DIM": 16},
        ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE", "DROP_PATH_RATE"),
    ),
    "swin_transformer": (
        "SWIN_TRANSFORMER",
        {"IMAGE_SIZE": 32, "PATCH_SIZE": 4, "EMBED_DIM": 8, "DEPTHS": [1, 1], "NUM_HEADS": [2, 2], "WINDOW_SIZE": 4},
        ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE", "DROP_PATH_RATE"),
    ),
    "swin_transformer_official": (
        "SWIN_TRANSFORMER",
        {"IMAGE_SIZE": 32, "PATCH_SIZE": 4, "EMBED_DIM": 8, "DEPTHS": [1, 1], "NUM_HEADS": [2, 2], "WINDOW_SIZE": 4},
        ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE", "DROP_PATH_RATE"),
    ),
    "beit": (
        "BEIT", {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 1, "NUM_HEADS": 2, "HIDDEN_DIM": 16},
        ("DROPOUT_RATE", "ATTENTION_DROPOUT_RATE", "DROP_PATH_RATE"),
    ),
}


def build(name, **options):
    section, tiny, _ = TRUNKS[name]
    cfg = model_config(TRUNK={"NAME": name, section: {**tiny, **options}})
    return vissl_models.get_model_trunk(name)(cfg, name)


@pytest.mark.parametrize("name", TRUNKS)
def test_tiny_configs_build(name):
    assert sum(p.numel() for p in build(name).parameters()) > 0


@pytest.mark.parametrize("name", TRUNKS)
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rates_outside_zero_one_raise(name, rate):
    section, _, keys = TRUNKS[name]
    for key in keys:
        with pytest.raises(ConfigError, match=rf"MODEL\.TRUNK\.{section}\.{key}: got {rate}, expected a rate in \[0, 1\)"):
            build(name, **{key: rate})


@pytest.mark.parametrize("name", TRUNKS)
def test_patch_larger_than_image_raises(name):
    section = TRUNKS[name][0]
    # XCiT's conv stem takes patch 8 or 16 only, so its image shrinks instead.
    options = {"IMAGE_SIZE": 4} if name.startswith("xcit") else {"PATCH_SIZE": 64}
    with pytest.raises(ConfigError, match=rf"MODEL\.TRUNK\.{section}\.PATCH_SIZE: got \d+, larger than IMAGE_SIZE"):
        build(name, **options)


def test_vit_patch_larger_than_one_side_of_a_rectangular_image_raises():
    with pytest.raises(ConfigError, match=r"PATCH_SIZE: got 16, larger than IMAGE_SIZE \[32, 8\]"):
        build("vision_transformer", IMAGE_SIZE=[32, 8], PATCH_SIZE=16)


@pytest.mark.parametrize("name", TRUNKS)
@pytest.mark.parametrize("key", ["IMAGE_SIZE", "PATCH_SIZE"])
def test_string_for_an_integer_raises(name, key):
    section = TRUNKS[name][0]
    with pytest.raises(ConfigError, match=rf"MODEL\.TRUNK\.{section}\.{key}: got '16', expected an integer"):
        build(name, **{key: "16"})


@pytest.mark.parametrize("name", ["vision_transformer", "xcit", "beit", "convit", "classy_vit"])
def test_width_not_a_multiple_of_the_heads_raises_the_same_way(name):
    section = TRUNKS[name][0]
    with pytest.raises(ConfigError, match=rf"{section}\.HIDDEN_DIM: got 16, expected a multiple of NUM_HEADS \(3\)"):
        build(name, NUM_HEADS=3)


def test_msn_drop_ratio_is_a_rate():
    for ratio in (-0.5, 1.0):
        with pytest.raises(ConfigError, match=r"PARAMS\.drop_ratio: got .*, expected a rate in \[0, 1\)"):
            build("vision_transformer", MASKED_IMAGE_MODELING={"NAME": "msn", "PARAMS": {"drop_ratio": ratio}})


def test_init_seed_must_be_an_integer():
    cfg = model_config(_MODEL_INIT_SEED="3", TRUNK={"NAME": "vision_transformer", "VISION_TRANSFORMERS": VIT})
    with pytest.raises(ConfigError, match="_MODEL_INIT_SEED"):
        vissl_models.get_model_trunk("vision_transformer")(cfg, "vision_transformer")


@pytest.mark.parametrize("name", TRUNKS)
def test_a_single_image_without_batch_dimension_is_refused(name):
    trunk = build(name).eval()
    with pytest.raises(ValueError, match=r"N x C x H x W|\(B, 3, H, W\)|\(B, 3, 32, 32\)"):
        trunk(torch.randn(3, 32, 32))
