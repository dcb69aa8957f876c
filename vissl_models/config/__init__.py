"""Config loading: VISSL's MODEL defaults as data, YAML files and overrides, validation."""

from .attr_dict import AttrDict
from .loader import ConfigError, default_config, load_config, parse_yaml

__all__ = ["AttrDict", "ConfigError", "default_config", "load_config", "parse_yaml"]
