from vissl_models.trunks.efficientnet import USUAL_VALUES

from . import TrunkSpec

# The settings every original EfficientNet config uses, with B0.
B0 = dict(USUAL_VALUES)

TRUNK_SPECS = [
    TrunkSpec(
        name="efficientnet",
        id="efficientnet_b0",
        model={"TRUNK": {"EFFICIENT_NETS": B0}},
        features={
            "conv1": (32, 16, 16),
            "block0": (16, 16, 16),
            "block1": (24, 8, 8),
            "block15": (320, 1, 1),
            "conv_final": (1280, 1, 1),
            "avgpool": (1280, 1, 1),
            "flatten": (1280,),
            "dropout": (1280,),
        },
    ),
    TrunkSpec(
        name="efficientnet",
        id="efficientnet_b0_no_se_min_width",
        model={"TRUNK": {"EFFICIENT_NETS": dict(B0, use_se=False, min_width=16, drop_connect_rate=0.0)}},
        features={"block0": (16, 16, 16), "flatten": (1280,)},
    ),
]
