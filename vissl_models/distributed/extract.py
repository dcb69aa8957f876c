"""Feature extraction over several processes (``torchrun --nproc_per_node N -m vissl_models extract ...``).

The image list is cut into shards of whole batches (``SHARD_BATCHES`` batches each, independent of
the number of ranks); shard ``i`` goes to rank ``i % world``, which decodes its images in
DataLoader workers and writes the shard's features atomically to ``OUT.shards/``. Rank 0 then
stitches the shards in the original image order, so the output is the one a single process
writes (the same batches, hence the same numbers). A rerun of the same command skips the shards
already written (each carries a fingerprint of the command and its images); the shard folder is
removed once the output is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import timedelta
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

SHARD_BATCHES = 16
# Ranks wait for the slowest one before rank 0 stitches the shards.
BARRIER_TIMEOUT = timedelta(hours=24)


def distributed_world() -> int:
    """The number of ranks this process runs among (torchrun's ``WORLD_SIZE``, or an initialised group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def shard_bounds(n_images: int, batch_size: int, shard_batches: Optional[int] = None) -> List[range]:
    """Consecutive index ranges of ``shard_batches`` (default ``SHARD_BATCHES``) whole batches each
    (the last may be shorter)."""
    size = batch_size * (SHARD_BATCHES if shard_batches is None else shard_batches)
    return [range(start, min(start + size, n_images)) for start in range(0, n_images, size)]


def fingerprint(settings: Mapping[str, Any], paths: Sequence[str]) -> str:
    """A digest of what decides a shard's content: the command's settings and its image paths."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for p in paths:
        h.update(b"\0" + os.fspath(p).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def command_settings(args: Any) -> Dict[str, Any]:
    """The extract command's arguments that change features, plus the weights file's identity."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in ("no_progress", "num_workers", "out")}
    weights = settings.get("weights")
    if weights and os.path.isfile(weights):
        st = os.stat(weights)
        settings["weights_identity"] = (os.path.abspath(weights), st.st_size, st.st_mtime_ns)
    return settings


def shard_dir(out_path: str) -> str:
    return os.fspath(out_path) + ".shards"


def _shard_file(folder: str, i: int, n: int) -> str:
    return os.path.join(folder, f"shard-{i:05d}-of-{n:05d}.pt")


def _read_shard(path: str, digest: str) -> Optional[Dict[str, Any]]:
    """A shard written by this command (same fingerprint), or None (absent, stale or unreadable)."""
    if not os.path.isfile(path):
        return None
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged shard is simply redone
        return None
    return shard if isinstance(shard, dict) and shard.get("fingerprint") == digest else None


def _init_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo whatever the device: the only collective is a barrier.
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index means this rank's GPU (``LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def run_distributed_extraction(out_path: str, settings: Mapping[str, Any], model: torch.nn.Module,
                               paths: Sequence[str], names: Sequence[str], features_of: Callable,
                               transform: Callable, device: torch.device, batch_size: int = 32,
                               num_workers: int = 0, progress: bool = True, keep_shape: bool = False,
                               load_report: Any = None):
    """Extract this rank's shards, then on rank 0 return the whole ``ExtractResult`` in image order
    (other ranks return ``None``). Images are decoded in at least one DataLoader worker. Every rank
    must call it with the same arguments."""
    import torch.distributed as dist

    from ..extract.features import ExtractResult, run_extraction
    from ..fileio import atomic_write

    _init_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    folder = shard_dir(out_path)
    bounds = shard_bounds(len(paths), batch_size)
    digests = [fingerprint(settings, [paths[i] for i in b]) for b in bounds]
    if rank == 0:
        os.makedirs(folder, exist_ok=True)
    dist.barrier()
    device = local_device(device)
    for i in range(rank, len(bounds), world):
        target = _shard_file(folder, i, len(bounds))
        if _read_shard(target, digests[i]) is not None:
            continue
        part = run_extraction(model, paths, names, features_of, transform, device, batch_size,
                              max(1, num_workers), progress, keep_shape, load_report, indices=bounds[i])
        read, skipped = _indices_of(part, paths, bounds[i])
        with atomic_write(target) as f:
            torch.save({"fingerprint": digests[i], "read": read, "skipped": skipped,
                        "features": {n: torch.from_numpy(a) for n, a in part.features.items()}}, f)
    dist.barrier()
    if rank != 0:
        return None
    chunks: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    read_all: List[int] = []
    skipped_all: List[tuple] = []
    for i in range(len(bounds)):
        shard = _read_shard(_shard_file(folder, i, len(bounds)), digests[i])
        if shard is None:
            raise FileNotFoundError(f"extract: shard {i} of {len(bounds)} is missing or stale in {folder} after every "
                               "rank finished; run the command again")
        read_all += shard["read"]
        skipped_all += [(paths[j], err) for j, err in shard["skipped"]]
        for n in names:
            if len(shard["read"]):
                chunks[n].append(shard["features"][n].numpy())
    features = {n: (np.concatenate(c) if c else np.zeros((0,), dtype=np.float32)) for n, c in chunks.items()}
    return ExtractResult(features, [paths[j] for j in read_all], skipped_all, load_report)


def _indices_of(part: Any, paths: Sequence[str], indices: range):
    """Image indices of a shard's read and skipped entries (both in image order; paths may repeat)."""
    read: List[int] = []
    skipped: List[tuple] = []
    r = s = 0
    for j in indices:
        if s < len(part.skipped) and part.skipped[s][0] == paths[j] and (
            r >= len(part.paths) or part.paths[r] != paths[j]
        ):
            skipped.append((j, part.skipped[s][1]))
            s += 1
        elif r < len(part.paths) and part.paths[r] == paths[j]:
            read.append(j)
            r += 1
    return read, skipped


def remove_shards(out_path: str) -> None:
    """Delete ``OUT.shards/`` once ``OUT`` is written."""
    shutil.rmtree(shard_dir(out_path), ignore_errors=True)
