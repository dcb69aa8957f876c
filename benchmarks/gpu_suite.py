"""The GPU targets of ``shared/DESIGN.md``, each beside its plain-PyTorch twin in the same run.

| case | twin | target (H200, bf16, batch 64/crop) |
| SwAV RN50 2x224+6x96, bf16 + channels_last (eager, then compiled) | torchvision resnet50 + same head | >= 10,700 img/s |
| DINO ViT-S/16 2x224+10x96, bf16, torch.compile | timm vit_small_patch16_224 (SDPA) + compile | >= 23,800 img/s |
| RN50 224, batch 256, bf16, torch.compile | torchvision resnet50 + compile | >= 6,850 img/s |

Prints images/s of ours and the twin, the ratio ``ours / twin`` of step times (below 1: ours is
faster) and whether the target is met. Without CUDA (or with ``--tiny``) it runs a tiny version
on CPU (small models, 64/32 px, batch 2, fp32, no compile) so the script cannot rot.

    python benchmarks/gpu_suite.py                        # on a GPU machine: the real table
    python benchmarks/gpu_suite.py --tiny                 # anywhere, seconds
    python benchmarks/gpu_suite.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import multicrop as mc  # noqa: E402

TINY_SWAV_HEAD = ["swav_head", {"dims": [512, 64, 16], "use_bn": True, "num_clusters": [32]}]
TINY_VIT = {**mc.VIT_S16, "NUM_LAYERS": 2}
TINY_DINO_HEAD = ["dino_head", {"in_dim": 384, "num_clusters": [64], "hidden_dim": 64, "bottleneck_dim": 32,
                                "normalize_last_layer": False}]


def cases(tiny: bool):
    """(name, builder, twin name, crops, batch per crop, channels_last, compile, target img/s)."""
    if tiny:
        return [
            ("SwAV RN18 multi-crop (tiny)", lambda: mc.swav_models(TINY_SWAV_HEAD, depth=18), "torchvision",
             [(2, 64), (2, 32)], 2, True, False, None),
            ("DINO ViT-S/16 2 layers multi-crop (tiny)", lambda: mc.dino_models(TINY_VIT, TINY_DINO_HEAD), "timm",
             [(2, 64), (2, 32)], 2, False, False, None),
            ("RN50 64px (tiny)", mc.rn50_models, "torchvision", [(1, 64)], 2, True, False, None),
        ]
    return [
        ("SwAV RN50 2x224+6x96 bf16 channels_last", mc.swav_models, "torchvision", [(2, 224), (6, 96)], 64,
         True, False, 10700),
        ("SwAV RN50 2x224+6x96 bf16 channels_last compiled", mc.swav_models, "torchvision", [(2, 224), (6, 96)], 64,
         True, True, 10700),
        ("DINO ViT-S/16 2x224+10x96 bf16 compiled", mc.dino_models, "timm", [(2, 224), (10, 96)], 64,
         False, True, 23800),
        ("RN50 224 batch 256 bf16 compiled", mc.rn50_models, "torchvision", [(1, 224)], 256, True, True, 6850),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU version (default without CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 15; tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; tiny: 1)")
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda")
    dtype = None if tiny else torch.bfloat16
    iters = args.iters or (2 if tiny else 15)
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 5)
    if not tiny:
        torch.backends.cudnn.benchmark = True
    results = []
    for name, build, twin_name, crops, batch, channels_last, compile_, target in cases(tiny):
        if args.only and args.only not in name:
            continue
        ours, twin = build()
        if len(crops) == 1 and crops[0][0] == 1:
            inputs = mc.make_crops(crops, batch, device, channels_last)[0]  # one plain tensor
        else:
            inputs = mc.make_crops(crops, batch, device, channels_last)
        images = batch * sum(n for n, _ in crops)
        res = mc.compare(name, ours, twin, twin_name, inputs, images, device, dtype, channels_last, compile_,
                         iters, warmup)
        res["target_img_per_s"] = target
        if target:
            met = res["img_per_s"]["ours"] >= target
            print(f"  target {target:,} img/s: {'met' if met else 'NOT met'}")
            res["target_met"] = met
        results.append(res)
        del ours, twin
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": torch.cuda.get_device_name() if not tiny else "cpu (tiny)",
                       "torch": torch.__version__, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
