"""Time our ViT-S/16 trunk against timm's ``vit_small_patch16_224`` in the same run (not a test).

Forward + backward of the class-token output on random images, both models in train mode with the
same architecture (12 layers, 6 heads, width 384, qkv bias, stochastic depth 0.1). Prints images per
second for each and the ratio ours / timm.

    python benchmarks/bench_vit.py                      # CPU, small batch
    python benchmarks/bench_vit.py --device cuda --batch 64 --amp --compile
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

import vissl_models

VIT_S16 = {
    "IMAGE_SIZE": 224, "PATCH_SIZE": 16, "NUM_LAYERS": 12, "NUM_HEADS": 6, "HIDDEN_DIM": 384, "MLP_DIM": 1536,
    "QKV_BIAS": True, "DROP_PATH_RATE": 0.1,
}


def build_ours() -> torch.nn.Module:
    cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": VIT_S16}}})
    return vissl_models.get_model_trunk("vision_transformer")(cfg.MODEL, "vision_transformer")


def build_timm() -> torch.nn.Module:
    try:
        import timm
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError('the timm comparison needs timm: pip install "vissl_models[timm]"') from e
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, drop_path_rate=0.1)


def first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def images_per_second(model, x, iters: int, warmup: int, amp: bool, sync) -> float:
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else nullcontext()
    for i in range(warmup + iters):
        if i == warmup:
            sync()
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with autocast:
            out = first(model(x))
        out.float().sum().backward()
    sync()
    return iters * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate the two models this many times and keep each one's best (less noise)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    models = {}
    for name, build in (("ours", build_ours), ("timm", build_timm)):
        torch.manual_seed(0)
        model = build().to(device).train()
        models[name] = torch.compile(model) if args.compile else model
    results = {name: 0.0 for name in models}
    for _ in range(max(1, args.rounds)):
        for name, model in models.items():
            results[name] = max(results[name], images_per_second(model, x, args.iters, args.warmup, args.amp, sync))
    setting = f"batch {args.batch}, {device}, {'bf16' if args.amp else 'fp32'}{', compiled' if args.compile else ''}"
    for name, value in results.items():
        print(f"{name:5s} {value:10.1f} img/s  ({setting})")
    print(f"throughput ratio ours / timm: {results['ours'] / results['timm']:.3f} (above 1: ours is faster)")


if __name__ == "__main__":
    main()
