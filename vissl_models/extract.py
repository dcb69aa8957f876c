"""Feature extraction: images through a model's trunk, features saved as ``.npz`` or ``.pt``.

    result = extract_features("swav_resnet50", "photos/", layers=("res4", "res5avg"),
                              weights="model_final_checkpoint_phase799.torch")
    result.features["res5avg"].shape     # (number of images read, 2048)
    result.save("features.npz")          # atomic: a temp file in the same folder, then os.replace

Images are read with PIL and preprocessed the standard way (resize the shorter side, center crop,
to tensor, normalize). An image that cannot be read is reported in ``result.skipped`` and the
others go on. On the command line: ``vissl-models extract CONFIG --weights W --images DIR
--layers res5avg --out features.npz``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple, Union

import numpy as np
import torch
from torch import nn

from .fileio import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
OUTPUT_FORMATS = (".npz", ".pt")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

ImagesArg = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


@dataclass
class ExtractResult:
    """Features per layer (``N x ...`` numpy arrays, row i is ``paths[i]``), the paths read, and
    ``(path, error)`` for each image that was skipped. ``load_report`` says what loading the
    weights did (``None`` without weights)."""

    features: Dict[str, np.ndarray]
    paths: List[str]
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    load_report: Any = None

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write to ``path`` (``.npz`` or ``.pt``, by extension) atomically; see ``save_features``."""
        save_features(self, path)


# ---------------------------------------------------------------------------------------- inputs
def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_images(images: ImagesArg) -> List[str]:
    """The image paths ``images`` stands for, in order.

    ``images`` is a folder (searched recursively for .jpg/.jpeg/.png, any case, sorted), a text
    file listing one path per line (blank lines and lines starting with ``#`` are ignored; relative
    paths are relative to the list file's folder), one image file, or a list of paths (taken as
    given, whatever their extension).
    """
    if isinstance(images, (list, tuple)):
        paths = [os.fspath(p) for p in images]
    else:
        path = os.fspath(images)
        if os.path.isdir(path):
            paths = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                paths += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
        elif os.path.isfile(path) and _is_image(path):
            paths = [path]
        elif os.path.isfile(path):
            base = os.path.dirname(os.path.abspath(path))
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
            paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in lines if p and not p.startswith("#")]
        else:
            raise FileNotFoundError(f"images: {path!r} is neither a folder, an image nor a list file")
    if not paths:
        raise ValueError(f"images: no images found in {images!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def build_transform(
    image_size: int = 224,
    resize: Optional[int] = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
    interpolation: str = "bilinear",
) -> Callable:
    """PIL image -> tensor: resize the shorter side to ``resize`` (skipped when 0/None), center crop
    ``image_size``, to a float tensor in [0, 1], then normalize with ``mean``/``std``."""
    from torchvision import transforms as T

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation: got {interpolation!r}, expected one of {list(INTERPOLATIONS)}")
    if image_size <= 0:
        raise ValueError(f"image_size (crop): must be positive, got {image_size}")
    steps: List[Callable] = []
    if resize:
        steps.append(T.Resize(resize, interpolation=T.InterpolationMode(interpolation)))
    steps += [T.CenterCrop(image_size), T.ToTensor()]
    if normalize:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (one per RGB channel), got {list(mean)} and {list(std)}")
        steps.append(T.Normalize(list(mean), list(std)))
    return T.Compose(steps)


class ImageFiles(torch.utils.data.Dataset):
    """``(index, tensor, None)`` per readable image, ``(index, None, error)`` per unreadable one."""

    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as img:
                return index, self.transform(img.convert("RGB")), None
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, never fatal
            return index, None, f"{type(e).__name__}: {e}"


def _collate(items):
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, x, err in items if err is not None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


