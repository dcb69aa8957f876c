"""Our ResNet-50 trunk against torchvision's resnet50, in the same run.

Forward + backward on random input, the two models interleaved round by round so that machine
noise hits both alike; prints the median time of each and the ratio ours / torchvision.

    python benchmarks/bench_resnet50.py                      # CPU, batch 8, 224px (the acceptance case)
    python benchmarks/bench_resnet50.py --device cuda --batch 256 --amp --channels-last --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import vissl_models


def build(which: str, device: str, channels_last: bool, compile_: bool):
    torch.manual_seed(0)
    if which == "torchvision":
        model = torchvision.models.resnet50()
        model.fc = torch.nn.Identity()  # compare trunks: both end at the pooled 2048-d feature
    else:
        cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "resnet", "RESNETS": {"DEPTH": 50}}}}).MODEL
        model = vissl_models.get_model_trunk("resnet")(cfg, "resnet")
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_ else model


def step(model, x, amp: bool, device: str) -> None:
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    out = out[0] if isinstance(out, list) else out
    out.float().sum().backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = p.parse_args()

    device = args.device
    models = {name: build(name, device, args.channels_last, args.compile) for name in ("torchvision", "vissl_models")}
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = {name: [] for name in models}
    for r in range(args.warmup + args.rounds):
        for name, model in models.items():
            sync()
            t0 = time.perf_counter()
            step(model, x, args.amp, device)
            sync()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    desc = f"device={device} batch={args.batch} size={args.size} amp={args.amp} " \
           f"channels_last={args.channels_last} compile={args.compile} threads={torch.get_num_threads()}"
    print(f"resnet50 forward+backward, {desc}")
    for name, m in med.items():
        print(f"  {name:<13} {m * 1000:9.1f} ms/step  {args.batch / m:9.1f} img/s")
    print(f"time ratio vissl_models / torchvision: {med['vissl_models'] / med['torchvision']:.3f} (below 1: ours is faster)")


if __name__ == "__main__":
    main()
