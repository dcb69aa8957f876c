"""``vissl-models convert``: the argument parser and the command."""

from __future__ import annotations

import argparse
import sys

from .files import convert_checkpoint
from .keymaps import SIDES, VISSL, _pairs_text
from .trunk_config import vissl_trunk_config


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``convert IN OUT --to {...} [--arch NAME] [--from LIB] [--with-head]`` to ``subparsers``."""
    p = subparsers.add_parser(
        "convert",
        help="convert trunk weights between VISSL and torchvision / timm / classy_vision layouts",
        description="Convert trunk weights between VISSL and torchvision / timm / classy_vision key layouts. "
        f"Supported: {_pairs_text()}.",
    )
    p.add_argument("input", metavar="IN", help="checkpoint to read")
    p.add_argument("output", metavar="OUT", help="file to write (replaced atomically)")
    p.add_argument("--to", choices=SIDES + ("dcp",),
                   help="layout to write (required unless IN is a torch.distributed.checkpoint directory, which "
                   "is consolidated into one VISSL file; dcp: write IN as such a directory OUT)")
    p.add_argument("--arch", help="library model name (resnet50, regnety_004, vit_small_patch16_224, ...): "
                   "checks the result against it; needed when the keys do not tell the family")
    p.add_argument("--from", dest="src", choices=SIDES, help="layout of IN when it cannot be detected")
    p.add_argument("--with-head", action="store_true",
                   help="keep the classifier: a VISSL linear head becomes fc/head, a library classifier "
                   "a VISSL mlp head")
    p.add_argument("--num-heads", type=_positive_int, metavar="N",
                   help="attention heads of a ViT (not stored in its weights) when --arch does not name "
                   "the timm model")
    p.add_argument("--no-config", action="store_true",
                   help="with --to vissl, do not write the model config (OUT with .yaml) next to the weights")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run_convert(args: argparse.Namespace, out=None) -> int:
    """Run ``vissl-models convert``; prints what was converted. Returns the exit code."""
    out = out or sys.stdout
    extra = getattr(args, "overrides", None)
    if extra:
        print(f"vissl-models convert: error: unexpected arguments {extra}", file=sys.stderr)
        return 2
    from ...distributed.checkpoint import run_dcp_convert

    code = run_dcp_convert(args, out)
    if code is not None:
        return code
    try:
        result = convert_checkpoint(
            args.input, args.output, args.to, args.arch, args.src, args.with_head,
            num_heads=getattr(args, "num_heads", None), write_config=not getattr(args, "no_config", False),
        )
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        print(f"vissl-models convert: error: {e}", file=sys.stderr)
        return 2
    print(f"converted {result.family} weights {result.src} -> {result.dst}: "
          f"{len(result.state)} tensors -> {args.output}", file=out)
    if result.dropped:
        shown = ", ".join(result.dropped[:6]) + (" ..." if len(result.dropped) > 6 else "")
        print(f"dropped {len(result.dropped)}: {shown}", file=out)
    for note in result.notes:
        print(note, file=out)
    if result.dst != VISSL:
        return 0
    import yaml

    if result.model_config is not None:
        trunk = result.model_config["MODEL"]["TRUNK"]
    else:
        try:
            trunk = vissl_trunk_config(result.state, result.family, result.arch if result.src == "timm" else None,
                                       num_heads=getattr(args, "num_heads", None))
        except ValueError as e:
            print(f"trunk config: not derived ({e})", file=out)
            return 0
    print("trunk config (MODEL.TRUNK):", file=out)
    print(yaml.safe_dump(trunk, sort_keys=False, default_flow_style=None).rstrip(), file=out)
    if result.config_path is not None:
        print(f"model config -> {result.config_path} "
              f"(vissl_models.create_model({result.config_path!r}, weights={args.output!r}))", file=out)
    return 0
