"""SyncBatchNorm process groups from ``MODEL.SYNC_BN_CONFIG.GROUP_SIZE``, as the original documented:
``-1``: one group per machine (the local world size), ``0``: one global group, ``> 0``: groups of
that many consecutive ranks."""

from __future__ import annotations

import os
from typing import Any, List, Optional

from ..config import ConfigError

SECTION = "MODEL.SYNC_BN_CONFIG.GROUP_SIZE"


def sync_bn_group_ranks(world_size: int, group_size: int, local_world_size: Optional[int] = None) -> List[List[int]]:
    """The rank groups SyncBatchNorm reduces over: consecutive ranks, ``world_size / size`` groups.

    ``group_size`` -1 takes ``local_world_size`` (ranks per machine), 0 the whole world. Raises
    ``ConfigError`` when the size does not divide the world.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: got {world_size!r}, expected a positive integer")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < -1:
        raise ConfigError(f"{SECTION}: got {group_size!r}, expected -1 (one group per machine), 0 (global) or a "
                          "positive group size")
    size = group_size
    if group_size == -1:
        if local_world_size is None:
            raise ValueError(f"{SECTION} -1 groups the ranks of each machine: local_world_size is needed")
        size = local_world_size
    elif group_size == 0:
        size = world_size
    if size < 1 or size > world_size or world_size % size:
        what = f"local world size {size}" if group_size == -1 else f"{size}"
        raise ConfigError(f"{SECTION}: got {group_size} ({what}), which does not divide the world size {world_size}")
    return [list(range(start, start + size)) for start in range(0, world_size, size)]


def local_world_size() -> int:
    """Ranks on this machine: ``LOCAL_WORLD_SIZE`` (set by torchrun), else the visible CUDA devices
    capped by the world size, else 1."""
    import torch
    import torch.distributed as dist

    env = os.environ.get("LOCAL_WORLD_SIZE")
    if env:
        return int(env)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        return max(1, min(torch.cuda.device_count(), world))
    return 1


def sync_bn_process_group(group_size: int, local_size: Optional[int] = None) -> Any:
    """This rank's SyncBatchNorm process group for ``group_size`` (``None``: the default, global group).

    A collective: every rank must call it, since each subgroup is created on all ranks.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{SECTION} {group_size}: SyncBatchNorm groups need an initialised process group")
    world = dist.get_world_size()
    groups = sync_bn_group_ranks(world, group_size, local_world_size() if local_size is None else local_size)
    if len(groups) == 1:
        return None
    mine, _ = dist.new_subgroups_by_enumeration(groups)
    return mine
