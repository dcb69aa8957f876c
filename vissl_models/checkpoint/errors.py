"""The checkpoint error family, in its own module so every checkpoint module can import it.

Every failure to read, understand or load a checkpoint raises a :class:`CheckpointError`
subclass whose message names the file (and the key, where one is at fault). The base class is
a ``ValueError`` so callers written against the earlier errors keep working.
"""

from __future__ import annotations

import reprlib
from typing import Any, Optional


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, understood or loaded; the message names the file.

    ``path`` is the file (``"<memory>"`` for an in-memory object) and ``key`` the state-dict key
    at fault, when the error is about one.
    """

    def __init__(self, message: str, *, path: Optional[str] = None, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key

    # KeyError (a base of StateMismatchError) would quote the message; keep it readable.
    __str__ = BaseException.__str__


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file (or a shard or slice it lists) does not exist; also a ``FileNotFoundError``."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated, damaged, or not a PyTorch checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks for something loading refuses to do: objects outside the allowlist in the
    weights, constructors that would expand data, containers nested too deep, code archives."""


class InvalidValueError(CheckpointError):
    """A checkpoint value for a model key is not a plain dense tensor of a compatible dtype
    (meta, sparse, quantized, nested, complex into real, a numpy array, a list, a string...)."""


class StateMismatchError(CheckpointError, KeyError):
    """Keys missing from or unexpected in the checkpoint, or shapes that do not fit the model;
    ``report`` (a ``LoadReport``) lists them all. The model was not changed.

    Also a ``KeyError`` (and, through :class:`CheckpointError`, a ``ValueError``) for callers of
    the earlier ``set_classy_state`` errors."""

    def __init__(self, message: str, report: Any = None, *, path: Optional[str] = None,
                 key: Optional[str] = None) -> None:
        super().__init__(message, path=path, key=key)
        self.report = report


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 80, 80


def short_repr(value: Any) -> str:
    """A bounded ``repr`` for values read from a file: a shared-reference or deeply nested
    container cannot make an error message expensive (``repr`` of such a DAG is exponential)."""
    try:
        return _SHORT.repr(value)
    except Exception:  # a placeholder or other object whose repr fails
        return f"<{type(value).__name__}>"


__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "InvalidValueError",
    "StateMismatchError",
    "UnsafeCheckpointError",
    "short_repr",
]
