"""Config loading: VISSL's MODEL defaults as data, YAML files and overrides, validation."""

from .attr_dict import AttrDict
from .loader import (
    CONFIG_PATH_ENV,
    ConfigError,
    ConfigNotFoundError,
    default_config,
    list_shipped_configs,
    load_config,
    parse_yaml,
    resolve_config,
    shipped_config_path,
)

__all__ = [
    "AttrDict",
    "CONFIG_PATH_ENV",
    "ConfigError",
    "ConfigNotFoundError",
    "default_config",
    "list_shipped_configs",
    "load_config",
    "parse_yaml",
    "resolve_config",
    "shipped_config_path",
]
