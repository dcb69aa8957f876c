"""``vissl-models extract``: argument parsing and the command itself."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import List, Optional, TextIO, Tuple

from ..argtypes import non_negative_int, positive_int
from .dataset import list_images
from .features import (
    check_device,
    feature_function,
    load_weights,
    preprocessing,
    resolve_model,
    run_extraction,
)
from .transforms import CHANNEL_ORDERS, INTERPOLATIONS, transform_from
from .writer import check_output_path, save_features

RANDOM_WEIGHTS_WARNING = (
    "WARNING: no --weights given: the model has RANDOM weights and these features mean nothing. "
    "Pass --weights CHECKPOINT to extract real features."
)


def _three_floats(text: str) -> Tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated finite numbers (R,G,B), got {text!r}")
    return values  # type: ignore[return-value]


def mean_values(text: str) -> Tuple[float, float, float]:
    """argparse type: the normalization mean, R,G,B."""
    return _three_floats(text)


def std_values(text: str) -> Tuple[float, float, float]:
    """argparse type: the normalization std, R,G,B, each positive (the pixels are divided by it)."""
    values = _three_floats(text)
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be positive (the pixels are divided by it), got {text!r}")
    return values


def device_name(text: str) -> str:
    """argparse type: a device this machine has (cpu, cuda, cuda:N)."""
    try:
        check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_extract_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``extract`` command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "extract", help="extract trunk features of a folder or list of images to .npz/.pt",
        description="Run images through a model's trunk and save the requested features.",
        epilog="KEY=VALUE config overrides may follow CONFIG anywhere, as on the original's command line: "
        "config.MODEL.TRUNK.RESNETS.DEPTH=18 sets a key, +config/GROUP=NAME merges a config group file. "
        "Preprocessing options left out come from the model's pretrained_cfg when it has one.",
    )
    p.add_argument("config", help="YAML config path, or a shipped config name (e.g. swav_resnet50)")
    p.add_argument("--weights", help="checkpoint whose trunk weights to load (any layout the loader knows); "
                   "without it the features come from random weights")
    p.add_argument("--images", required=True, help="folder (recursive .jpg/.jpeg/.png), list file (one path a line) or image")
    p.add_argument("--layers", help="comma-separated trunk features, e.g. res5avg or res4,res5avg (default: the "
                   "trunk's pooled feature, res5avg for ResNets, the class token for ViTs; for a "
                   "linear-evaluation config, its configured features)")
    p.add_argument("--out", required=True, help="output file: .npz or .pt (never one of the inputs)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--num-workers", type=non_negative_int, default=0, help="image-loading worker processes")
    p.add_argument("--crop", type=positive_int, help="center-crop size (default: the model's input size, else 224)")
    p.add_argument("--resize", type=non_negative_int, help="resize the shorter side first (default: crop / the "
                   "model's crop fraction, else 256; 0: no resize)")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation (default bilinear)")
    p.add_argument("--mean", type=mean_values, help="normalization mean R,G,B (default: the model's, else ImageNet's)")
    p.add_argument("--std", type=std_values, help="normalization std R,G,B, positive (default: the model's, else ImageNet's)")
    p.add_argument("--channel-order", choices=CHANNEL_ORDERS, help="channel order the model takes (default: the "
                   "model's, else rgb)")
    p.add_argument("--no-normalize", action="store_true", help="leave pixels in [0, 1]")
    p.add_argument("--keep-shape", action="store_true", help="keep feature maps' shapes instead of flattening to N x D")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run_extract(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The ``extract`` command: extract, report skipped images, write ``args.out``. Returns the exit code
    (1 when no image could be read; nothing is written then). Bad arguments raise (``ValueError``,
    ``ConfigError``, ``CheckpointError``) before anything is written."""
    from ..config import resolve_config

    config = resolve_config(args.config)
    inputs: List[Optional[str]] = [args.weights, config, args.images]
    check_output_path(args.out, inputs)
    paths = list_images(args.images)  # before building the model: a wrong --images fails fast
    check_output_path(args.out, paths)
    if args.weights is not None and not os.path.isfile(args.weights):
        raise FileNotFoundError(f"--weights {args.weights!r}: no such file")
    overrides = getattr(args, "overrides", None) or []
    model = resolve_model(config, overrides)
    layers: Optional[List[str]] = None
    if args.layers:
        layers = [n.strip() for n in args.layers.split(",") if n.strip()]
    names, features_of = feature_function(model, layers)
    settings = preprocessing(model, args.crop, args.resize, args.mean, args.std, not args.no_normalize,
                             args.interpolation, args.channel_order)
    if args.weights:
        report = load_weights(model, args.weights)
        print(f"weights    {args.weights}: {report.summary()}", file=out)
    else:
        report = None
        print(RANDOM_WEIGHTS_WARNING, file=err)
    from ..distributed.extract import command_settings, distributed_world, remove_shards, run_distributed_extraction

    world = distributed_world()  # under torchrun: this rank's shards, the whole result on rank 0
    try:
        if world > 1:
            result = run_distributed_extraction(args.out, command_settings(args), model, paths, names, features_of,
                                                transform_from(settings), check_device(args.device),
                                                args.batch_size, args.num_workers, not args.no_progress,
                                                args.keep_shape, report)
            if result is None:
                return 0
        else:
            result = run_extraction(model, paths, names, features_of, transform_from(settings),
                                    check_device(args.device), args.batch_size, args.num_workers,
                                    not args.no_progress, args.keep_shape, report)
    except RuntimeError as e:
        # A crop the trunk cannot take (smaller than a ViT's patch, ...) fails in its forward.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"the model cannot run on {settings.image_size}px crops of these images: {first}") from e
    for path, error in result.skipped:
        print(f"skipped    {path}: {error}", file=err)
    if not result.paths:
        print(f"vissl-models: error: none of the {len(result.skipped)} images could be read; nothing written", file=err)
        return 1
    save_features(result, args.out)
    if world > 1:
        remove_shards(args.out)
    shapes = ", ".join(f"{n} {'x'.join(map(str, a.shape))}" for n, a in result.features.items())
    print(f"extracted  {len(result.paths)} images ({len(result.skipped)} skipped): {shapes}", file=out)
    print(f"wrote      {args.out}", file=out)
    return 0

