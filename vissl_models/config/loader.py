"""Load VISSL-shaped YAML configs: defaults + file + hydra-style overrides, validated once."""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
import stat
import warnings
from importlib import resources
from typing import Any, Iterable, List, Mapping, Sequence, Tuple, Union

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


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A config file, shipped config name or config group option that does not exist."""


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

# Plain data only. SafeLoader already refuses python/* tags; binary, set, omap and pairs are refused
# too because no config value is one of them.
_ALLOWED_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map", "merge", "timestamp")
)
# A config file is a few kilobytes; this bounds what reading one can cost.
MAX_CONFIG_BYTES = 8 * 2**20


def _node_budget(text: str) -> int:
    """How many values a document of this length may expand to through aliases. Real configs stay
    near one value per 10 bytes; an alias bomb multiplies its size by orders of magnitude."""
    return 10_000 + 20 * len(text)


def _check_nodes(root: yaml.Node, budget: int, source: str) -> None:
    """Refuse disallowed tags, recursive aliases and documents expanding past ``budget`` values.

    Aliases share the anchored node in the composed graph, so the expanded size is computed once per
    distinct node: the cost is linear in the text however large the expansion would be.
    """
    sizes: dict = {}
    active: set = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{source}: a YAML alias refers to the node that contains it (a recursive structure)")
        if node.tag not in _ALLOWED_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(f"{source}: YAML tag {tag!r} is not allowed; configs hold plain data "
                              "(mappings, lists, strings, numbers, booleans, null)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > budget:
            raise ConfigError(f"{source}: the YAML would expand to more than {budget:,} values through its "
                              "aliases, far more than its size allows a config; refused as an alias bomb")
        sizes[key] = total
        return total

    size(root)


def parse_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse YAML text the way the original's configs were read (``1e-5`` is a float).

    Only plain data is accepted: any other tag, a recursive alias, or aliases expanding far beyond
    the text's size raise ``ConfigError`` naming ``source`` before anything is built.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, _node_budget(text), source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()


@functools.lru_cache(maxsize=1)
def _defaults_text() -> str:
    return resources.files("vissl_models.config").joinpath("defaults.yaml").read_text()


def default_config() -> AttrDict:
    """The library's complete defaults (``MODEL`` and ``OPTIMIZER``), as a fresh ``AttrDict``."""
    return AttrDict(parse_yaml(_defaults_text())["config"])


# Keys VISSL files may set beside ``config:`` (the original's defaults.yaml has them at the top level);
# they are kept in the loaded config. ``defaults`` (hydra's list) is read by hydra itself and dropped.
TOP_LEVEL_KEYS = ("engine_name", "VERSION", "node_id")
# The sections of the original's ``config`` (its defaults.yaml). Only MODEL and OPTIMIZER have defaults
# here; an override may name the others without ``+`` as it could in the original.
VISSL_SECTIONS = frozenset(
    {
        "VERBOSE", "LOG_FREQUENCY", "TEST_ONLY", "TEST_MODEL", "TEST_EVERY_NUM_EPOCH", "SEED_VALUE",
        "MULTI_PROCESSING_METHOD", "REPRODUCIBILITY", "HOOKS", "MONITORING", "PROFILING", "DATA", "METERS",
        "MACHINE", "MODEL", "LOSS", "OPTIMIZER", "EXTRACT_FEATURES", "DISTILLATION", "CLUSTERFIT", "RANKING",
        "TRAINER", "CHECKPOINT", "DISTRIBUTED", "SLURM", "SVM", "SVM_FEATURES_PATH", "IMG_RETRIEVAL",
        "NEAREST_NEIGHBOR", "LOW_SHOT_BENCHMARK", "GEO_LOCALIZATION",
    }
)
# Where ``+config/GROUP=NAME`` overrides look for GROUP/NAME.yaml, besides explicit roots (os.pathsep-separated).
CONFIG_PATH_ENV = "VISSL_MODELS_CONFIG_PATH"


def shipped_configs_dir():
    """The folder of the configs shipped with the package (an ``importlib.resources`` traversable)."""
    return resources.files("vissl_models.configs")


