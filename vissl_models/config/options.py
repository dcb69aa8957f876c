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
Field = Union[str, Tuple[str, Parser], Tuple[str, Parser, Any]]
KEY_CASES = ("upper", "as_is")


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


# Marks a field without a default, so ``None`` stays a usable default.
_REQUIRED = object()


def read_options(section: Mapping, key: str, fields: Sequence[Field],
                 parsers: Optional[Mapping[str, Parser]] = None, key_case: str = "upper") -> Dict[str, Any]:
    """``{name: parsed value}`` for ``fields``, read in that order from ``section`` (whose full name,
    with a trailing dot, is ``key``), so the first bad value is the one reported.

    A field is a bare name whose parser is ``parsers[name]``, a ``(name, parser)`` pair (the key
    must be present), or a ``(name, parser, default)`` triple: an absent key gives ``default`` as it
    is, unparsed, while a present key is always parsed (an explicit ``null`` included). Option
    ``name`` is read from key ``NAME`` with ``key_case="upper"`` (the upper-case sections), or from
    key ``name`` itself with ``key_case="as_is"`` (lower-case sections such as
    ``MODEL.TRUNK.REGNET``); errors name that key. This is the one declarative reader for trunk and
    head options.
    """
    if key_case not in KEY_CASES:
        raise ValueError(f"key_case: got {key_case!r}, expected one of {list(KEY_CASES)}")
    out: Dict[str, Any] = {}
    for field in fields:
        if isinstance(field, str):
            name, parse, default = field, (parsers or {})[field], _REQUIRED
        else:
            name, parse, default = (tuple(field) + (_REQUIRED,))[:3]
        yaml_key = name.upper() if key_case == "upper" else name
        if default is not _REQUIRED and yaml_key not in section:
            out[name] = default
        else:  # a missing required key raises the section's own missing-key error
            out[name] = parse(key + yaml_key, section[yaml_key])
    return out


def model_init_seed(model_config: Mapping) -> int:
    """``MODEL._MODEL_INIT_SEED`` (default 0): the seed trunks and heads initialise from."""
    return as_int("MODEL._MODEL_INIT_SEED", model_config.get("_MODEL_INIT_SEED", 0))