# ---------------------------------------------------------------------------------------- model
def _resolve_model(model_or_config: Any, overrides: Sequence[str]) -> nn.Module:
    """A built model from a module, a config path / shipped config name, or a config mapping."""
    if isinstance(model_or_config, nn.Module):
        if overrides:
            raise ValueError("overrides apply to a config, not to an already built model")
        return model_or_config
    import vissl_models

    if isinstance(model_or_config, Mapping):
        source = model_or_config if "MODEL" in model_or_config else {"MODEL": model_or_config}
    elif isinstance(model_or_config, (str, os.PathLike)):
        from .cli import resolve_config  # imported here: cli imports this module

        source = resolve_config(os.fspath(model_or_config))
    else:
        raise TypeError(f"expected a model, a config path or name, or a config mapping; got {type(model_or_config).__name__}")
    cfg = vissl_models.load_config(source, overrides)
    return vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER)


def _is_feature_extractor(trunk: nn.Module) -> bool:
    from .feature_extractor import FeatureExtractorModel

    return isinstance(trunk, FeatureExtractorModel)


def load_weights(model: nn.Module, path: Union[str, os.PathLike]):
    """Load checkpoint ``path`` into ``model``; returns a ``LoadReport``.

    A model whose trunk is a linear-evaluation ``FeatureExtractorModel`` gets the checkpoint's trunk
    weights in its ``base_model`` (keys with or without the ``base_model.`` prefix), strictly, and
    no heads: a pre-training checkpoint's trunk has no such prefix and its heads are not the
    evaluation heads. Any other model goes through ``model.load_checkpoint``.
    """
    path = os.fspath(path)
    trunk = getattr(model, "trunk", None)
    if trunk is not None and _is_feature_extractor(trunk):
        from .checkpoint import CheckpointError, LoadReport, load_checkpoint

        state = load_checkpoint(path).trunk
        prefix = "base_model."
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
        target = trunk.base_model.state_dict()
        missing = [k for k in target if k not in state]
        unexpected = [k for k in state if k not in target]
        shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
        report = LoadReport(loaded=[k for k in state if k in target], missing=missing, unexpected=unexpected)
        if missing or unexpected or shapes:
            raise CheckpointError(f"{path}: trunk weights do not fit the model's trunk{report.details()}"
                                  + (f"; shape mismatches: {shapes[:5]}" if shapes else ""))
        trunk.base_model.load_state_dict(state, strict=True)
        return report
    if not hasattr(model, "load_checkpoint"):
        raise TypeError(f"{type(model).__name__} has no load_checkpoint(); load the weights before extracting")
    return model.load_checkpoint(path)


def _output_names(names: Sequence[str]) -> List[str]:
    """Unique names for the configured features: a repeated name gets ``_1``, ``_2``, ... appended."""
    counts: Dict[str, int] = {}
    out = []
    for name in names:
        n = counts.get(name, 0)
        counts[name] = n + 1
        out.append(name if n == 0 else f"{name}_{n}")
    return out


def feature_function(model: nn.Module, layers: Optional[Sequence[str]]) -> Tuple[List[str], Callable]:
    """``(names, fn)`` where ``fn(batch)`` returns one tensor per name.

    For a model whose trunk is a ``FeatureExtractorModel`` the features are its configured ones
    (``MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP``, pooled), and ``layers`` picks
    among them (``None``: all). Otherwise ``layers`` are trunk feature names (``res4``, ``res5avg``,
    ``lastCLS``, ...), returned in the order asked. ``model`` may also be a bare trunk.
    """
    trunk = getattr(model, "trunk", model)
    if _is_feature_extractor(trunk):
        if trunk is model:
            raise TypeError("pass the whole model, not its FeatureExtractorModel trunk: the feature names are "
                            "in the model's FEATURE_EVAL_SETTINGS")
        configured = _output_names(model.eval_settings.output_feature_names)
        wanted = list(layers) if layers else configured
        unknown = [n for n in wanted if n not in configured]
        if unknown:
            raise ValueError(f"layers {unknown} are not features of this linear-evaluation model; its configured "
                             f"features (LINEAR_EVAL_FEAT_POOL_OPS_MAP) are {configured}")
        index = [configured.index(n) for n in wanted]

        def pooled(batch):
            feats = model.get_features(batch)
            return [feats[i] for i in index]

        return wanted, pooled
    if not layers:
        raise ValueError("layers: name at least one trunk feature (e.g. res5avg for a ResNet, lastCLS for a ViT)")
    names = list(layers)
    if len(set(names)) != len(names):
        raise ValueError(f"layers: each layer once, got {names}")
    if len(names) == 1:
        return names, lambda batch: trunk(batch, names)
    # Trunks return distinct names in network order but every name in the order asked once a name
    # repeats (the original's convention), so asking for the first one twice pins the order.
    asked = names + names[:1]

    def run(batch):
        out = trunk(batch, asked)
        if len(out) != len(asked):
            raise ValueError(f"the trunk returned {len(out)} features for the {len(names)} layers {names}")
        return out[: len(names)]

    return names, run


