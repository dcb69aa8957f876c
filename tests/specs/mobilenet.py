from . import TrunkSpec

TRUNK_SPECS = [
    TrunkSpec(
        name="mobilenetv3_tv",
        model={},
        features={"trunk": (960, 1, 1), "trunk_pool": (960,), "trunk_pool_norm": (960,)},
    ),
    TrunkSpec(
        name="mobilenetv3_timm",
        model={},
        features={"trunk": (960, 1, 1), "trunk_pool": (960,), "flatten": (960,), "flatten_norm": (960,)},
    ),
    TrunkSpec(
        name="mobilenetv3_timm",
        id="mobilenetv3_timm_with_conv_head",
        model={"TRUNK": {"MOBILE_NET": {"TRUNK_ONLY": False}}},
        features={"flatten": (1280,), "flatten_norm": (1280,), "trunk_pool": (960,), "trunk_pool_norm": (960,)},
    ),
]
