"""Output files: checked before any work (:func:`check_output_path`), then written atomically
(:func:`atomic_write`): readers see the old file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterable, Iterator, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]


def _identity(path: str):
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def check_output_path(
    path: PathLike,
    inputs: Iterable[Optional[PathLike]] = (),
    formats: Optional[Sequence[str]] = None,
    what: str = "output",
) -> str:
    """``path`` if a file can be written there; else ``ValueError`` saying why, before any work.

    ``path`` must not be a folder or another non-regular file, its folder must exist and be
    writable, and it must not be any of ``inputs`` (compared by identity, so a symlink or a hard
    link to an input is caught too). Nothing is created or changed. With ``formats`` (e.g.
    ``(".npz", ".pt")``) the extension must be one of them. ``what`` names the path in messages.
    """
    path = os.fspath(path)
    # Only an existing file can be an input.
    target = _identity(path)
    if target is not None:
        for item in inputs:
            if item is not None and _identity(os.fspath(item)) == target:
                raise ValueError(f"{what} {path!r}: is also an input ({os.fspath(item)}); writing there would "
                                 "overwrite the input")
    if os.path.isdir(path):
        hint = f" ending in {' or '.join(formats)}" if formats else ""
        raise ValueError(f"{what} {path!r}: is a folder; give a file name{hint}")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"{what} {path!r}: exists and is not a regular file")
    if formats is not None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in formats:
            raise ValueError(f"{what} {path!r}: unknown format {ext or '(no extension)'}; use one of {list(formats)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {path!r}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path!r}: folder {folder} is not writable")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success it is synced and
    renamed over ``path``, on error removed. The file gets the mode a plain ``open`` would give."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); keep an existing file's mode, else the default.
            os.fchmod(f.fileno(), os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
