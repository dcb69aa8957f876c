from . import TrunkSpec

# 32px images, patch 16: a 2x2 token grid; crop 48px: a 3x3 grid (Fourier positions follow the grid).
_XCIT = {"IMAGE_SIZE": 32, "PATCH_SIZE": 16, "HIDDEN_DIM": 32, "NUM_LAYERS": 2, "NUM_HEADS": 4}

TRUNK_SPECS = [
    TrunkSpec(
        name="xcit",
        model={"TRUNK": {"XCIT": dict(_XCIT)}},
        features={"lastCLS": (32,), "lastMAP": (2, 2, 32)},
        crop_size=48,
    ),
    TrunkSpec(
        name="xcit",
        id="xcit_p8_clsnorm_droppath_checkpointed",
        model={
            "TRUNK": {
                "XCIT": dict(
                    _XCIT, PATCH_SIZE=8, TOKENS_NORM=False, QKV_BIAS=False, QK_SCALE=0.3, ETA=1e-5,
                    DROP_PATH_RATE=0.2, DROPOUT_RATE=0.1, CHECKPOINT_XCA_BLOCK=True, CHECKPOINT_ATTN_BLOCK=True,
                )
            }
        },
        features={"lastCLS": (32,), "lastMAP": (4, 4, 32)},
        crop_size=24,
    ),
    TrunkSpec(
        name="xcit_fsdp",
        model={"TRUNK": {"XCIT": dict(_XCIT, NUM_LAYERS=3)}},
        features={"lastCLS": (32,), "lastMAP": (2, 2, 32)},
        crop_size=16,
    ),
]
