"""Writing extracted features: checks on the output path first, then an atomic write that a
SIGTERM cannot leave half-done."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Dict, Iterable, Iterator, Optional, Union

import numpy as np
import torch

from ..fileio import atomic_write

OUTPUT_FORMATS = (".npz", ".pt")
# Signals that end a run from outside (kill, a closed terminal); the write in progress is undone first.
_TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _identity(path: str):
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def check_output_path(path: Union[str, os.PathLike], inputs: Iterable[Optional[Union[str, os.PathLike]]] = ()) -> str:
    """``path`` if features can be written there; else ``ValueError`` saying why, before any work.

    The extension must be one of ``OUTPUT_FORMATS``; ``path`` must not be a folder or another
    non-regular file, its folder must exist and be writable, and it must not be any of ``inputs``
    (the weights, the config, the image list or an image): writing there would destroy them.
    """
    path = os.fspath(path)
    # Only an existing file can be an input; comparing identities (device, inode) also catches a
    # symlink or a hard link to one.
    target = _identity(path)
    if target is not None:
        for item in inputs:
            if item is not None and _identity(os.fspath(item)) == target:
                raise ValueError(f"output {path!r}: is also an input ({os.fspath(item)}); writing the features "
                                 "there would destroy it")
    if os.path.isdir(path):
        raise ValueError(f"output {path!r}: is a folder; give a file name ending in {' or '.join(OUTPUT_FORMATS)}")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"output {path!r}: exists and is not a regular file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"output {path!r}: unknown format {ext or '(no extension)'}; use one of {list(OUTPUT_FORMATS)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"output {path!r}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"output {path!r}: folder {folder} is not writable")
    return path


@contextlib.contextmanager
def undo_on_termination() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception inside the block, so the cleanup around it runs (an
    atomic write removes its temporary file), then end the process by the same signal as it would
    have ended without us. Outside the main thread (where handlers cannot be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread() or not _TERMINATING:
        yield
        return

    class _Terminated(BaseException):
        def __init__(self, signum: int) -> None:
            super().__init__(signum)
            self.signum = signum

    def handler(signum, frame):
        raise _Terminated(signum)

    # A signal someone chose to ignore stays ignored.
    previous = {s: signal.signal(s, handler) for s in _TERMINATING if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    except _Terminated as stop:
        for s, h in previous.items():
            signal.signal(s, h)
        previous = {}
        os.kill(os.getpid(), stop.signum)
        # Reached only when the previous handler returns instead of ending the process.
        raise InterruptedError(f"interrupted by signal {stop.signum} while writing; nothing was written") from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def save_features(result: Any, path: Union[str, os.PathLike]) -> None:
    """Write ``result`` (``features``: name -> array, ``paths``) to ``path``: ``.npz`` (one array per
    layer plus ``paths``) or ``.pt`` (a dict of tensors per layer plus ``paths``, a list of str).

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so ``path`` is either the old file or the complete new one, never a partial one,
    and no temporary file stays behind, even when the process gets SIGTERM meanwhile.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"output {path!r}: unknown format {ext or '(no extension)'}; use one of {list(OUTPUT_FORMATS)}")
    if "paths" in result.features:
        raise ValueError("a layer named 'paths' would clash with the list of image paths in the output")
    with undo_on_termination(), atomic_write(path) as f:
        if ext == ".npz":
            np.savez(f, paths=np.array(result.paths, dtype=str), **result.features)
        else:
            data: Dict[str, Any] = {n: torch.from_numpy(a) for n, a in result.features.items()}
            data["paths"] = list(result.paths)
            torch.save(data, f)
