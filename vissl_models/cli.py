"""``vissl-models`` command line.

    vissl-models                                   summary of the default model (SwAV ResNet-50)
    vissl-models summary CONFIG [KEY=VALUE ...]    summary of any config, optionally --weights FILE
    vissl-models extract CONFIG --images DIR_OR_LIST --out FILE.npz|.pt [--weights W] [--layers res4,res5avg]
                                                   trunk features of images ([KEY=VALUE ...] overrides)
    vissl-models convert IN OUT --to {torchvision,timm,vissl} [--arch NAME]
                                                   convert weights between VISSL and torchvision/timm
    vissl-models zoo [--method M] [--arch A] [--json]
                                                   the original model zoo: checkpoints, configs, top-1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence

import torch

DEFAULT_CONFIG = "swav_resnet50.yaml"
# The default run: SwAV multi-crop, 2 global 224px crops and 6 local 96px crops.
DEFAULT_CROPS = "2x224,6x96"


def resolve_config(name: str) -> str:
    """A config path, or the name of a config shipped with the package (``swav_resnet50``)."""
    if os.path.isfile(name):
        return name
    shipped = resources.files("vissl_models.configs")
    for candidate in (name, f"{name}.yaml"):
        path = shipped.joinpath(candidate)
        if path.is_file():
            return str(path)
    available = sorted(p.name for p in shipped.iterdir() if p.name.endswith(".yaml"))
    raise FileNotFoundError(f"config {name!r} is neither a file nor a shipped config; shipped: {available}")


def _parse_shape(text: str) -> List[int]:
    try:
        return [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; expected e.g. 2x3x224x224") from None


def parse_crops(text: str, channels: int = 3) -> List[torch.Tensor]:
    """``"2x224,6x96"`` -> 2 crops of 224px then 6 of 96px, each a batch of one image."""
    crops: List[torch.Tensor] = []
    for part in text.split(","):
        count, size = _parse_shape(part)
        crops += [torch.randn(1, channels, size, size) for _ in range(count)]
    return crops


# Trunks whose config section fixes the input size, and trunks trained at another size.
_SIZE_SECTIONS = {"vision_transformer": "VISION_TRANSFORMERS", "classy_vit": "VISION_TRANSFORMERS",
                  "convit": "VISION_TRANSFORMERS", "xcit": "XCIT", "swin_transformer": "SWIN_TRANSFORMER",
                  "beit": "BEIT"}


def default_image_size(model_cfg) -> int:
    """The input size a trunk was trained at: its section's IMAGE_SIZE, 227 for AlexNets, else 224."""
    name = model_cfg.TRUNK.NAME
    for prefix, section in _SIZE_SECTIONS.items():
        if name.startswith(prefix):
            return int(model_cfg.TRUNK[section].IMAGE_SIZE)
    return 227 if name.startswith("alexnet") else 224


def synthetic_input(model, crops: Optional[str], inputs: Sequence[str], size: Optional[int] = None) -> Any:
    """An input of the right kind for ``model``: tensor, list of crops, or dict of inputs."""
    cfg = model.model_config
    if inputs:
        out: Dict[str, torch.Tensor] = {}
        for item in inputs:
            key, _, shape = item.partition("=")
            if not shape:
                raise SystemExit(f"--input {item!r}: expected KEY=SHAPE (e.g. images=2x3x224x224)")
            out[key] = torch.randn(_parse_shape(shape))
        return out if model.multi_input_mapping else out[next(iter(out))]
    size = size or default_image_size(cfg)
    if model.multi_input_mapping:
        out = {}
        for key, head_idx in zip(model.multi_input_mapping.input_keys, model.multi_input_mapping.head_index):
            towers = [m.num_towers for m in model.heads[head_idx].modules() if hasattr(m, "num_towers")]
            # A siamese head wants num_towers patches per image (PIRL/Jigsaw use 64px patches).
            out[key] = torch.randn(2 * towers[0], 3, 64, 64) if towers else torch.randn(2, 3, size, size)
        return out
    if crops:
        return parse_crops(crops)
    return torch.randn(2, 3, size, size)


