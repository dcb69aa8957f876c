"""Multi-crop training steps against the plain twins, in the same run (not a test).

SwAV ResNet-50 (2x224 + 6x96) against torchvision ``resnet50`` with the same SwAV head, and DINO
DeiT-S/16 (2x224 + 10x96) against timm ``vit_small_patch16_224`` (dynamic image size) with the same
DINO head. Each step is forward + backward + SGD; the models alternate step by step and the median
is kept. Prints ms/step, images/s and ``ours / twin`` (below 1: ours is faster).

    python benchmarks/bench_multicrop.py --threads 2                 # CPU, batch 2 per crop
    python benchmarks/bench_multicrop.py --device cuda --batch 64 --amp --channels-last
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import multicrop as mc  # noqa: E402

CASES = {
    "swav": ("SwAV RN50 multi-crop", "2x224,6x96", mc.swav_models, "torchvision"),
    "dino": ("DINO DeiT-S/16 multi-crop", "2x224,10x96", mc.dino_models, "timm"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--crops", default=None, help="override the case's crops, e.g. 2x96,2x64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2, help="images per crop")
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for key in CASES if args.case == "all" else [args.case]:
        title, crops_text, build, twin_name = CASES[key]
        crops = mc.parse_crops(args.crops or crops_text)
        ours, twin = build()
        inputs = mc.make_crops(crops, args.batch, device, args.channels_last)
        images = args.batch * sum(n for n, _ in crops)
        mc.compare(f"{title} {args.crops or crops_text}, batch {args.batch}/crop", ours, twin, twin_name, inputs,
                   images, device, torch.bfloat16 if args.amp else None, args.channels_last, args.compile,
                   args.iters, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