def list_shipped_configs() -> List[str]:
    """Names of the configs shipped with the package (``swav_resnet50``, ...), sorted."""
    return sorted(p.name[:-5] for p in shipped_configs_dir().iterdir() if p.name.endswith(".yaml"))


def shipped_config_path(name: Union[str, os.PathLike]) -> str:
    """The file of the shipped config ``name`` (``"swav_resnet50"`` or ``"swav_resnet50.yaml"``),
    always inside the installed package whatever the working directory.

    Raises:
        ConfigNotFoundError: no shipped config has that name (a path never names one); the message
            lists the closest shipped names.
    """
    text = os.fspath(name)
    stem = text[:-5] if text.endswith(".yaml") else text
    if stem and os.sep not in stem and "/" not in stem and (os.altsep is None or os.altsep not in stem):
        path = shipped_configs_dir().joinpath(f"{stem}.yaml")
        if path.is_file():
            return str(path)
    raise ConfigNotFoundError(f"no shipped config {text!r}; {_closest_shipped(text)}")


def _closest_shipped(text: str) -> str:
    names = list_shipped_configs()
    stem = os.path.basename(text)[:-5] if text.endswith(".yaml") else os.path.basename(text)
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.6)
    return f"did you mean {close}?" if close else f"shipped: {names}"


def resolve_config(name: Union[str, os.PathLike]) -> str:
    """The path of a config: ``name`` itself when it exists, else the shipped config of that name
    (``"swav_resnet50"`` or ``"swav_resnet50.yaml"``, see :func:`shipped_config_path`), from any
    working directory.

    Raises:
        ConfigNotFoundError (a ``ConfigError`` and a ``FileNotFoundError``): neither exists; the
            message lists the shipped names closest to ``name``.
    """
    text = os.fspath(name)
    if os.path.lexists(text):
        return text
    try:
        return shipped_config_path(text)
    except ConfigNotFoundError:
        raise ConfigNotFoundError(
            f"config {text!r} is neither a file nor a shipped config; {_closest_shipped(text)}") from None


def _read_yaml_file(path: str) -> Any:
    """Parse one YAML file; every way of failing is a ``ConfigError`` naming the file."""
    try:
        # Opened without blocking and checked on the descriptor: a named pipe or a device is refused
        # at once instead of waited on or read forever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigNotFoundError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path}: is a folder, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read it: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"config {path}: is a folder, not a YAML file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"config {path}: not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path}: {info.st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read it: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path}: larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_yaml(text, source=path)


def _read_source(source: Union[str, os.PathLike, Mapping]) -> dict:
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
        where = "config mapping"
    else:
        where = os.fspath(source)
        data = _read_yaml_file(where)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping at the top, got {type(data).__name__}")
    # VISSL files put everything under a root ``config:`` key; plain dicts may omit it.
    if "config" in data:
        inner = data["config"]
        if inner is not None and not isinstance(inner, Mapping):
            raise ConfigError(f"{where}: 'config' must be a mapping of sections, got {_short(inner)}")
        extra = set(data) - {"config", "defaults", *TOP_LEVEL_KEYS}
        if extra:
            raise ConfigError(f"{where}: top-level keys beside 'config' are not understood: {sorted(map(str, extra))}; "
                              f"accepted: {['config', 'defaults', *TOP_LEVEL_KEYS]}")
        top = {k: data[k] for k in TOP_LEVEL_KEYS if k in data}
        data = dict(inner or {})
        clash = set(top) & set(data)
        if clash:
            raise ConfigError(f"{where}: {sorted(clash)} set both beside and inside 'config'")
        data.update(top)
    return dict(data)


def _lift_trunk_params(cfg: dict) -> None:
    """Old VISSL files nest trunk options under ``MODEL.TRUNK.TRUNK_PARAMS``; lift them up."""
    model = cfg.get("MODEL")
    trunk = model.get("TRUNK") if isinstance(model, Mapping) else None
    if isinstance(trunk, Mapping) and "TRUNK_PARAMS" in trunk:
        params = trunk.pop("TRUNK_PARAMS") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"MODEL.TRUNK.TRUNK_PARAMS: is a section (a mapping of keys), got {_short(params)}")
        warnings.warn(
            "MODEL.TRUNK.TRUNK_PARAMS is the pre-1.0 VISSL layout; its sections were moved to "
            "MODEL.TRUNK", DeprecationWarning, stacklevel=3
        )
        for key, value in params.items():
            trunk[key] = value


