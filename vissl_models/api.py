"""``create_model`` / ``list_models``: build a VISSL model by name, the way timm users expect.

A name is a config shipped with the package (``swav_resnet50``, the ``vissl_models/configs`` file
names), a model zoo entry (``swav_rn50_in1k_800ep``, see ``vissl-models zoo``) or a path to a
VISSL-shaped YAML file. Nothing is downloaded: weights are a file (or loaded checkpoint) you pass.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .config import ConfigError, ConfigNotFoundError, list_shipped_configs, shipped_config_path
from .pretrained import PretrainedCfg, default_pretrained_cfg

# create_model's keyword options and their defaults.
_OPTIONS: Dict[str, Any] = {
    "strict": True,
    "skip": (),
    "which": None,
    "device": None,
    "pretrained_cfg": None,
}
KINDS = ("config", "zoo")


class UnknownModelError(ConfigNotFoundError):
    """``create_model`` got a name that is neither a file, a shipped config nor a model zoo entry
    (a ``ConfigNotFoundError``, so also a ``ConfigError`` and a ``FileNotFoundError``)."""


def _near(name: str, names: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


def list_models(pattern: Union[str, Sequence[str]] = "*", kind: Optional[str] = None) -> List[str]:
    """Sorted names ``create_model`` accepts: shipped configs and model zoo entries.

    ``pattern`` is an ``fnmatch`` pattern (or a list of them; a name matching any is listed),
    e.g. ``"swav_*"`` or ``"*vit*"``. ``kind="config"`` or ``"zoo"`` lists only one of the two.
    """
    from . import zoo

    if kind not in (None,) + KINDS:
        raise ValueError(f"kind={kind!r}: expected None or one of {list(KINDS)}")
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"pattern must be a string or a list of strings, got {pattern!r}")
    names: List[str] = []
    if kind in (None, "config"):
        names += list_shipped_configs()
    if kind in (None, "zoo"):
        names += [e.name for e in zoo.list_models()]
    return sorted({n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)})


def resolve_model_name(name_or_path: Union[str, os.PathLike]) -> Tuple[str, str, Optional[Any]]:
    """``(kind, config path, zoo entry or None)`` for a name ``create_model`` accepts.

    An existing file wins (``kind="file"``), then a shipped config, then a model zoo entry.
    """
    from . import zoo

    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"name_or_path must be a config name, zoo entry name or YAML path, got {name_or_path!r}")
    if os.path.isfile(name_or_path):
        return "file", name_or_path, None
    configs = list_shipped_configs()
    stem = name_or_path[: -len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    if stem in configs:
        return "config", shipped_config_path(stem), None
    entries = {e.name: e for e in zoo.list_models()}
    if name_or_path in entries:
        entry = entries[name_or_path]
        return "zoo", entry.config_path, entry
    if os.sep in name_or_path or "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        raise UnknownModelError(f"config file {name_or_path!r} does not exist")
    raise UnknownModelError(
        f"{name_or_path!r} is not a shipped config, a model zoo entry or a file"
        f"{_near(name_or_path, configs + list(entries))} (list_models() lists every name)"
    )


def _check_options(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"create_model() got unexpected keyword arguments {unknown}; valid options: {sorted(_OPTIONS)}")
    opts = dict(_OPTIONS, **options)
    if not isinstance(opts["strict"], bool):
        raise TypeError(f"strict must be True or False, got {opts['strict']!r}")
    skip = opts["skip"]
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise TypeError(f"skip must be a sequence of key substrings (e.g. ('heads.',)), got {skip!r}")
    if opts["device"] is not None:
        try:
            opts["device"] = torch.device(opts["device"])
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device={opts['device']!r} is not a torch device ({e})") from None
    cfg = opts["pretrained_cfg"]
    if isinstance(cfg, dict):
        opts["pretrained_cfg"] = PretrainedCfg.from_dict(cfg, source="create_model")
    elif cfg is not None and not isinstance(cfg, PretrainedCfg):
        raise TypeError(f"pretrained_cfg must be a PretrainedCfg, a dict or None, got {type(cfg).__name__}")
    return opts


def create_model(
    name_or_path: Union[str, os.PathLike],
    weights: Any = None,
    overrides: Sequence[str] = (),
    **options: Any,
) -> torch.nn.Module:
    """Build a model from a shipped config name, a model zoo entry name or a YAML path; load ``weights``.

    Args:
        name_or_path: ``"swav_resnet50"`` (a shipped config), ``"swav_rn50_in1k_800ep"`` (a zoo
            entry: its config, and its preprocessing and top-1 as ``pretrained_cfg``) or a path
            to a VISSL-shaped YAML file (``vissl-models convert --to vissl`` writes one).
        weights: a checkpoint file in any layout the loader knows, a ``LoadedCheckpoint`` or a
            checkpoint dict, loaded through ``model.load_weights``; ``None`` keeps the random
            initialisation (nothing is ever downloaded).
        overrides: hydra-style ``config.MODEL...=VALUE`` strings applied to the config.
        **options:
            ``strict`` (default True): every key must match, else ``StateMismatchError`` and no
            model is returned; ``skip``: key substrings left alone (e.g. ``("heads.",)``);
            ``which``: ``teacher``/``student``/``ema`` for files holding several models;
            ``device``: where the model goes after loading; ``pretrained_cfg``: a
            ``PretrainedCfg`` (or dict) replacing the one derived from the name.

    Returns:
        The model (in training mode, as ``build_model`` returns it), with ``model.load_report``
        (the ``LoadReport``, or ``None`` without weights) and ``model.pretrained_cfg``.

    Raises:
        UnknownModelError: the name is nothing known (the message lists the closest names).
        TypeError: an unknown option (the message lists the valid ones) or a badly typed one.
    """
    from .config import load_config
    from .model import build_model

    opts = _check_options(options)
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of strings, got the string {overrides!r}")
    kind, path, entry = resolve_model_name(name_or_path)
    cfg = load_config(path, list(overrides))
    model = build_model(cfg.MODEL, cfg.OPTIMIZER)
    report = None
    if weights is not None:
        report = model.load_weights(weights, strict=opts["strict"], skip=tuple(opts["skip"]), which=opts["which"])
    if opts["device"] is not None:
        model.to(opts["device"])
    if opts["pretrained_cfg"] is not None:
        pretrained = opts["pretrained_cfg"]
    elif entry is not None:
        pretrained = entry.pretrained_cfg
    else:
        pretrained = default_pretrained_cfg(cfg.MODEL, source=os.path.basename(path))
    model.load_report = report
    model.pretrained_cfg = pretrained
    return model


__all__ = ["UnknownModelError", "create_model", "list_models", "resolve_model_name"]
