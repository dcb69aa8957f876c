"""Pieces shared by the example training loops: process group, sharding, checkpoints, fake data."""

from __future__ import annotations

import os
import socket
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
import yaml
from torch import nn


def setup_distributed() -> Tuple[int, int, torch.device]:
    """Join the torchrun job (gloo on CPU, nccl on GPU), or make a one-process group."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def shard(model: nn.Module) -> nn.Module:
    """FSDP2: ``vissl_models.distributed.shard_model`` when the library has it, else ``fully_shard``
    applied by hand at the original's wrap points (each transformer block, each head, the root)."""
    try:
        from vissl_models.distributed import shard_model
    except ImportError:
        shard_model = None
    if shard_model is not None:
        return shard_model(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.get_world_size(),))
    for block in getattr(model.trunk, "blocks", []):
        fully_shard(block, mesh=mesh)
    for head in model.heads:
        fully_shard(head, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def full_classy_state(model: nn.Module) -> Dict:
    """``{"model": {"trunk": ..., "heads": ...}}`` with full CPU tensors (a collective for FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if any(hasattr(p, "to_local") for p in model.parameters()):
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    heads = {k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")}
    return {"model": {"trunk": trunk, "heads": heads}}


def save_checkpoint(path: str, cfg, state: Dict, iteration: int) -> str:
    """Write a VISSL-layout checkpoint and, beside it, the config it was trained with (YAML).

    Returns the ``vissl-models summary`` command that loads it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"classy_state_dict": {"base_model": state}, "iteration": iteration, "phase_idx": 0}, path)
    config_path = os.path.splitext(path)[0] + ".yaml"
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"config": {"MODEL": cfg.MODEL.to_dict()}}, f, sort_keys=False)
    return f"vissl-models summary {config_path} --weights {path}"


def amp_dtype(choice: str, model_config, device: torch.device):
    """The autocast dtype: ``MODEL.AMP_PARAMS`` for ``"config"``, none for ``"off"``, else the one named.

    With ``"config"`` on a CPU, float16 runs in fp32: CPU half-precision autocast is many times
    slower than fp32 on CPUs without native 16-bit matmul units."""
    from vissl_models.training import autocast_dtype

    if choice == "off":
        return None
    if choice != "config":
        return getattr(torch, choice)
    dtype = autocast_dtype(model_config)
    return None if dtype == torch.float16 and device.type == "cpu" else dtype


def parse_crops(text: str) -> List[Tuple[int, int]]:
    """``"2x64,4x32"`` -> ``[(2, 64), (4, 32)]`` (number of crops, size)."""
    out = []
    for part in text.split(","):
        n, _, size = part.partition("x")
        out.append((int(n), int(size)))
    return out


def synthetic_crops(crops: Sequence[Tuple[int, int]], batch: int, device: torch.device,
                    generator: torch.Generator) -> List[torch.Tensor]:
    """Multi-crop views of a fake batch: the crops of one size are noisy resizes of one image batch."""
    base = torch.rand(batch, 3, max(s for _, s in crops), max(s for _, s in crops), generator=generator)
    views = []
    for n, size in crops:
        for _ in range(n):
            v = nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
            views.append((v + 0.1 * torch.randn(v.shape, generator=generator)).to(device))
    return views
