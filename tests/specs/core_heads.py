from . import HeadSpec

HEAD_SPECS = [
    HeadSpec("mlp", {"dims": [16, 12, 8], "use_bn": True, "use_relu": True, "use_dropout": True}, (4, 16)),
    HeadSpec("mlp", {"dims": [16, 8], "use_bias": False, "skip_last_layer_relu_bn": False, "use_bn": True},
             (4, 16, 1, 1), id="mlp_4d_nobias"),
    HeadSpec("mlp_fsdp", {"dims": [16, 8]}, (4, 16)),
    HeadSpec("mlp_res", {"dims": [16, 16, 8], "use_bn": True, "use_relu": True}, (4, 16)),
    HeadSpec("eval_mlp", {"in_channels": 8, "dims": [32, 10]}, (4, 8, 2, 2)),
    HeadSpec("eval_mlp", {"in_channels": 8, "dims": [8, 8, 10], "use_residual": True, "use_bn": True},
             (4, 8), id="eval_mlp_residual_2d"),
    HeadSpec("eval_mlp_fsdp", {"in_channels": 8, "dims": [8, 10]}, (4, 8, 1, 1)),
    HeadSpec("siamese_concat_view", {"num_towers": 3}, (6, 5)),
    HeadSpec("swav_head", {"dims": [16, 16, 8], "use_bn": True, "num_clusters": [10, 12]}, (4, 16)),
    HeadSpec("swav_head", {"dims": [16, 8], "use_bn": False, "num_clusters": [10], "return_embeddings": False,
                           "use_weight_norm_prototypes": True, "activation_name": "GELU"}, (4, 16),
             id="swav_head_weight_norm"),
    HeadSpec("swav_head_fsdp", {"dims": [16, 8], "use_bn": True, "num_clusters": [5]}, (4, 16)),
    HeadSpec("identity", {}, (4, 16)),
]
