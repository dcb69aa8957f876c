"""DINO pre-training loop on synthetic data: FSDP2-sharded student, EMA teacher, bf16 autocast.

    torchrun --nproc_per_node 2 examples/dino_train.py --out /tmp/dino/checkpoint.torch
    vissl-models summary /tmp/dino/checkpoint.yaml --weights /tmp/dino/checkpoint.torch

Builds ``configs/dino_deit_s16.yaml`` (shrunk by default to a 2-layer, 96-wide ViT and a small
head so a CPU run takes seconds; ``--full`` keeps DeiT-S/16 and the 65536-prototype head), shards
student and teacher with FSDP2 (``vissl_models.distributed.shard_model`` when the library has it,
else ``fully_shard`` at each block and head), runs the student under bf16 autocast, updates the
teacher with the cosine momentum schedule and freezes the last layer for the first iterations
(``TEMP_FROZEN_PARAMS_ITER_MAP``). Saves the student (``--out``) and the teacher
(``..._teacher.torch``), full tensors in the VISSL layout. The loss lives here, not in the library.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import vissl_models  # noqa: E402
from vissl_models.training import MomentumTeacher, TempFrozenParams, get_optimizer_param_groups  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "dino_deit_s16.yaml")
_VIT = "config.MODEL.TRUNK.VISION_TRANSFORMERS."
SMALL = [
    _VIT + "NUM_LAYERS=2", _VIT + "HIDDEN_DIM=96", _VIT + "NUM_HEADS=3", _VIT + "MLP_DIM=192",
    'config.MODEL.HEAD.PARAMS=[["dino_head", {"in_dim": 96, "num_clusters": [256], "hidden_dim": 256, '
    '"bottleneck_dim": 64, "normalize_last_layer": false}]]',
]


class DINOLoss:
    """Cross-entropy between the centred, sharpened teacher distribution on the global crops and
    the student distribution on every other crop; the centre is an EMA over all ranks' batches."""

    def __init__(self, num_prototypes: int, device, student_temp=0.1, teacher_temp=(0.04, 0.07),
                 warmup_iters=0, center_momentum=0.9):
        self.center = torch.zeros(1, num_prototypes, device=device)
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_iters = warmup_iters
        self.center_momentum = center_momentum

    def temperature(self, iteration: int) -> float:
        low, high = self.teacher_temp
        if iteration >= self.warmup_iters:
            return high
        return low + (high - low) * iteration / max(1, self.warmup_iters - 1)

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, num_crops: int, iteration: int):
        s_chunks = (student.float() / self.student_temp).chunk(num_crops)
        t_probs = F.softmax((teacher.float() - self.center) / self.temperature(iteration), dim=-1).chunk(2)
        total, terms = 0.0, 0
        for i, q in enumerate(t_probs):
            for v, s in enumerate(s_chunks):
                if v != i:
                    total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                    terms += 1
        self._update_center(teacher.float())
        return total / terms

    @torch.no_grad()
    def _update_center(self, teacher: torch.Tensor) -> None:
        batch_center = teacher.sum(dim=0, keepdim=True)
        dist.all_reduce(batch_center)
        batch_center /= teacher.shape[0] * dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. " + _VIT + "NUM_LAYERS=4")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--full", action="store_true", help="keep the config's sizes (no CPU shrinking)")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8, help="images per rank")
    parser.add_argument("--crops", default="2x64,4x32", help="multi-crop views (2 global first), e.g. 2x224,10x96")
    parser.add_argument("--amp", default="bfloat16", choices=["config", "off", "bfloat16", "float16"],
                        help="autocast dtype (config: MODEL.AMP_PARAMS)")
    parser.add_argument("--momentum", type=float, default=0.996, help="LOSS.dino_loss.momentum")
    parser.add_argument("--freeze-last-layer-iters", type=int, default=1,
                        help="replaces the iteration counts of TEMP_FROZEN_PARAMS_ITER_MAP (-1: as configured)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.04)
    parser.add_argument("--clip-grad", type=float, default=3.0)
    parser.add_argument("--out", default="dino_checkpoint/checkpoint.torch")
    args = parser.parse_args(argv)

    rank, world, device = common.setup_distributed()
    try:
        cfg = vissl_models.load_config(args.config, ([] if args.full else SMALL) + list(args.overrides))
        if args.freeze_last_layer_iters >= 0:
            cfg.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP = [[name, args.freeze_last_layer_iters]
                                                     for name, _ in cfg.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP]
        torch.manual_seed(0)  # same initial weights on every rank before sharding
        student = common.shard(vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER).to(device).train())
        teacher = MomentumTeacher.from_config(student, cfg.MODEL, args.momentum, args.iters, shard=common.shard)
        groups = get_optimizer_param_groups(student, cfg.MODEL, {"param_group_constructor": "dino",
                                                                 "weight_decay": args.weight_decay},
                                            {"lr": args.lr})
        opt = torch.optim.AdamW(groups, lr=args.lr)
        frozen = TempFrozenParams.from_config(student, cfg.MODEL)
        dtype = common.amp_dtype(args.amp, cfg.MODEL, device)
        amp = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        crops = common.parse_crops(args.crops)
        num_crops = sum(n for n, _ in crops)
        num_prototypes = cfg.MODEL.HEAD.PARAMS[0][1]["num_clusters"]
        num_prototypes = num_prototypes[0] if isinstance(num_prototypes, (list, tuple)) else num_prototypes
        loss_fn = DINOLoss(num_prototypes, device, warmup_iters=args.iters // 2)
        gen = torch.Generator().manual_seed(100 + rank)
        start = time.time()
        for it in range(args.iters):
            views = common.synthetic_crops(crops, args.batch, device, gen)
            with amp:
                [[teacher_out]] = teacher(views[:2])  # the teacher sees the global crops only
                [[student_out]] = student(views)
            loss = loss_fn(student_out, teacher_out, num_crops, it)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            frozen.clear_grads(it)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.grad is not None], args.clip_grad)
            scaler.step(opt)
            scaler.update()
            m = teacher.update(it)
            if rank == 0:
                print(f"iter {it}: loss {loss.item():.4f}, teacher momentum {m:.5f}, "
                      f"last layer frozen: {bool(frozen.frozen_names(it))}", flush=True)
        student_state = common.full_classy_state(student)  # collectives: every rank calls them
        teacher_state = common.full_classy_state(teacher.teacher)
        if rank == 0:
            command = common.save_checkpoint(args.out, cfg, student_state, args.iters)
            teacher_path = os.path.splitext(args.out)[0] + "_teacher.torch"
            teacher_command = common.save_checkpoint(teacher_path, cfg, teacher_state, args.iters)
            print(f"{args.iters} iterations on {world} process(es) in {time.time() - start:.1f}s; autocast {dtype}; "
                  f"checkpoints {args.out}, {teacher_path}\ncheck them: {command}\n  {teacher_command}", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
