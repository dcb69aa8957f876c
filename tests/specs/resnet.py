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
    # ResNeXt bottlenecks with GroupNorm, weight standardization, layer4 stride 1 and zero-init
    # residuals, kept small (8 groups of 2 channels: about 5M parameters).
    TrunkSpec(
        name="resnet",
        id="resnext50_8x2d_gn8_ws_l4s1",
        model={
            "TRUNK": {
                "RESNETS": {
                    "DEPTH": 50,
                    "GROUPS": 8,
                    "WIDTH_PER_GROUP": 2,
                    "NORM": "GroupNorm",
                    "GROUPNORM_GROUPS": 8,
                    "STANDARDIZE_CONVOLUTIONS": True,
                    "LAYER4_STRIDE": 1,
                    "ZERO_INIT_RESIDUAL": True,
                }
            }
        },
        features={"res2": (256, 8, 8), "res5": (2048, 2, 2), "flatten": (2048,)},
    ),
    TrunkSpec(
        name="resnet",
        id="resnet34_layernorm_lab",
        model={"INPUT_TYPE": "lab", "TRUNK": {"RESNETS": {"DEPTH": 34, "NORM": "LayerNorm"}}},
        features={"res4": (256, 2, 2), "res5avg": (512, 1, 1)},
    ),
]
