"""Checks used when a config section is read into typed options: one clear error per bad value."""

from __future__ import annotations

from typing import Any, Collection, Sequence

from .loader import ConfigError


def choice(key: str, value: Any, allowed: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; else raise naming the key."""
    if value not in allowed:
        raise ConfigError(f"{key}: got {value!r}, expected one of {list(allowed)}")
    return value


def as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: got {value!r}, expected true or false")


def as_int(key: str, value: Any, minimum: int = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: got {value}, expected an integer >= {minimum}")
    return value


def as_float(key: str, value: Any, minimum: float = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: got {value!r}, expected a number")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: got {value}, expected a number >= {minimum}")
    return float(value)


def as_int_list(key: str, value: Any, min_len: int = 1) -> list:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) < min_len:
        raise ConfigError(f"{key}: got {value!r}, expected a list of at least {min_len} integers")
    return [as_int(f"{key}[{i}]", v) for i, v in enumerate(value)]
