from . import TrunkSpec

TRUNK_SPECS = [
    TrunkSpec(
        name="resnet",
        id="resnet18",
        model={"TRUNK": {"RESNETS": {"DEPTH": 18}}},
        features={
            "conv1": (64, 16, 16),
            "res1": (64, 8, 8),
            "res2": (64, 8, 8),
            "res3": (128, 4, 4),
            "res4": (256, 2, 2),
            "res5": (512, 1, 1),
            "res5avg": (512, 1, 1),
            "flatten": (512,),
            "layer3": (256, 2, 2),
        },
    ),
    TrunkSpec(
        name="resnet",
        id="resnext50_32x4d_w2_gn_ws_l4s1",
        model={
            "TRUNK": {
                "RESNETS": {
                    "DEPTH": 50,
                    "WIDTH_MULTIPLIER": 2,
                    "GROUPS": 32,
                    "WIDTH_PER_GROUP": 4,
                    "NORM": "GroupNorm",
                    "STANDARDIZE_CONVOLUTIONS": True,
                    "LAYER4_STRIDE": 1,
                    "ZERO_INIT_RESIDUAL": True,
                }
            }
        },
        features={"res5": (4096, 2, 2), "flatten": (4096,)},
    ),
    TrunkSpec(
        name="resnet",
        id="resnet34_layernorm_lab",
        model={"INPUT_TYPE": "lab", "TRUNK": {"RESNETS": {"DEPTH": 34, "NORM": "LayerNorm"}}},
        features={"res4": (256, 2, 2), "res5avg": (512, 1, 1)},
    ),
]
