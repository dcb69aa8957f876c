"""A dict whose keys read as attributes, the shape VISSL's model code expects of its config."""

from __future__ import annotations

import copy
from typing import Any, Mapping


class AttrDict(dict):
    """``dict`` with attribute access (``cfg.MODEL.TRUNK.NAME``); nested dicts convert on the way in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"config has no key {name!r}; keys here: {sorted(map(str, self.keys()))}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __deepcopy__(self, memo: dict) -> "AttrDict":
        return AttrDict({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __getstate__(self) -> dict:
        return dict(self)

    def __setstate__(self, state: dict) -> None:
        for key, value in state.items():
            self[key] = value

    def copy(self) -> "AttrDict":
        return AttrDict(self)

    def to_dict(self) -> dict:
        """Plain nested ``dict``/``list`` copy (for YAML or JSON dumps)."""
        return _unwrap(self)


def _wrap(value: Any) -> Any:
    if isinstance(value, AttrDict):
        return value
    if isinstance(value, Mapping):
        return AttrDict(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    return value
