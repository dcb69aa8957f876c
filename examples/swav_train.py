"""SwAV pre-training loop on synthetic data: multi-crop, Sinkhorn codes, prototypes frozen at first.

    torchrun --nproc_per_node 2 examples/swav_train.py --out /tmp/swav/checkpoint.torch
    vissl-models summary /tmp/swav/checkpoint.yaml --weights /tmp/swav/checkpoint.torch

Builds ``configs/swav_resnet50.yaml`` (shrunk by default to a ResNet-18 and a small head so a CPU
run takes seconds; ``--full`` keeps the shipped sizes), wraps it in DDP, takes the optimizer
parameter groups and mixed precision from the config, and freezes the prototypes for the first
iterations through ``MODEL.TEMP_FROZEN_PARAMS_ITER_MAP``. The loss lives here, not in the library.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import vissl_models  # noqa: E402
from vissl_models.training import TempFrozenParams  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "swav_resnet50.yaml")
SMALL = [
    "config.MODEL.TRUNK.RESNETS.DEPTH=18",
    'config.MODEL.HEAD.PARAMS=[["swav_head", {"dims": [512, 128, 32], "use_bn": true, "num_clusters": [64]}]]',
]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Equal-partition soft codes for ``scores`` (batch x prototypes), over all ranks' batches."""
    q = torch.exp(scores.float() / epsilon).t()  # prototypes x batch
    world = dist.get_world_size()
    total = q.sum()
    dist.all_reduce(total)
    q /= total
    k, b = q.shape[0], q.shape[1] * world
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        dist.all_reduce(rows)
        q /= rows * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).t()


def swav_loss(scores: torch.Tensor, batch: int, num_crops: int, temperature: float = 0.1,
              epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Swapped prediction: the codes of each of the two global crops predicted from every other crop."""
    loss = scores.new_zeros((), dtype=torch.float32)
    for crop in (0, 1):
        codes = sinkhorn(scores[batch * crop: batch * (crop + 1)].detach(), epsilon, iterations)
        sub = 0.0
        for v in range(num_crops):
            if v != crop:
                logp = F.log_softmax(scores[batch * v: batch * (v + 1)].float() / temperature, dim=1)
                sub = sub - (codes * logp).sum(dim=1).mean()
        loss = loss + sub / (num_crops - 1)
    return loss / 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. config.MODEL.TRUNK.RESNETS.DEPTH=50")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--full", action="store_true", help="keep the config's sizes (no CPU shrinking)")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8, help="images per rank")
    parser.add_argument("--crops", default="2x64,4x32", help="multi-crop views, e.g. 2x224,6x96")
    parser.add_argument("--freeze-prototypes-iters", type=int, default=2,
                        help="replaces the iteration counts of TEMP_FROZEN_PARAMS_ITER_MAP (-1: as configured)")
    parser.add_argument("--amp", default="config", choices=["config", "off", "bfloat16", "float16"],
                        help="autocast dtype; config: MODEL.AMP_PARAMS (on CPU its float16 runs in fp32)")
    parser.add_argument("--lr", type=float, default=None, help="default: the config's starting LR")
    parser.add_argument("--out", default="swav_checkpoint/checkpoint.torch")
    args = parser.parse_args(argv)

    rank, world, device = common.setup_distributed()
    try:
        cfg = vissl_models.load_config(args.config, ([] if args.full else SMALL) + list(args.overrides))
        if args.freeze_prototypes_iters >= 0:
            cfg.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP = [[name, args.freeze_prototypes_iters]
                                                     for name, _ in cfg.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP]
        torch.manual_seed(0)  # same initial weights on every rank
        model = vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER).to(device).train()
        groups = model.get_optimizer_param_groups({"lr": args.lr} if args.lr else None)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        frozen = TempFrozenParams.from_config(ddp, cfg.MODEL)
        opt = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=cfg.OPTIMIZER.momentum,
                              nesterov=cfg.OPTIMIZER.nesterov)

        dtype = common.amp_dtype(args.amp, cfg.MODEL, device)
        amp = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        crops = common.parse_crops(args.crops)
        num_crops = sum(n for n, _ in crops)
        gen = torch.Generator().manual_seed(100 + rank)
        prototypes = model.heads[0].prototypes0.weight
        start = time.time()
        for it in range(args.iters):
            views = common.synthetic_crops(crops, args.batch, device, gen)
            with amp:
                [[_, scores]] = ddp(views)
            loss = swav_loss(scores, args.batch, num_crops)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            frozen.clear_grads(it)  # after backward (DDP has reduced the grads), before the step
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():  # SwAV keeps the prototypes on the unit sphere
                prototypes.copy_(F.normalize(prototypes, dim=1))
            if rank == 0:
                print(f"iter {it}: loss {loss.item():.4f}, prototypes frozen: {bool(frozen.frozen_names(it))}",
                      flush=True)
        state = common.full_classy_state(ddp)
        if rank == 0:
            command = common.save_checkpoint(args.out, cfg, state, args.iters)
            print(f"{args.iters} iterations on {world} process(es) in {time.time() - start:.1f}s; "
                  f"autocast {dtype}; checkpoint {args.out}\ncheck it: {command}", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
