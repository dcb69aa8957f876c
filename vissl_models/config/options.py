"""Checks used when a config section is read into typed options: one clear error per bad value."""

from __future__ import annotations

from typing import Any, Callable, Collection, Dict, Mapping, Optional, Sequence, Tuple, Union

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


Parser = Callable[[str, Any], Any]
Field = Union[str, Tuple[str, Parser]]


def positive_int(key: str, value: Any) -> int:
    return as_int(key, value, minimum=1)


def non_negative_int(key: str, value: Any) -> int:
    return as_int(key, value, minimum=0)


def non_negative_float(key: str, value: Any) -> float:
    return as_float(key, value, minimum=0.0)


def choice_of(allowed: Collection[Any]) -> Parser:
    """A parser accepting only the values in ``allowed``."""
    return lambda key, value: choice(key, value, allowed)


def probability(key: str, value: Any) -> float:
    """A number in ``[0, 1]``."""
    rate = as_float(key, value, minimum=0.0)
    if rate > 1.0:
        raise ConfigError(f"{key}: got {rate}, expected a probability in [0, 1]")
    return rate


def read_options(section: Mapping, key: str, fields: Sequence[Field],
                 parsers: Optional[Mapping[str, Parser]] = None) -> Dict[str, Any]:
    """``{name: parsed value}`` for ``fields``, read in that order from ``section`` (whose full name,
    with a trailing dot, is ``key``), so the first bad value is the one reported.

    A field is a ``(name, parser)`` pair or a bare name whose parser is ``parsers[name]``; option
    ``name`` is read from key ``NAME``. This is the one declarative reader for trunk and head options.
    """
    out: Dict[str, Any] = {}
    for field in fields:
        name, parse = (field, (parsers or {})[field]) if isinstance(field, str) else field
        out[name] = parse(key + name.upper(), section[name.upper()])
    return out