def _shapes(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return "x".join(map(str, out.shape))
    if isinstance(out, dict):
        return {k: _shapes(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [_shapes(v) for v in out]
    return type(out).__name__


def _input_desc(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return "x".join(map(str, x.shape))
    if isinstance(x, dict):
        return ", ".join(f"{k}={_input_desc(v)}" for k, v in x.items())
    sizes = [c.shape[-1] for c in x]
    groups = []
    for s in sizes:
        if groups and groups[-1][1] == s:
            groups[-1][0] += 1
        else:
            groups.append([1, s])
    return "multi-crop " + " + ".join(f"{n}x{s}px" for n, s in groups)


def count_flops(model, x: Any) -> Optional[int]:
    """fvcore FLOP count (one multiply-add = one FLOP, fvcore's convention) for input ``x``."""
    import warnings

    from fvcore.nn import FlopCountAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not actionable here
        analysis = FlopCountAnalysis(model, (x,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())


def summary(config: str, overrides: Sequence[str] = (), weights: Optional[str] = None,
            crops: Optional[str] = None, inputs: Sequence[str] = (), flops: bool = True, out=sys.stdout,
            size: Optional[int] = None) -> int:
    import vissl_models
    from vissl_models.checkpoint import load_checkpoint, load_module_state

    path = resolve_config(config)
    cfg = vissl_models.load_config(path, overrides)
    t0 = time.time()
    model = vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER).eval()
    build_s = time.time() - t0
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"config     {path}", file=out)
    print(f"trunk      {cfg.MODEL.TRUNK.NAME} ({type(model.trunk).__name__}), "
          f"{sum(p.numel() for p in model.trunk.parameters()):,} parameters", file=out)
    for i, name in enumerate(model.head_names):
        print(f"head {i}     {name}, {sum(p.numel() for p in model.heads[i].parameters()):,} parameters", file=out)
    print(f"parameters {params:,} ({trainable:,} trainable); built in {build_s:.1f}s", file=out)
    if weights:
        ckpt = load_checkpoint(weights)
        trunk_report = load_module_state(model.trunk, ckpt.trunk, "trunk", strict=False)
        heads_report = load_module_state(model.heads, ckpt.heads, "heads", strict=False)
        print(f"weights    {ckpt.describe()}", file=out)
        for label, rep, module in (("trunk", trunk_report, model.trunk), ("heads", heads_report, model.heads)):
            total = len(module.state_dict())
            print(f"  {label}: {len(rep.loaded)}/{total} keys loaded{rep.details()}", file=out)
    x = synthetic_input(model, crops, inputs, size)
    with torch.no_grad():
        t0 = time.time()
        y = model(x)
        fwd_s = time.time() - t0
    print(f"input      {_input_desc(x)}", file=out)
    print(f"outputs    {_shapes(y)} (forward {fwd_s:.2f}s)", file=out)
    if flops:
        with torch.no_grad():
            print(f"flops      {count_flops(model, x) / 1e9:.2f} GFLOPs for this input (fvcore)", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vissl-models", description="VISSL model layer: build, inspect, load checkpoints.")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("summary", help="build a model from a config and report its shape, size and outputs")
    s.add_argument("config", help="YAML config path, or a shipped config name (e.g. swav_resnet50)")
    # Overrides (KEY=VALUE) may come anywhere after CONFIG; parse_args collects them.
    s.add_argument("--weights", help="checkpoint to load; reports key coverage")
    s.add_argument("--crops", help="multi-crop input, e.g. 2x224,6x96 (count x size)")
    s.add_argument("--input", action="append", default=[], dest="inputs",
                   help="KEY=SHAPE for multi-input models (repeatable), e.g. images=2x3x224x224")
    s.add_argument("--size", type=int, help="input image size (default: what the trunk was trained at)")
    s.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    from .checkpoint.convert import add_convert_parser
    from .extract import add_extract_parser
    from .zoo import add_zoo_parser

    add_convert_parser(sub)
    add_extract_parser(sub)
    add_zoo_parser(sub)
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv``; KEY=VALUE words after the config become ``overrides``, anywhere among options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [w for w in extra if w.startswith("-") or "=" not in w or args.command == "zoo"]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = extra
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.command is None:
            return summary(DEFAULT_CONFIG, crops=DEFAULT_CROPS)
        if args.command == "summary":
            return summary(args.config, args.overrides, args.weights, args.crops, args.inputs, not args.no_flops,
                           size=args.size)
        if args.command == "convert":
            from .checkpoint.convert import run_convert

            return run_convert(args)
        if args.command == "extract":
            from .extract import run_extract

            return run_extract(args)
        if args.command == "zoo":
            from .zoo import run_zoo

            return run_zoo(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"vissl-models: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