# ---------------------------------------------------------------------------------------- extraction
def _device(device: Union[str, torch.device]) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
    return dev


def extract_features(
    model_or_config: Any,
    images: ImagesArg,
    layers: Optional[Sequence[str]] = ("res5avg",),
    weights: Optional[Union[str, os.PathLike]] = None,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    image_size: int = 224,
    resize: Optional[int] = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    num_workers: int = 0,
    progress: bool = True,
    *,
    normalize: bool = True,
    keep_shape: bool = False,
    interpolation: str = "bilinear",
    overrides: Sequence[str] = (),
) -> ExtractResult:
    """Run ``images`` through the trunk of ``model_or_config`` and collect the ``layers`` features.

    Args:
        model_or_config: a built model (used as is: moved to ``device``, put in eval mode), a config
            path or shipped config name, or a config mapping (``{"MODEL": ...}`` or the MODEL section).
        images: a folder, a text file listing paths, one image, or a list of paths (``list_images``).
        layers: trunk feature names; for a linear-evaluation config, some of its configured features
            (``None``: all of them). See ``feature_function``.
        weights: checkpoint to load first (``load_weights``).
        batch_size, device, num_workers: batching, ``"cpu"``/``"cuda"``, DataLoader workers.
        image_size, resize, mean, std, normalize, interpolation: preprocessing (``build_transform``).
        progress: show a tqdm progress bar (on stderr).
        keep_shape: keep each feature's shape instead of flattening it to ``N x -1``.
        overrides: ``KEY=VALUE`` config overrides (only with a config).

    Returns:
        ``ExtractResult``; unreadable images are listed in ``skipped`` and left out of the arrays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    dev = _device(device)
    paths = list_images(images)
    transform = build_transform(image_size, resize, mean, std, normalize, interpolation)
    model = _resolve_model(model_or_config, overrides)
    report = load_weights(model, weights) if weights else None
    names, features_of = feature_function(model, layers)

    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate, pin_memory=dev.type == "cuda",
    )
    chunks: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    read: List[int] = []
    skipped: List[Tuple[str, str]] = []
    from tqdm import tqdm

    was_training = model.training
    model.to(dev).eval()
    try:
        with torch.no_grad(), tqdm(total=len(paths), unit="img", desc="extract", disable=not progress,
                                   file=sys.stderr) as bar:
            for indices, batch, bad in loader:
                skipped += [(paths[i], err) for i, err in bad]
                if batch is not None:
                    feats = features_of(batch.to(dev, non_blocking=True))
                    for name, feat in zip(names, feats):
                        if not keep_shape:
                            feat = feat.reshape(feat.shape[0], -1)
                        chunks[name].append(feat.float().cpu().numpy())
                    read += indices
                bar.update(len(indices) + len(bad))
    finally:
        model.train(was_training)
    features = {n: (np.concatenate(c) if c else np.zeros((0,), dtype=np.float32)) for n, c in chunks.items()}
    return ExtractResult(features, [paths[i] for i in read], skipped, report)


# ---------------------------------------------------------------------------------------- output
def save_features(result: ExtractResult, path: Union[str, os.PathLike]) -> None:
    """Write ``result`` to ``path``: ``.npz`` (one array per layer plus ``paths``) or ``.pt`` (a dict
    of tensors per layer plus ``paths``, a list of str).

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so ``path`` is either the old file or the complete new one, never a partial one.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"output {path!r}: unknown format {ext or '(no extension)'}; use one of {list(OUTPUT_FORMATS)}")
    if "paths" in result.features:
        raise ValueError("a layer named 'paths' would clash with the list of image paths in the output")
    with atomic_write(path) as f:
        if ext == ".npz":
            np.savez(f, paths=np.array(result.paths, dtype=str), **result.features)
        else:
            data: Dict[str, Any] = {n: torch.from_numpy(a) for n, a in result.features.items()}
            data["paths"] = list(result.paths)
            torch.save(data, f)


