"""Which features to take from a model, and running images through it to collect them."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .dataset import ImageFiles, ImagesArg, collate_images, list_images
from .transforms import TransformSettings, settings_for, transform_from

# Before every trunk states its ``default_feature``: the natural pooled feature of the families
# whose feature names say it (ResNets' pooled res5, ViTs' class token).
_FALLBACK_DEFAULT_FEATURES = ("res5avg", "lastCLS")


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
        from .writer import save_features

        save_features(self, path)


def resolve_model(model_or_config: Any, overrides: Sequence[str] = ()) -> nn.Module:
    """A built model from a module, a config path / shipped config name, or a config mapping."""
    if isinstance(model_or_config, nn.Module):
        if overrides:
            raise ValueError("overrides apply to a config, not to an already built model")
        return model_or_config
    import vissl_models

    if isinstance(model_or_config, Mapping):
        source = model_or_config if "MODEL" in model_or_config else {"MODEL": model_or_config}
    elif isinstance(model_or_config, (str, os.PathLike)):
        source = model_or_config
    else:
        raise TypeError(f"expected a model, a config path or name, or a config mapping; got {type(model_or_config).__name__}")
    cfg = vissl_models.load_config(source, overrides)
    return vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER)


def is_feature_extractor(trunk: nn.Module) -> bool:
    """Whether ``trunk`` is a linear-evaluation ``FeatureExtractorModel``."""
    from ..feature_extractor import FeatureExtractorModel

    return isinstance(trunk, FeatureExtractorModel)


def load_weights(model: nn.Module, path: Union[str, os.PathLike]):
    """Load the trunk weights of checkpoint ``path`` into ``model``; returns the ``LoadReport``.

    Goes through ``model.load_weights`` (the library's one loading door) strictly for the trunk:
    every trunk weight must be in the file and fit, or nothing is loaded and a ``CheckpointError``
    says why. Heads are left alone: extraction never runs them, and a pre-training checkpoint's
    heads are not a linear-evaluation model's heads.
    """
    if not hasattr(model, "load_weights"):
        raise TypeError(f"{type(model).__name__} has no load_weights(); load the weights before extracting")
    return model.load_weights(os.fspath(path), strict=True, skip=("heads.",))


def output_names(names: Sequence[str]) -> List[str]:
    """Unique names for the configured features: a repeated name gets ``_1``, ``_2``, ... appended."""
    counts: Dict[str, int] = {}
    out = []
    for name in names:
        n = counts.get(name, 0)
        counts[name] = n + 1
        out.append(name if n == 0 else f"{name}_{n}")
    return out


def default_layer(trunk: nn.Module) -> str:
    """The trunk's natural pooled feature: its ``default_feature``, else ``res5avg`` or ``lastCLS``
    when it has that name. ``ValueError`` listing the trunk's names when none applies."""
    name = getattr(trunk, "default_feature", None)
    if isinstance(name, str) and name:
        return name
    try:
        names = list(getattr(trunk, "feature_names", None) or [])
    except Exception:  # noqa: BLE001 - a trunk without a usable name list just has no fallback
        names = []
    for candidate in _FALLBACK_DEFAULT_FEATURES:
        if candidate in names:
            return candidate
    raise ValueError(f"layers: the {type(trunk).__name__} trunk has no default feature; name one "
                     f"(its features: {names or 'see its documentation'})")


def feature_function(model: nn.Module, layers: Optional[Sequence[str]]) -> Tuple[List[str], Callable]:
    """``(names, fn)`` where ``fn(batch)`` returns one tensor per name.

    For a model whose trunk is a ``FeatureExtractorModel`` the features are its configured ones
    (``MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP``, pooled), and ``layers`` picks
    among them (``None``: all). Otherwise ``layers`` are trunk feature names (``res4``, ``res5avg``,
    ``lastCLS``, ...), returned in the order asked; ``None`` is the trunk's default feature
    (``default_layer``). ``model`` may also be a bare trunk.
    """
    trunk = getattr(model, "trunk", model)
    if is_feature_extractor(trunk):
        if trunk is model:
            raise TypeError("pass the whole model, not its FeatureExtractorModel trunk: the feature names are "
                            "in the model's FEATURE_EVAL_SETTINGS")
        configured = output_names(model.eval_settings.output_feature_names)
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
    names = list(layers) if layers else [default_layer(trunk)]
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


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a ``torch.device`` this machine has; ``ValueError`` naming what is available."""
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {str(device)!r}: not a device name; available here: {available}") from None
    if dev.type == "cuda" and "cuda" not in available:
        raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine (use --device cpu)")
    if dev.type not in available:
        raise ValueError(f"device {str(device)!r}: not available on this machine; available here: {available}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def preprocessing(model: nn.Module, image_size: Optional[int] = None, resize: Optional[int] = None,
                  mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                  normalize: bool = True, interpolation: Optional[str] = None,
                  channel_order: Optional[str] = None) -> TransformSettings:
    """The model's default preprocessing (``settings_for``) with every value given (not ``None``) on
    top, checked (``ValueError`` naming a bad one)."""
    settings = settings_for(model, image_size)
    given = {"resize": resize, "mean": None if mean is None else tuple(mean),
             "std": None if std is None else tuple(std), "interpolation": interpolation,
             "channel_order": channel_order}
    changes = {k: v for k, v in given.items() if v is not None}
    changes["normalize"] = normalize
    return replace(settings, **changes).checked()


def extract_features(
    model_or_config: Any,
    images: ImagesArg,
    layers: Optional[Sequence[str]] = None,
    weights: Optional[Union[str, os.PathLike]] = None,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    image_size: Optional[int] = None,
    resize: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    num_workers: int = 0,
    progress: bool = True,
    *,
    normalize: bool = True,
    keep_shape: bool = False,
    interpolation: Optional[str] = None,
    channel_order: Optional[str] = None,
    overrides: Sequence[str] = (),
) -> ExtractResult:
    """Run ``images`` through the trunk of ``model_or_config`` and collect the ``layers`` features.

    Args:
        model_or_config: a built model (used as is: moved to ``device``, put in eval mode), a config
            path or shipped config name, or a config mapping (``{"MODEL": ...}`` or the MODEL section).
        images: a folder, a text file listing paths, one image, or a list of paths (``list_images``).
        layers: trunk feature names; ``None``: the trunk's default feature (``res5avg`` for ResNets,
            the class token for ViTs), or for a linear-evaluation config all its configured features.
            See ``feature_function``.
        weights: checkpoint whose trunk weights are loaded first (``load_weights``). A model built
            from a config without ``weights`` has random weights: a ``UserWarning`` says so.
        batch_size, device, num_workers: batching, ``"cpu"``/``"cuda"``, DataLoader workers.
        image_size, resize, mean, std, normalize, interpolation, channel_order: preprocessing; each one
            left ``None`` comes from the model's ``pretrained_cfg`` when it has one, else ImageNet's
            mean/std and a 224 crop of the image resized to 256 (``resize=0``: no resize).
        progress: show a tqdm progress bar (on stderr).
        keep_shape: keep each feature's shape instead of flattening it to ``N x -1``.
        overrides: ``KEY=VALUE`` config overrides (only with a config).

    Returns:
        ``ExtractResult``; unreadable images are listed in ``skipped`` and left out of the arrays.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an integer of at least 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers: must be an integer of at least 0, got {num_workers!r}")
    dev = check_device(device)
    paths = list_images(images)
    built_here = not isinstance(model_or_config, nn.Module)
    model = resolve_model(model_or_config, overrides)
    settings = preprocessing(model, image_size, resize, mean, std, normalize, interpolation, channel_order)
    names, features_of = feature_function(model, layers)
    report = load_weights(model, weights) if weights else None
    if built_here and weights is None:
        warnings.warn("extract_features: no weights given; the model was built from its config with RANDOM "
                      "weights, so the features mean nothing (pass weights=...)", UserWarning, stacklevel=2)
    return run_extraction(model, paths, names, features_of, transform_from(settings), dev, batch_size,
                          num_workers, progress, keep_shape, report)


