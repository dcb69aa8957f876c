"""Shared pieces for the multi-crop benchmarks: our models, their torchvision/timm twins, timing.

A twin runs the same multi-crop path as ``BaseSSLMultiInputOutputModel`` (one trunk pass per run
of equal-size crops, features concatenated in crop order, the head once) with the plain library's
trunk and a copy of *our* head, so the comparison isolates the trunk and the model plumbing.
"""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import vissl_models

Crops = Sequence[Tuple[int, int]]  # (number of crops, size)

SWAV_HEAD = ["swav_head", {"dims": [2048, 2048, 128], "use_bn": True, "num_clusters": [3000]}]
DINO_HEAD = ["dino_head", {"in_dim": 384, "num_clusters": [65536], "normalize_last_layer": False}]
VIT_S16 = {"IMAGE_SIZE": 224, "PATCH_SIZE": 16, "NUM_LAYERS": 12, "NUM_HEADS": 6, "HIDDEN_DIM": 384,
           "MLP_DIM": 1536, "QKV_BIAS": True, "DROP_PATH_RATE": 0.1}


def parse_crops(text: str) -> List[Tuple[int, int]]:
    """``"2x224,6x96"`` -> ``[(2, 224), (6, 96)]``."""
    return [(int(n), int(s)) for n, s in (part.split("x") for part in text.split(","))]


class Twin(nn.Module):
    """A plain trunk (pooled feature per image) + a head, on the multi-crop path of the original."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, crops: List[torch.Tensor]):
        feats, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.trunk(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(feats))


def swav_models(head=SWAV_HEAD, depth: int = 50) -> Tuple[nn.Module, nn.Module]:
    """(ours: SwAV ResNet, twin: torchvision ResNet + the same head)."""
    import torchvision

    cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "resnet", "RESNETS": {"DEPTH": depth}},
                                              "HEAD": {"PARAMS": [head]}}})
    torch.manual_seed(0)
    ours = vissl_models.build_model(cfg.MODEL)
    tv = getattr(torchvision.models, f"resnet{depth}")()
    tv.fc = nn.Identity()
    return ours, Twin(tv, copy.deepcopy(ours.heads[0]))


def dino_models(vit=VIT_S16, head=DINO_HEAD) -> Tuple[nn.Module, nn.Module]:
    """(ours: DINO ViT, twin: timm ``vit_small_patch16_224`` with dynamic image size + the same head)."""
    try:
        import timm
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError('the DINO twin needs timm: pip install "vissl_models[timm]"') from e
    cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": vit},
                                              "HEAD": {"PARAMS": [head]}}})
    torch.manual_seed(0)
    ours = vissl_models.build_model(cfg.MODEL)
    twin_trunk = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True, img_size=vit["IMAGE_SIZE"],
        patch_size=vit["PATCH_SIZE"], embed_dim=vit["HIDDEN_DIM"], depth=vit["NUM_LAYERS"],
        num_heads=vit["NUM_HEADS"], mlp_ratio=vit["MLP_DIM"] / vit["HIDDEN_DIM"], qkv_bias=vit["QKV_BIAS"],
        drop_path_rate=vit["DROP_PATH_RATE"])
    return ours, Twin(twin_trunk, copy.deepcopy(ours.heads[0]))


def rn50_models(num_classes: int = 1000) -> Tuple[nn.Module, nn.Module]:
    """(ours: supervised ResNet-50 = trunk + linear head, twin: torchvision resnet50)."""
    import torchvision

    cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "resnet", "RESNETS": {"DEPTH": 50}},
                                              "HEAD": {"PARAMS": [["mlp", {"dims": [2048, num_classes]}]]}}})
    torch.manual_seed(0)
    return vissl_models.build_model(cfg.MODEL), torchvision.models.resnet50(num_classes=num_classes)


def last_tensor(out):
    while isinstance(out, (list, tuple)):
        out = out[-1]
    return out


def make_step(model: nn.Module, inputs, dtype: Optional[torch.dtype], device: torch.device) -> Callable[[], None]:
    """One fwd + bwd + SGD step of ``model`` on ``inputs`` (autocast to ``dtype`` when given)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            out = last_tensor(model(inputs))
        out.float().square().mean().backward()
        opt.step()

    return step


def time_interleaved(steps: Dict[str, Callable[[], None]], iters: int, warmup: int,
                     device: torch.device) -> Dict[str, float]:
    """Median seconds per step of each callable, the callables alternating step by step."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def prepare(model: nn.Module, device: torch.device, channels_last: bool, compile_: bool) -> nn.Module:
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_ else model


def make_crops(crops: Crops, batch: int, device: torch.device, channels_last: bool) -> List[torch.Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [torch.randn(batch, 3, s, s, device=device).contiguous(memory_format=fmt)
            for n, s in crops for _ in range(n)]


def compare(name: str, ours: nn.Module, twin: nn.Module, twin_name: str, inputs, images: int, device: torch.device,
            dtype: Optional[torch.dtype], channels_last: bool, compile_: bool, iters: int, warmup: int) -> Dict:
    """Time ours against its twin; returns and prints medians, images/s and the ratio."""
    models = {"ours": prepare(ours, device, channels_last, compile_),
              twin_name: prepare(twin, device, channels_last, compile_)}
    steps = {k: make_step(m, inputs, dtype, device) for k, m in models.items()}
    med = time_interleaved(steps, iters, warmup, device)
    ratio = med["ours"] / med[twin_name]
    setting = (f"{device.type}, {str(dtype)[6:] if dtype else 'fp32'}"
               f"{', channels_last' if channels_last else ''}{', compiled' if compile_ else ''}")
    print(f"{name} ({setting}; median of {iters} interleaved fwd+bwd+SGD steps)")
    for k, v in med.items():
        print(f"  {k:12s} {v * 1e3:9.1f} ms/step  {images / v:9.1f} img/s")
    print(f"  step time ours / {twin_name}: {ratio:.3f} (below 1: ours is faster)")
    return {"case": name, "ms": {k: v * 1e3 for k, v in med.items()},
            "img_per_s": {k: images / v for k, v in med.items()}, "ratio": ratio}
