from . import TrunkSpec

# 16px images, patch 4: a 4x4 grid; crop 12px: a 3x3 grid (positional embedding resized).
_VIT = {"IMAGE_SIZE": 16, "PATCH_SIZE": 4, "NUM_LAYERS": 3, "NUM_HEADS": 4, "HIDDEN_DIM": 16, "MLP_DIM": 32}

TRUNK_SPECS = [
    TrunkSpec(
        name="convit",
        id="convit_token_2gpsa",
        model={"TRUNK": {"VISION_TRANSFORMERS": dict(_VIT), "CONVIT": {"N_GPSA_LAYERS": 2, "LOCALITY_DIM": 2}}},
        input_size=16,
        features={"avgpool": (16,)},
        crop_size=12,
    ),
    TrunkSpec(
        name="convit",
        id="convit_gap_bias_droppath_allgpsa",
        model={
            "TRUNK": {
                "VISION_TRANSFORMERS": dict(
                    _VIT, CLASSIFIER="gap", QKV_BIAS=True, QK_SCALE=0.3, DROP_PATH_RATE=0.2,
                    DROPOUT_RATE=0.1, ATTENTION_DROPOUT_RATE=0.1,
                ),
                "CONVIT": {"N_GPSA_LAYERS": 3, "LOCALITY_DIM": 3, "LOCALITY_STRENGTH": 0.0},
            }
        },
        input_size=16,
        features={"lastCLS": (16,)},
        crop_size=20,
        # With every layer GPSA the class token is never added, exactly as in the original.
        no_grad_ok=("class_token",),
    ),
]