def run_extraction(model: nn.Module, paths: Sequence[str], names: Sequence[str], features_of: Callable,
                   transform: Callable, device: torch.device, batch_size: int = 32, num_workers: int = 0,
                   progress: bool = True, keep_shape: bool = False, load_report: Any = None,
                   indices: Optional[Sequence[int]] = None) -> ExtractResult:
    """The extraction loop over ``paths`` (or only the ``indices`` among them), in order.

    ``names``/``features_of`` come from ``feature_function``; the model is put in eval mode on
    ``device`` and its training mode restored afterwards.
    """
    dataset: torch.utils.data.Dataset = ImageFiles(paths, transform)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_images, pin_memory=device.type == "cuda",
    )
    chunks: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    read: List[int] = []
    skipped: List[Tuple[str, str]] = []
    from tqdm import tqdm

    was_training = model.training
    model.to(device).eval()
    try:
        with torch.no_grad(), tqdm(total=len(dataset), unit="img", desc="extract", disable=not progress,
                                   file=sys.stderr) as bar:
            for batch_indices, batch, bad in loader:
                skipped += [(paths[i], err) for i, err in bad]
                if batch is not None:
                    feats = features_of(batch.to(device, non_blocking=True))
                    for name, feat in zip(names, feats):
                        if not keep_shape:
                            feat = feat.reshape(feat.shape[0], -1)
                        chunks[name].append(feat.float().cpu().numpy())
                    read += batch_indices
                bar.update(len(batch_indices) + len(bad))
    finally:
        model.train(was_training)
    features = {n: (np.concatenate(c) if c else np.zeros((0,), dtype=np.float32)) for n, c in chunks.items()}
    return ExtractResult(features, [paths[i] for i in read], skipped, load_report)
