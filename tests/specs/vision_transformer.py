from . import TrunkSpec

_TINY = {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 2, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32,
         "QKV_BIAS": True, "DROP_PATH_RATE": 0.1}


def _vit(**options):
    return {"TRUNK": {"VISION_TRANSFORMERS": {**_TINY, **options}}}


TRUNK_SPECS = [
    TrunkSpec(
        name="vision_transformer",
        id="vit_tiny",
        model=_vit(DROPOUT_RATE=0.1, ATTENTION_DROPOUT_RATE=0.1),
        crop_size=16,
        features={
            "lastCLS": (16,),
            "lastBLK": (17, 16),
            "lastMAP": (4, 4, 16),
            "blkCLS0": (16,),
            "concatCLS2": (32,),
            "concatBLK2": (17, 32),
        },
    ),
    TrunkSpec(
        name="vision_transformer",
        id="vit_tiny_no_class_token",
        model=_vit(USE_CLASS_TOKEN=False, QKV_BIAS=False, QK_SCALE=0.5),
        crop_size=24,
        features={"lastPOOL": (16,), "concatPOOL2": (32,), "stridePOOL_2_1": (32,), "lastBLK": (16, 16)},
    ),
    TrunkSpec(
        name="vision_transformer",
        id="vit_tiny_ibot_checkpointed",
        model=_vit(MASKED_IMAGE_MODELING={"NAME": "ibot", "PARAMS": {}}, CHECKPOINT_MLP=True, CHECKPOINT_BLOCK=True),
        crop_size=16,
        # The mask embedding is only used when a mask is passed.
        no_grad_ok=["masked_embed"],
        features={"lastBLK": (17, 16)},
    ),
    TrunkSpec(
        name="vision_transformer",
        id="vit_tiny_msn",
        # Token dropping is random even in eval mode, so these shared checks (which compare two
        # unseeded runs) use views below global_view_tokens; tests/test_vision_transformer.py
        # covers the dropping itself.
        model=_vit(MASKED_IMAGE_MODELING={"NAME": "msn", "PARAMS": {"drop_ratio": 0.5, "global_view_tokens": 64}}),
        crop_size=16,
        features={"lastBLK": (17, 16), "lastCLS": (16,)},
    ),
    TrunkSpec(
        name="vision_transformer_fsdp",
        model=_vit(),
        crop_size=16,
        features={"lastCLS": (16,), "concatCLS2": (32,)},
    ),
]
