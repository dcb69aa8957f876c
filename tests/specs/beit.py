from . import TrunkSpec

# 32px images, patch 8: a 4x4 grid plus the class token.
_BEIT = {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 3, "NUM_HEADS": 2, "HIDDEN_DIM": 16}

TRUNK_SPECS = [
    TrunkSpec(
        name="beit",
        id="beit_relpos_layerscale",
        model={
            "TRUNK": {
                "BEIT": dict(
                    _BEIT, QKV_BIAS=True, USE_REL_POS_BIAS=True, USE_MEAN_POOLING=False, INIT_VALUES=0.1,
                    DROP_PATH_RATE=0.1,
                )
            }
        },
        features={"lastCLS": (16,), "concatCLS2": (32,), "blkCLS0": (16,), "blkCLS-1": (16,)},
    ),
    TrunkSpec(
        name="beit",
        id="beit_shared_relpos_no_abs",
        model={
            "TRUNK": {
                "BEIT": dict(
                    _BEIT, USE_ABS_POS_EMB=False, USE_SHARED_REL_POS_BIAS=True, QK_SCALE=0.3, DROPOUT_RATE=0.1
                ),
            },
            "ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": True},
        },
        features={"lastCLS": (16,), "concatCLS3": (48,)},
    ),
]
