"""Full tensors into DTensor shards, without importing torch.distributed for plain models."""

from __future__ import annotations

import sys

import torch


def sharded_target(target: torch.Tensor) -> bool:
    """Whether ``target`` is a DTensor (a parameter or buffer of an FSDP2-sharded model)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(target, mod.DTensor)


def shard_like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The full tensor ``value`` laid out as the DTensor ``target`` (same mesh and placements): each
    rank keeps its own part of the value it holds, with no communication, so every rank must pass
    the same full value."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value, target.device_mesh, target.placements, src_data_rank=None)
