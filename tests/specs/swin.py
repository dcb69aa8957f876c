from . import TrunkSpec

# 32px images, patch 4, window 4: stage maps 8x8 (shifted windows) then 4x4 (one window).
_SWIN = {"IMAGE_SIZE": 32, "PATCH_SIZE": 4, "EMBED_DIM": 16, "DEPTHS": [2, 2], "NUM_HEADS": [2, 4], "WINDOW_SIZE": 4}

TRUNK_SPECS = [
    TrunkSpec(
        name="swin_transformer",
        model={"TRUNK": {"SWIN_TRANSFORMER": dict(_SWIN)}},
        features={"lastCLS": (32,)},
        crop_size=22,  # padded to 24px, maps 6x6 (padded to 8x8 for windows) and 3x3
    ),
    TrunkSpec(
        name="swin_transformer",
        id="swin_transformer_w7_3stages_padded_checkpointed",
        model={
            "TRUNK": {
                "SWIN_TRANSFORMER": dict(
                    _SWIN, DEPTHS=[2, 1, 2], NUM_HEADS=[2, 2, 4], WINDOW_SIZE=7, QKV_BIAS=False, QK_SCALE=0.25,
                    DROP_PATH_RATE=0.2, DROPOUT_RATE=0.1,
                )
            },
            "ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": True},
        },
        features={"lastCLS": (64,)},
        crop_size=40,
    ),
    TrunkSpec(
        name="swin_transformer_official",
        model={"TRUNK": {"SWIN_TRANSFORMER": dict(_SWIN)}},
        features={"lastCLS": (32,)},
    ),
]
