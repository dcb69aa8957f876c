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

from .. import fileio
from ..fileio import atomic_write

OUTPUT_FORMATS = (".npz", ".pt")
# Signals that end a run from outside (kill, a closed terminal); the write in progress is undone first.
_TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def check_output_path(path: Union[str, os.PathLike], inputs: Iterable[Optional[Union[str, os.PathLike]]] = ()) -> str:
    """``path`` if features can be written there (``vissl_models.fileio.check_output_path`` with the
    extension one of ``OUTPUT_FORMATS``); else ``ValueError`` saying why, before any work. ``inputs``
    are the weights, the config, the image list or the images: writing there would destroy them."""
    return fileio.check_output_path(path, inputs, formats=OUTPUT_FORMATS)


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
