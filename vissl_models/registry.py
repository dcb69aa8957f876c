"""Name -> constructor registries for models, trunks and heads."""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, List, TypeVar

T = TypeVar("T", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message lists the names that are."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


class Registry:
    """A named table of constructors, filled by the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name``; a taken name raises."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"cannot register {self.kind} {name!r} twice "
                    f"(already {self._entries[name].__module__}.{self._entries[name].__qualname__})"
                )
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> Callable:
        """Remove and return an entry (for plugins and tests that register temporarily)."""
        try:
            return self._entries.pop(name)
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {self.names()}") from None

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {self.names()}"
            ) from None

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


MODELS = Registry("model")
TRUNKS = Registry("trunk")
HEADS = Registry("head")


def register_model(name: str):
    """Register a model class (built by ``build_model`` from ``MODEL.BASE_MODEL_NAME``)."""
    return MODELS.register(name)


def register_model_trunk(name: str):
    """Register a trunk: a callable ``(model_config, model_name) -> nn.Module``."""
    return TRUNKS.register(name)


def register_model_head(name: str):
    """Register a head: a callable ``(model_config, **kwargs) -> nn.Module``."""
    return HEADS.register(name)


def get_model_trunk(name: str) -> Callable:
    return TRUNKS.get(name)


def get_model_head(name: str) -> Callable:
    return HEADS.get(name)


def list_trunks() -> List[str]:
    return TRUNKS.names()


def list_heads() -> List[str]:
    return HEADS.names()
