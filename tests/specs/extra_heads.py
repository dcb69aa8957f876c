from . import HeadSpec

HEAD_SPECS = [
    HeadSpec("eval_mlp_pooled", {"in_channels": 8, "dims": [8, 5]}, (4, 3, 8)),
    HeadSpec("eval_mlp_pooled", {"in_channels": 8, "dims": [8, 6, 5], "use_bn": True, "use_relu": True},
             (4, 3, 8), id="eval_mlp_pooled_bn_relu"),
    HeadSpec("mobilenet_v3_head", {"in_channels": 16, "mid_channels": 12, "num_classes": 5}, (4, 16)),
    HeadSpec("mobilenet_v3_head", {"in_channels": 16, "mid_channels": 12, "num_classes": 5, "with_bn": True},
             (4, 16, 1, 1), id="mobilenet_v3_head_bn"),
    HeadSpec("mobilenet_v3_head_timm", {"in_channels": 16, "mid_channels": 12, "num_classes": 5}, (4, 16)),
    HeadSpec("mobilenet_v3_head_timm", {"in_channels": 16, "mid_channels": 12, "num_classes": 5, "with_bn": True,
                                        "drop_out": 0.0}, (4, 16, 1, 1), id="mobilenet_v3_head_timm_bn"),
]
