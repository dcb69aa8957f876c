from . import TrunkSpec

B0 = {
    "model_version": "B0",
    "bn_momentum": 0.01,
    "bn_epsilon": 0.001,
    "drop_connect_rate": 0.2,
    "width_divisor": 8,
    "min_width": None,
    "use_se": True,
}

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
