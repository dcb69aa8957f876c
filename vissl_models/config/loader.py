"""Load VISSL-shaped YAML configs: defaults + file + hydra-style overrides, validated once."""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
import warnings
from importlib import resources
from typing import Any, Iterable, List, Mapping, Sequence, Union

import yaml

from .attr_dict import AttrDict

# Sections whose keys are free-form: they go to a builder as keyword arguments.
OPEN_SECTIONS = frozenset(
    {
        "MODEL.TRUNK.REGNET",
        "MODEL.TRUNK.EFFICIENT_NETS",
        "MODEL.TRUNK.VISION_TRANSFORMERS.MASKED_IMAGE_MODELING.PARAMS",
        "MODEL.AMP_PARAMS.AMP_ARGS",
    }
)

# Keys that some of the original's config files set although its defaults do not list them
# (the original reads them with ``.get``). They are accepted and kept as given.
OPTIONAL_KEYS = frozenset(
    {
        "MODEL.TRUNK.CONVIT.QKV_BIAS",
        "MODEL.TRUNK.CONVIT.QK_SCALE",
        "MODEL.TRUNK.VISION_TRANSFORMERS.CONVIT",
    }
)

# Only MODEL (and the OPTIMIZER keys models read) are validated; other sections are kept as given.
VALIDATED_SECTIONS = ("MODEL",)


class ConfigError(ValueError):
    """A config key or value that the model layer cannot accept."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-5`` as a float, as OmegaConf (YAML 1.2) does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text the way the original's configs were read (``1e-5`` is a float)."""
    return yaml.load(text, Loader=_Loader)


@functools.lru_cache(maxsize=1)
def _defaults_text() -> str:
    return resources.files("vissl_models.config").joinpath("defaults.yaml").read_text()


def default_config() -> AttrDict:
    """The library's complete defaults (``MODEL`` and ``OPTIMIZER``), as a fresh ``AttrDict``."""
    return AttrDict(parse_yaml(_defaults_text())["config"])


def _read_source(source: Union[str, os.PathLike, Mapping]) -> dict:
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path, "r", encoding="utf-8") as f:
            try:
                data = parse_yaml(f.read())
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    # VISSL files put everything under a root ``config:`` key; plain dicts may omit it.
    if "config" in data and isinstance(data["config"], Mapping):
        extra = set(data) - {"config", "defaults"}
        if extra:
            raise ConfigError(f"top-level keys beside 'config' are not understood: {sorted(extra)}")
        data = data["config"] or {}
    return dict(data)


def _lift_trunk_params(cfg: dict) -> None:
    """Old VISSL files nest trunk options under ``MODEL.TRUNK.TRUNK_PARAMS``; lift them up."""
    trunk = (cfg.get("MODEL") or {}).get("TRUNK")
    if isinstance(trunk, Mapping) and "TRUNK_PARAMS" in trunk:
        params = trunk.pop("TRUNK_PARAMS") or {}
        warnings.warn(
            "MODEL.TRUNK.TRUNK_PARAMS is the pre-1.0 VISSL layout; its sections were moved to "
            "MODEL.TRUNK", DeprecationWarning, stacklevel=3
        )
        for key, value in params.items():
            trunk[key] = value


def _nearest(key: str, candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"valid keys: {sorted(candidates)}"


def _merge(base: dict, update: Mapping, path: str) -> None:
    """Merge ``update`` into ``base`` in place; unknown keys under validated sections raise."""
    for key, value in update.items():
        full = f"{path}.{key}" if path else str(key)
        validated = full.split(".")[0] in VALIDATED_SECTIONS
        if key not in base:
            if validated and path not in OPEN_SECTIONS and full not in OPTIONAL_KEYS and path:
                raise ConfigError(f"unknown config key {full!r}: {_nearest(str(key), base.keys())}")
            base[key] = copy.deepcopy(value)
            continue
        current = base[key]
        if isinstance(current, dict) and isinstance(value, Mapping) and full not in OPEN_SECTIONS:
            _merge(current, value, full)
        elif isinstance(current, dict) and value is None:
            # ``KEY:`` with nothing under it in YAML means "keep the defaults".
            continue
        else:
            base[key] = copy.deepcopy(value) if isinstance(value, (Mapping, list)) else value


def _parse_override(text: str) -> tuple:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("+")
    if key.startswith("config."):
        key = key[len("config."):]
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    value = parse_yaml(raw) if raw.strip() else ""
    return key.split("."), value


def _apply_override(cfg: dict, parts: List[str], value: Any) -> None:
    node = cfg
    for i, part in enumerate(parts[:-1]):
        path = ".".join(parts[: i + 1])
        if part not in node:
            if path.split(".")[0] in VALIDATED_SECTIONS and ".".join(parts[:i]) not in OPEN_SECTIONS:
                raise ConfigError(f"unknown config key {path!r}: {_nearest(part, node.keys())}")
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"override {'.'.join(parts)}: {path!r} is not a section")
        node = node[part]
    _merge(node, {parts[-1]: value}, ".".join(parts[:-1]))


def load_config(
    source: Union[str, os.PathLike, Mapping, None] = None, overrides: Sequence[str] = ()
) -> AttrDict:
    """Load a VISSL-shaped config: the library defaults, then ``source``, then ``overrides``.

    Args:
        source: path to a YAML file (optional ``# @package _global_`` line, root ``config:``
            key) or a dict of the same shape; ``None`` gives the defaults.
        overrides: hydra-style dotted assignments, e.g.
            ``"config.MODEL.TRUNK.RESNETS.DEPTH=101"``.

    Returns:
        ``AttrDict`` with ``MODEL`` and ``OPTIMIZER`` complete and any other sections as given.

    Raises:
        ConfigError: for a ``MODEL`` key the defaults do not have (naming the nearest valid key).
    """
    cfg = default_config().to_dict()
    if source is not None:
        data = _read_source(source)
        _lift_trunk_params(data)
        _merge(cfg, data, "")
    for text in overrides:
        parts, value = _parse_override(text)
        _apply_override(cfg, parts, value)
    return AttrDict(cfg)
