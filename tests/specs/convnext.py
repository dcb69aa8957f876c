from . import TrunkSpec

TINY = {"DEPTH": [1, 1, 2, 1], "DIMS": [8, 16, 24, 32]}

TRUNK_SPECS = [
    TrunkSpec(name="convnext", model={"TRUNK": {"CONVNEXT": TINY}}, features={"lastCLS": (32,)}),
    TrunkSpec(
        name="convnext",
        id="convnext_drop_path_checkpointing",
        model={
            "TRUNK": {"CONVNEXT": dict(TINY, DROP_PATH_RATE=0.2)},
            "ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": True, "NUM_ACTIVATION_CHECKPOINTING_SPLITS": 3},
        },
        input_size=64,
        features={"lastCLS": (32,)},
    ),
]
