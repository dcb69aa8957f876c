from . import TrunkSpec

# 67px is about the smallest input that leaves pool5 a non-empty map in every variant.
_BVLC_LIKE = {
    "conv1": (96, 15, 15),
    "pool1": (96, 7, 7),
    "conv2": (256, 7, 7),
    "pool2": (256, 3, 3),
    "conv3": (384, 3, 3),
    "conv5": (256, 3, 3),
    "pool5": (256, 1, 1),
    "flatten": (256, 1, 1),  # Flatten(dim=-1) leaves 4-d maps as they are
}

TRUNK_SPECS = [
    TrunkSpec(name="alexnet_bvlc", model={}, input_size=67, features=_BVLC_LIKE),
    TrunkSpec(name="alexnet_colorization", model={"INPUT_TYPE": "lab"}, input_size=67, features=_BVLC_LIKE),
    TrunkSpec(
        name="alexnet_deepcluster",
        model={},
        input_size=67,
        features={"conv1": (96, 16, 16), "pool1": (96, 7, 7), "conv4": (384, 3, 3), "pool5": (256, 1, 1)},
    ),
    TrunkSpec(
        name="alexnet_jigsaw",
        model={},
        input_size=67,
        features={"conv1": (96, 29, 29), "pool1": (96, 14, 14), "pool2": (256, 6, 6), "flatten": (256, 2, 2)},
    ),
    TrunkSpec(
        name="alexnet_rotnet",
        model={},
        input_size=67,
        features={"conv1": (64, 16, 16), "conv2": (192, 7, 7), "conv4": (256, 3, 3), "pool5": (256, 1, 1)},
    ),
]
