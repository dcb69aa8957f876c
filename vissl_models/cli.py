"""``vissl-models`` command line (also ``python -m vissl_models``).

    vissl-models                                   summary of the default model (SwAV ResNet-50)
    vissl-models summary CONFIG [KEY=VALUE ...]    summary of any config, optionally --weights FILE
    vissl-models extract CONFIG --images DIR_OR_LIST --out FILE.npz|.pt [--weights W] [--layers res4,res5avg]
                                                   trunk features of images ([KEY=VALUE ...] overrides)
    vissl-models convert IN OUT --to {torchvision,timm,vissl} [--arch NAME]
                                                   convert weights between VISSL and torchvision/timm
    vissl-models zoo [--method M] [--arch A] [--json]
                                                   the original model zoo: checkpoints, configs, top-1
    vissl-models --version

A bad argument ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any, Dict, List, NoReturn, Optional, Sequence

import torch

# Kept importable from here for callers written before it moved into vissl_models.config.
from .argtypes import positive_int
from .config import ConfigError, resolve_config  # noqa: F401
from .pretrained import trained_input_size

DEFAULT_CONFIG = "swav_resnet50"
# The default run: SwAV multi-crop, 2 global 224px crops and 6 local 96px crops.
DEFAULT_CROPS = "2x224,6x96"
# A synthetic input larger than this (in values: 2**28 floats are 1 GiB) is refused before allocation.
MAX_INPUT_VALUES = 2**28
PROG = "vissl-models"

OVERRIDES_HELP = """\
config overrides (anywhere after CONFIG), as on the original's command line:
  KEY=VALUE               set a key, e.g. config.MODEL.TRUNK.RESNETS.DEPTH=18
                          (the 'config.' prefix is optional; VALUE is YAML: 18, true, [512, 16], ...)
  +KEY=VALUE              add a key outside MODEL that the config does not have yet
  +config/GROUP=NAME      merge the group file config/GROUP/NAME.yaml of the original's config tree
                          (searched under $VISSL_MODELS_CONFIG_PATH, then the tree CONFIG lives in)
  config=PATH             merge config/PATH.yaml from the same places
