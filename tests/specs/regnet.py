from . import TrunkSpec

# depth 5, w_0 8, w_a 8, w_m 1.6, group_width 8: four stages of widths 8, 16, 24, 32 and depths 1, 1, 1, 2.
TINY_REGNET = {"depth": 5, "w_0": 8, "w_a": 8, "w_m": 1.6, "group_width": 8, "stem_width": 8}
TINY_FEATURES = {
    "conv1": (8, 16, 16),
    "res2": (8, 8, 8),
    "res3": (16, 4, 4),
    "res4": (24, 2, 2),
    "res5": (32, 1, 1),
    "avgpool": (32, 1, 1),
    "flatten": (32,),
}
TINY_ANYNET = {
    "name": "anynet",
    "depths": [1, 2, 1],
    "widths": [8, 16, 24],
    "group_widths": [4, 8, 8],
    "bottleneck_multipliers": [1.0, 1.0, 1.0],
    "strides": [2, 2, 1],
    "stem_width": 8,
}

TRUNK_SPECS = [
    TrunkSpec(name="regnet", id="regnet_tiny_explicit", model={"TRUNK": {"REGNET": TINY_REGNET}}, features=TINY_FEATURES),
    TrunkSpec(
        name="regnet",
        id="regnet_tiny_anynet_cifar_stem_basic_silu_bgr",
        model={
            "INPUT_TYPE": "bgr",
            "TRUNK": {
                "REGNET": dict(
                    TINY_ANYNET, stem_type="res_stem_cifar", block_type="res_basic_block", activation="silu"
                )
            },
        },
        features={"conv1": (8, 32, 32), "res2": (8, 16, 16), "res3": (16, 8, 8), "res4": (24, 8, 8), "flatten": (24,)},
    ),
    TrunkSpec(
        name="regnet_v2",
        id="regnet_v2_tiny_stage_checkpoints",
        model={
            "ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": True},
            "TRUNK": {"REGNET": dict(TINY_REGNET, stage_checkpoints=[[1], [], [], [1]])},
        },
        features=TINY_FEATURES,
    ),
    TrunkSpec(
        name="regnet_fsdp",
        id="regnet_fsdp_tiny_anynet_linear_blocks",
        model={
            "ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": True},
            "TRUNK": {
                "REGNET": dict(
                    TINY_ANYNET,
                    block_type="res_bottleneck_linear_block",
                    bottleneck_multipliers=[2.0, 2.0, 2.0],
                    stage_checkpoints=[[], [1], []],
                    stage_checkpointing=[[], [False], []],
                )
            },
        },
        features={"conv1": (8, 16, 16), "res2": (8, 8, 8), "res3": (16, 4, 4), "res4": (24, 4, 4)},
    ),
]
