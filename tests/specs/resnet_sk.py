from . import TrunkSpec

# DEPTH 50 and width 1 are the smallest the options allow; a 16px input keeps it quick.
# The no-SK stem and the lab input are covered in tests/test_resnet_sk.py.
TRUNK_SPECS = [
    TrunkSpec(
        name="resnet_sk",
        id="resnet_sk50_1x_sk",
        model={"TRUNK": {"RESNETS_SK": {"DEPTH": 50, "WIDTH_MULTIPLIER": 1, "SK_RATIO": 0.0625}}},
        input_size=16,
        features={"res1": (64, 4, 4), "res3": (512, 2, 2), "res5avg": (2048, 1, 1), "flatten": (2048,)},
    ),
]
