"""Training at scale with PyTorch's own stack: FSDP2 sharding at the original's wrap points,
SyncBatchNorm groups, full and DCP checkpoints of sharded models, distributed extraction."""

from .checkpoint import (
    dcp_to_vissl,
    full_model_state_dict,
    is_dcp_dir,
    load_dcp,
    read_dcp_model_state,
    save_dcp,
    vissl_to_dcp,
)
from .fsdp import ShardReport, fsdp_options, is_sharded, shard_model, wrap_points
from .sync_bn import local_world_size, sync_bn_group_ranks, sync_bn_process_group

__all__ = [
    "ShardReport",
    "dcp_to_vissl",
    "fsdp_options",
    "full_model_state_dict",
    "is_dcp_dir",
    "is_sharded",
    "load_dcp",
    "local_world_size",
    "read_dcp_model_state",
    "save_dcp",
    "shard_model",
    "sync_bn_group_ranks",
    "sync_bn_process_group",
    "vissl_to_dcp",
    "wrap_points",
]
