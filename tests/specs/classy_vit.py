from . import TrunkSpec

_VIT = {"IMAGE_SIZE": 16, "PATCH_SIZE": 4, "NUM_LAYERS": 2, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32}

# classy_vit takes IMAGE_SIZE inputs only (as classy_vision), so no second crop size.
TRUNK_SPECS = [
    TrunkSpec(
        name="classy_vit",
        id="classy_vit_token",
        model={"TRUNK": {"VISION_TRANSFORMERS": dict(_VIT, DROPOUT_RATE=0.1, ATTENTION_DROPOUT_RATE=0.1)}},
        input_size=16,
        features={"avgpool": (16,)},
    ),
    TrunkSpec(
        name="classy_vit",
        id="classy_vit_gap",
        model={"INPUT_TYPE": "bgr", "TRUNK": {"VISION_TRANSFORMERS": dict(_VIT, CLASSIFIER="gap")}},
        input_size=16,
        features={"avgpool": (16,)},
    ),
]