def _short(value: Any, limit: int = 80) -> str:
    """``type value`` for an error message, the value's text cut to ``limit`` characters."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= limit else text[:limit] + '...'}"


def _nearest(key: str, candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"valid keys: {sorted(map(str, candidates))}"


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
        if isinstance(current, dict) and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{full}: is a section (a mapping of keys), got {_short(value)}")
        if isinstance(current, dict) and isinstance(value, Mapping) and full not in OPEN_SECTIONS:
            _merge(current, value, full)
        elif isinstance(current, dict) and value is None:
            # ``KEY:`` with nothing under it in YAML means "keep the defaults".
            continue
        else:
            base[key] = copy.deepcopy(value) if isinstance(value, (Mapping, list)) else value


def _key_paths(node: Mapping, prefix: str = "") -> Iterable[str]:
    for key, value in node.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        yield full
        if isinstance(value, Mapping):
            yield from _key_paths(value, full)


def _names_nothing(text: str, key: str, cfg: Mapping) -> ConfigError:
    """The error for an override whose key is no config section: suggest keys that end like it."""
    last = key.split(".")[-1]
    ends = [p for p in _key_paths(cfg) if p == last or p.endswith("." + last)]
    if ends:
        hint = f"did you mean {', '.join('config.' + p for p in ends[:3])}?"
    else:
        hint = f"a key starts with one of {sorted(set(map(str, cfg)) | VISSL_SECTIONS)}, or is added with '+'"
    return ConfigError(f"override {text!r} names nothing: {key.split('.')[0]!r} is not a config section; {hint}")


def _is_group_override(key: str) -> bool:
    """Hydra group selection: ``config=pretrain/swav/x`` or ``+config/GROUP/PATH=NAME``."""
    return key == "config" or "/" in key


def _split_override(text: str) -> Tuple[bool, str, str]:
    """``(added, key, raw value)`` of a ``KEY=VALUE`` override; ``added`` for a leading ``+``."""
    if not isinstance(text, str):
        raise ConfigError(f"override {text!r}: expected a string KEY=VALUE, got {type(text).__name__}")
    if text.strip().startswith("~"):
        raise ConfigError(f"override {text!r}: removing keys ('~') is not supported; set the key to a value")
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value (or +config/GROUP=NAME)")
    key, raw = text.split("=", 1)
    key = key.strip()
    added = key.startswith("+")
    key = key.lstrip("+")
    if key.startswith("config."):
        key = key[len("config."):]
    if not key or any(not part for part in key.split("." if not _is_group_override(key) else "/")):
        raise ConfigError(f"override {text!r} has an empty key or an empty part in it")
    return added, key, raw


def _group_roots(source: Any, config_root: Union[None, str, os.PathLike, Sequence], group: str) -> List[str]:
    """Folders to look in for ``group``: the explicit roots, then $VISSL_MODELS_CONFIG_PATH, then the
    main config's own tree (the folder above the nearest ancestor named like the group's first part,
    as ``configs/`` holds ``config/`` in the original), then the shipped configs."""
    roots: List[str] = []
    if config_root is not None:
        given = [config_root] if isinstance(config_root, (str, os.PathLike)) else list(config_root)
        roots += [os.fspath(r) for r in given]
    roots += [r for r in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if r]
    if isinstance(source, (str, os.PathLike)):
        first = group.split("/")[0]
        folder = os.path.dirname(os.path.abspath(os.fspath(source)))
        while True:
            parent = os.path.dirname(folder)
            if os.path.basename(folder) == first:
                roots.append(parent)
                break
            if parent == folder:
                break
            folder = parent
    shipped = shipped_configs_dir()
    if os.path.isdir(str(shipped)):
        roots.append(str(shipped))
    return roots


def _find_group_file(text: str, group: str, name: str, roots: Sequence[str]) -> str:
    parts = group.split("/") + name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"override {text!r}: group and option are relative names without '.' or '..' parts")
    relative = os.path.join(*parts)
    if not relative.endswith(".yaml"):
        relative += ".yaml"
    for root in roots:
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            return path
    searched = ", ".join(roots) if roots else "nowhere"
    raise ConfigNotFoundError(
        f"override {text!r} names nothing: no {relative} under the config roots ({searched}); give the folder "
        f"holding '{group.split('/')[0]}/' with load_config(..., config_root=...) or ${CONFIG_PATH_ENV}"
    )


def _apply_override(cfg: dict, text: str, key: str, added: bool, value: Any) -> None:
    parts = key.split(".")
    if not added and parts[0] not in cfg and parts[0] not in VISSL_SECTIONS and parts[0] not in TOP_LEVEL_KEYS:
        raise _names_nothing(text, key, cfg)
    node = cfg
    for i, part in enumerate(parts[:-1]):
        path = ".".join(parts[: i + 1])
        if part not in node:
            if path.split(".")[0] in VALIDATED_SECTIONS and ".".join(parts[:i]) not in OPEN_SECTIONS:
                raise ConfigError(f"unknown config key {path!r}: {_nearest(part, node.keys())}")
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"override {text!r}: {path!r} is not a section")
        node = node[part]
    _merge(node, {parts[-1]: value}, ".".join(parts[:-1]))


def load_config(
    source: Union[str, os.PathLike, Mapping, None] = None,
    overrides: Sequence[str] = (),
    config_root: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]] = None,
) -> AttrDict:
    """Load a VISSL-shaped config: the library defaults, then ``source``, then ``overrides``.

    Args:
        source: a shipped config name (``"swav_resnet50"``, from any working directory), a path to a
            YAML file (optional ``# @package _global_`` line, root ``config:`` key, optional top-level
            ``engine_name``) or a dict of the same shape; ``None`` gives the defaults.
        overrides: hydra-style, as the original's command line:
            ``"config.MODEL.TRUNK.RESNETS.DEPTH=101"`` sets a key (``+`` adds a key no section has);
            ``"+config/GROUP/PATH=NAME"`` merges the file ``config/GROUP/PATH/NAME.yaml`` into the
            config, and ``"config=PATH"`` the file ``config/PATH.yaml``. Group files are merged first,
            in the order given, then key assignments, as hydra composes.
        config_root: folder(s) holding the original's ``config/`` tree, searched first for group
            files; then ``$VISSL_MODELS_CONFIG_PATH`` (``os.pathsep``-separated), then the tree
            ``source`` lives in (the folder above its nearest ancestor named ``config``), then the
            shipped configs.

    Returns:
        ``AttrDict`` with ``MODEL`` and ``OPTIMIZER`` complete, any other sections as given, and
        ``engine_name`` when the file or an override sets it.

    Raises:
        ConfigError: for a bad file (missing, unreadable, not YAML, a tag, an alias bomb), a
            ``MODEL`` key the defaults do not have (naming the nearest valid key), a section given a
            plain value, or an override that names nothing.
    """
    cfg = default_config().to_dict()
    if isinstance(source, (str, os.PathLike)):
        source = resolve_config(source)
    elif source is not None and not isinstance(source, Mapping):
        raise ConfigError(f"load_config: expected a config name, path or mapping, got {type(source).__name__}")
    if isinstance(overrides, str):
        overrides = [overrides]
    parsed = [(text, *_split_override(text)) for text in overrides]
    sources: List[Any] = [] if source is None else [source]
    # Hydra composes the group files (the main selection first) before applying assignments.
    groups = [p for p in parsed if _is_group_override(p[2])]
    groups.sort(key=lambda p: p[2] != "config")
    for text, _, group, raw in groups:
        name = raw.strip()
        roots = _group_roots(source, config_root, group)
        sources.append(_find_group_file(text, group, name, roots))
    for item in sources:
        data = _read_source(item)
        _lift_trunk_params(data)
        _merge(cfg, data, "")
    for text, added, key, raw in parsed:
        if _is_group_override(key):
            continue
        value = parse_yaml(raw, source=f"override {text!r}") if raw.strip() else ""
        _apply_override(cfg, text, key, added, value)
    return AttrDict(cfg)
