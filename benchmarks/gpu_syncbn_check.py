"""SyncBatchNorm numerics on GPUs (PyTorch has no CPU SyncBatchNorm), per MODEL.SYNC_BN_CONFIG.GROUP_SIZE.

Run: ``torchrun --nproc_per_node N benchmarks/gpu_syncbn_check.py [--group-size G]``; with one
GPU, ``python benchmarks/gpu_syncbn_check.py --world 2`` forks 2 ranks sharing it over gloo.

Each rank converts the same tiny RegNet + SwAV head with ``model.convert_sync_batchnorm()``, runs
a forward/backward in train mode on its part of a batch, and compares against a plain model run,
in one process, on the concatenated batch of the ranks in its SyncBN group: outputs, input
gradients and running statistics must match (fp32, 1e-4). Prints one line per rank and exits
non-zero on a mismatch.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import vissl_models  # noqa: E402
from vissl_models.distributed import sync_bn_group_ranks  # noqa: E402

REGNET = {"NAME": "regnet_fsdp", "REGNET": {"depth": 5, "w_0": 8, "w_a": 8, "w_m": 1.6, "group_width": 8,
                                             "stem_width": 8}}
SWAV = ["swav_head", {"dims": [32, 16], "use_bn": True, "num_clusters": [5]}]


def build(group_size: int):
    torch.manual_seed(0)
    cfg = vissl_models.load_config({"MODEL": {
        "TRUNK": REGNET, "HEAD": {"PARAMS": [SWAV]},
        "SYNC_BN_CONFIG": {"CONVERT_BN_TO_SYNC_BN": True, "GROUP_SIZE": group_size}}}).MODEL
    return vissl_models.build_model(cfg)


def local_batch(rank: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + rank)
    return torch.randn(4, 3, 32, 32, generator=g).to(device)


def check(rank: int, world: int, group_size: int, local: int) -> bool:
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    model = build(group_size).to(device)
    os.environ["LOCAL_WORLD_SIZE"] = str(local)
    model.convert_sync_batchnorm()
    ref = build(group_size).to(device)
    model.train(), ref.train()
    x = local_batch(rank, device).requires_grad_(True)
    out = model(x)[0]
    outs = out if isinstance(out, (list, tuple)) else [out]
    sum(o.sum() for o in outs).backward()

    group = next(g for g in sync_bn_group_ranks(world, group_size, local) if rank in g)
    xs = [local_batch(r, device).requires_grad_(True) for r in group]
    ref_out = ref(torch.cat(xs))[0]
    ref_outs = ref_out if isinstance(ref_out, (list, tuple)) else [ref_out]
    # SyncBN averages nothing in backward across ranks for the input grad: each rank's loss is its own
    # sum, and the reference sums the group's losses, so input gradients compare one to one.
    sum(o.sum() for o in ref_outs).backward()
    me = group.index(rank)
    n = x.shape[0]
    ok = True
    for a, b in zip(outs, ref_outs):
        ok &= torch.allclose(a, b[me * n:(me + 1) * n], atol=1e-4, rtol=1e-4)
    ok &= torch.allclose(x.grad, xs[me].grad, atol=1e-4, rtol=1e-4)
    stats = [(m.running_mean, m.running_var) for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    ref_stats = [(m.running_mean, m.running_var) for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for (am, av), (bm, bv) in zip(stats, ref_stats):
        ok &= torch.allclose(am, bm, atol=1e-4, rtol=1e-4) and torch.allclose(av, bv, atol=1e-4, rtol=1e-4)
    print(f"rank {rank}/{world} GROUP_SIZE {group_size} group {group}: {'ok' if ok else 'MISMATCH'}", flush=True)
    return bool(ok)


def _worker(rank: int, world: int, group_size: int, local: int, store_dir: str) -> None:
    store = dist.FileStore(os.path.join(store_dir, "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        if not check(rank, world, group_size, local):
            raise SystemExit(1)
    finally:
        dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=None, help="GROUP_SIZE (default: each of -1, 0, 1)")
    parser.add_argument("--world", type=int, default=2, help="ranks to fork when not under torchrun")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_syncbn_check: no CUDA device; SyncBatchNorm has no CPU implementation. Nothing checked.")
        return 0
    sizes = [args.group_size] if args.group_size is not None else [-1, 0, 1]
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if torch.cuda.device_count() >= int(os.environ["WORLD_SIZE"]) else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        ok = all([check(rank, world, g, local) for g in sizes])
        dist.destroy_process_group()
        return 0 if ok else 1
    import tempfile

    import torch.multiprocessing as mp

    for g in sizes:
        with tempfile.TemporaryDirectory() as d:
            # Pretend two machines of world/2 ranks so -1 differs from 0.
            mp.spawn(_worker, args=(args.world, g, max(1, args.world // 2), d), nprocs=args.world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