an override that names no key, section or file is an error."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports a bad argument in one line (no usage block) and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: Any) -> str:
    """``text`` on a single line: inner newlines become '; '."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts) if parts else str(text)


def _shape(text: str, what: str, length: Optional[int] = None) -> List[int]:
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad {what} {text!r}: expected whole numbers joined by 'x'") from None
    if length is not None and len(values) != length:
        raise argparse.ArgumentTypeError(f"bad {what} {text!r}: expected {length} numbers joined by 'x'")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"bad {what} {text!r}: every number must be at least 1")
    return values


def crops_spec(text: str) -> str:
    """argparse type: ``COUNTxSIZE[,COUNTxSIZE...]``, every number at least 1."""
    for part in text.split(","):
        _shape(part.strip(), "crops", 2)
    return text


def input_spec(text: str) -> tuple:
    """argparse type: ``KEY=NxCxHxW`` with 3 channels and every size at least 1."""
    key, sep, shape = text.partition("=")
    if not sep or not key or not shape:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=SHAPE (e.g. images=2x3x224x224)")
    dims = _shape(shape, "shape", 4)
    if dims[1] != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: the models take 3-channel images (N x 3 x H x W), got {dims[1]} channels")
    return key, dims


def parse_crops(text: str, channels: int = 3) -> List[torch.Tensor]:
    """``"2x224,6x96"`` -> 2 crops of 224px then 6 of 96px, each a batch of one image."""
    crops: List[torch.Tensor] = []
    for part in text.split(","):
        count, size = _shape(part.strip(), "crops", 2)
        _check_size(count * channels * size * size, f"--crops {text}")
        crops += [torch.randn(1, channels, size, size) for _ in range(count)]
    return crops


def _check_size(values: int, what: str) -> None:
    if values > MAX_INPUT_VALUES:
        raise ValueError(f"{what}: {values:,} input values is more than the {MAX_INPUT_VALUES:,} this command allocates")


def synthetic_input(model, crops: Optional[str], inputs: Sequence, size: Optional[int] = None) -> Any:
    """An input of the right kind for ``model``: tensor, list of crops, or dict of inputs.

    ``inputs`` holds ``(key, shape)`` pairs (or ``"KEY=SHAPE"`` strings); for a multi-input model
    every key must be one of its input keys.
    """
    cfg = model.model_config
    mapping = model.multi_input_mapping
    if inputs:
        pairs = [input_spec(i) if isinstance(i, str) else i for i in inputs]
        if mapping:
            unknown = [k for k, _ in pairs if k not in mapping.input_keys]
            if unknown:
                raise ValueError(f"--input {unknown}: this model's inputs are {list(mapping.input_keys)}")
        elif len(pairs) > 1:
            raise ValueError(f"--input given {len(pairs)} times, but this model takes one input tensor")
        out: Dict[str, torch.Tensor] = {}
        for key, dims in pairs:
            _check_size(dims[0] * dims[1] * dims[2] * dims[3], f"--input {key}")
            out[key] = torch.randn(dims)
        return out if mapping else out[next(iter(out))]
    height, width = (size, size) if size else trained_input_size(cfg)
    if mapping:
        out = {}
        for key, head_idx in zip(mapping.input_keys, mapping.head_index):
            towers = [m.num_towers for m in model.heads[head_idx].modules() if hasattr(m, "num_towers")]
            # A siamese head wants num_towers patches per image (PIRL/Jigsaw use 64px patches).
            out[key] = torch.randn(2 * towers[0], 3, 64, 64) if towers else torch.randn(2, 3, height, width)
        return out
    if crops:
        return parse_crops(crops)
    _check_size(2 * 3 * height * width, f"--size {size or height}")
    return torch.randn(2, 3, height, width)


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
    # fvcore calls torch.jit.script when imported (a FutureWarning on current torch) and its tracer
    # warns about unsupported ops: neither is actionable here, so neither is shown.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, (x,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())


def _part_report(report, prefix: str, total: int) -> str:
    """``"N/total keys loaded; ..."`` for the keys of ``report`` under ``prefix`` (shown without it)."""
    from .checkpoint import LoadReport

    def under(keys):
        return [k[len(prefix):] for k in keys if k.startswith(prefix)]

    part = LoadReport(loaded=under(report.loaded), missing=under(report.missing),
                      unexpected=under(report.unexpected), skipped=under(report.skipped),
                      shape_mismatch_skipped=under(report.shape_mismatch_skipped),
                      shape_mismatch=[m[len(prefix):] for m in report.shape_mismatch if m.startswith(prefix)])
    return f"{len(part.loaded)}/{total} keys loaded{part.details()}"


def summary(config: str, overrides: Sequence[str] = (), weights: Optional[str] = None,
            crops: Optional[str] = None, inputs: Sequence = (), flops: bool = True, out=sys.stdout,
            size: Optional[int] = None, strict: bool = False) -> int:
    """Build the model of ``config`` (+ ``overrides``), load ``weights`` if given, run it on a
    synthetic input and print what it is. Bad arguments raise (``ConfigError``, ``ValueError``,
    ``CheckpointError``) before anything is printed about the run."""
    import vissl_models

    path = resolve_config(config)
    cfg = vissl_models.load_config(path, overrides)
    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"--weights {weights!r}: no such file")
    t0 = time.time()
    model = vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER).eval()
    build_s = time.time() - t0
    report = None
    if weights:
        report = model.load_weights(weights, strict=strict)
        if not report.loaded:
            raise ValueError(f"--weights {weights}: no weight in it fits this model, nothing was loaded"
                             f"{report.details()}")
    x = synthetic_input(model, crops, inputs, size)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"config     {path}", file=out)
    print(f"trunk      {cfg.MODEL.TRUNK.NAME} ({type(model.trunk).__name__}), "
          f"{sum(p.numel() for p in model.trunk.parameters()):,} parameters", file=out)
    for i, name in enumerate(model.head_names):
        print(f"head {i}     {name}, {sum(p.numel() for p in model.heads[i].parameters()):,} parameters", file=out)
    print(f"parameters {params:,} ({trainable:,} trainable); built in {build_s:.1f}s", file=out)
    if report is not None:
        print(f"weights    {report.checkpoint or weights}", file=out)
        for label, module in (("trunk", model.trunk), ("heads", model.heads)):
            print(f"  {label}: {_part_report(report, label + '.', len(module.state_dict()))}", file=out)
    with torch.no_grad():
        t0 = time.time()
        try:
            y = model(x)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"the model cannot run on input {_input_desc(x)}: {one_line(e)}") from e
        fwd_s = time.time() - t0
    print(f"input      {_input_desc(x)}", file=out)
    print(f"outputs    {_shapes(y)} (forward {fwd_s:.2f}s)", file=out)
    if flops:
        with torch.no_grad():
            print(f"flops      {count_flops(model, x) / 1e9:.2f} GFLOPs for this input (fvcore)", file=out)
    return 0


def _version() -> str:
    from . import __version__

    return f"{PROG} {__version__}"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="VISSL model layer: build, inspect, load checkpoints.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="{summary,extract,convert,zoo}")
    s = sub.add_parser("summary", help="build a model from a config and report its shape, size and outputs",
                       usage=f"{PROG} summary [options] CONFIG [KEY=VALUE ...]",
                       description="Build a model from a config (plus overrides), optionally load weights, run it "
                       "on a synthetic input and report parameters, outputs and FLOPs.",
                       epilog=OVERRIDES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("config", metavar="CONFIG", help="YAML config path, or a shipped config name (e.g. swav_resnet50)")
    # Overrides (KEY=VALUE) may come anywhere after CONFIG; parse_args collects them.
    s.add_argument("--weights", help="checkpoint to load (any layout the loader knows); reports key coverage")
    s.add_argument("--strict", action="store_true", help="with --weights: fail unless every key matches")
    s.add_argument("--crops", type=crops_spec, metavar="NxSIZE,...", help="multi-crop input, e.g. 2x224,6x96 (count x size)")
    s.add_argument("--input", type=input_spec, action="append", default=[], dest="inputs", metavar="KEY=NxCxHxW",
                   help="input shape (repeatable; one per input of a multi-input model), e.g. images=2x3x224x224")
    s.add_argument("--size", type=positive_int, help="input image size (default: what the trunk was trained at)")
    s.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    from .checkpoint.convert import add_convert_parser
    from .extract import add_extract_parser
    from .zoo import add_zoo_parser

    add_convert_parser(sub)
    e = add_extract_parser(sub)
    e.formatter_class = argparse.RawDescriptionHelpFormatter
    e.epilog = OVERRIDES_HELP
    add_zoo_parser(sub)
    return p


# Commands whose trailing KEY=VALUE words are config overrides.
_TAKES_OVERRIDES = ("summary", "extract")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv``; KEY=VALUE words after the config become ``overrides``, anywhere among options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [w for w in extra if w.startswith("-") or "=" not in w or args.command not in _TAKES_OVERRIDES]
    if bad:
        sub = f"{PROG} {args.command}" if args.command else PROG
        ArgumentParser(prog=sub).error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = extra
    return args


def _run(args: argparse.Namespace) -> int:
    if args.command is None:
        return summary(DEFAULT_CONFIG, crops=DEFAULT_CROPS)
    if args.command == "summary":
        return summary(args.config, args.overrides, args.weights, args.crops, args.inputs, not args.no_flops,
                       size=args.size, strict=args.strict)
    if args.command == "convert":
        from .checkpoint.convert import run_convert

        return run_convert(args)
    if args.command == "extract":
        from .extract import run_extract

        return run_extract(args)
    if args.command == "zoo":
        from .zoo import run_zoo

        return run_zoo(args)
    raise ValueError(f"unknown command {args.command!r}")


def _error_text(e: BaseException) -> str:
    # KeyError's str() is the repr of its argument; its message reads better plain.
    text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    return one_line(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (2 for a bad argument, with one line on stderr)."""
    from .checkpoint import CheckpointError

    try:
        args = parse_args(argv)
    except SystemExit as stop:  # argparse: --help, --version, or a bad argument (already reported)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    try:
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; point stdout at /dev/null so the interpreter's
        # final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, CheckpointError, OSError, ValueError, KeyError) as e:
        print(f"{PROG}: error: {_error_text(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