# ---------------------------------------------------------------------------------------- command line
def _floats3(text: str) -> Tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated numbers (R,G,B), got {text!r}")
    return values  # type: ignore[return-value]


def add_extract_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``extract`` command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "extract", help="extract trunk features of a folder or list of images to .npz/.pt",
        description="Run images through a model's trunk and save the requested features. KEY=VALUE config "
        "overrides may follow the config anywhere.",
    )
    p.add_argument("config", help="YAML config path, or a shipped config name (e.g. swav_resnet50)")
    p.add_argument("--weights", help="checkpoint to load (any layout load_checkpoint knows)")
    p.add_argument("--images", required=True, help="folder (recursive .jpg/.jpeg/.png), list file (one path a line) or image")
    p.add_argument("--layers", help="comma-separated trunk features, e.g. res5avg or res4,res5avg (default: res5avg; "
                   "for a linear-evaluation config, its configured features)")
    p.add_argument("--out", required=True, help="output file: .npz or .pt")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--num-workers", type=int, default=0, help="image-loading worker processes")
    p.add_argument("--crop", type=int, default=224, help="center-crop size (default 224)")
    p.add_argument("--resize", type=int, default=256, help="resize the shorter side first (default 256; 0: no resize)")
    p.add_argument("--interpolation", default="bilinear", choices=INTERPOLATIONS, help="resize interpolation")
    p.add_argument("--mean", type=_floats3, default=IMAGENET_MEAN, help="normalization mean R,G,B (ImageNet's by default)")
    p.add_argument("--std", type=_floats3, default=IMAGENET_STD, help="normalization std R,G,B (ImageNet's by default)")
    p.add_argument("--no-normalize", action="store_true", help="leave pixels in [0, 1]")
    p.add_argument("--keep-shape", action="store_true", help="keep feature maps' shapes instead of flattening to N x D")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_extract)
    return p


def run_extract(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The ``extract`` command: extract, report skipped images, write ``args.out``. Returns the exit code
    (1 when no image could be read; nothing is written then)."""
    from .cli import resolve_config  # imported here: cli imports this module

    ext = os.path.splitext(args.out)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"--out {args.out!r}: unknown format {ext or '(no extension)'}; use one of {list(OUTPUT_FORMATS)}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out {args.out!r}: folder {out_dir} does not exist")
    paths = list_images(args.images)  # before building the model: a wrong --images fails fast
    overrides = getattr(args, "overrides", None) or []
    model = _resolve_model(resolve_config(args.config), overrides)
    if args.layers:
        layers: Optional[List[str]] = [n.strip() for n in args.layers.split(",") if n.strip()]
    else:
        # A linear-evaluation config names its features; any other model gets the ResNet default.
        layers = None if _is_feature_extractor(getattr(model, "trunk", model)) else ["res5avg"]
    result = extract_features(
        model, paths, layers=layers, weights=args.weights, batch_size=args.batch_size, device=args.device,
        image_size=args.crop, resize=args.resize, mean=args.mean, std=args.std, num_workers=args.num_workers,
        progress=not args.no_progress, normalize=not args.no_normalize, keep_shape=args.keep_shape,
        interpolation=args.interpolation,
    )
    if result.load_report is not None:
        print(f"weights    {args.weights}: {result.load_report.summary()}", file=out)
    for path, error in result.skipped:
        print(f"skipped    {path}: {error}", file=err)
    if not result.paths:
        print(f"vissl-models: error: none of the {len(result.skipped)} images could be read; nothing written", file=err)
        return 1
    result.save(args.out)
    shapes = ", ".join(f"{n} {'x'.join(map(str, a.shape))}" for n, a in result.features.items())
    print(f"extracted  {len(result.paths)} images ({len(result.skipped)} skipped): {shapes}", file=out)
    print(f"wrote      {args.out}", file=out)
    return 0
