"""Which images to read, and reading them one at a time without ever blocking on a strange file."""

from __future__ import annotations

import io
import os
import stat
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# An image file larger than this is refused rather than read into memory.
MAX_IMAGE_BYTES = 256 * 2**20

ImagesArg = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_images(images: ImagesArg) -> List[str]:
    """The image paths ``images`` stands for, in order.

    ``images`` is a folder (searched recursively for .jpg/.jpeg/.png, any case, sorted), a text
    file listing one path per line (blank lines and lines starting with ``#`` are ignored; relative
    paths are relative to the list file's folder), one image file, or a list of paths (taken as
    given, whatever their extension). Entries that are not regular files (named pipes, devices,
    sockets) are kept here and skipped, with a reason, when read (see ``read_image_bytes``).
    """
    if isinstance(images, (list, tuple)):
        paths = [os.fspath(p) for p in images]
    else:
        path = os.fspath(images)
        if os.path.isdir(path):
            paths = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                paths += [os.path.join(root, f) for f in sorted(files) if _is_image_name(f)]
        elif os.path.isfile(path) and _is_image_name(path):
            paths = [path]
        elif os.path.isfile(path):
            base = os.path.dirname(os.path.abspath(path))
            try:
                with open(path, encoding="utf-8") as f:
                    lines = [line.strip() for line in f]
            except UnicodeDecodeError as e:
                raise ValueError(f"images: {path!r} is neither an image (.jpg/.jpeg/.png) nor a UTF-8 list "
                                 f"of paths ({e.reason} at byte {e.start})") from None
            paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in lines if p and not p.startswith("#")]
        elif os.path.exists(path):
            raise ValueError(f"images: {path!r} is not a regular file or folder")
        else:
            raise FileNotFoundError(f"images: {path!r} is neither a folder, an image nor a list file")
    if not paths:
        raise ValueError(f"images: no images found in {images!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def read_image_bytes(path: str) -> bytes:
    """The bytes of the regular file ``path``.

    The file is opened without blocking and checked on the open descriptor, so a named pipe or a
    device (even one swapped in after the folder was listed) raises ``OSError`` at once instead of
    waiting for a writer or reading forever.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > MAX_IMAGE_BYTES:
            raise OSError(f"{info.st_size:,} bytes, more than the {MAX_IMAGE_BYTES:,} an image may have")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


def load_image(path: str):
    """Read ``path`` (see ``read_image_bytes``) and decode it as an RGB ``PIL.Image``."""
    from PIL import Image

    with Image.open(io.BytesIO(read_image_bytes(path))) as img:
        return img.convert("RGB")


class ImageFiles(torch.utils.data.Dataset):
    """``(index, tensor, None)`` per readable image, ``(index, None, error)`` per unreadable one.

    One image per item, so a sampler can hand any subset of indices to any process; the index
    says where each result belongs.
    """

    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[int, Optional[torch.Tensor], Optional[str]]:
        try:
            return index, self.transform(load_image(self.paths[index])), None
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, never fatal
            return index, None, f"{type(e).__name__}: {e}"


def collate_images(items):
    """Batch ``ImageFiles`` items: ``(indices read, stacked tensors or None, [(index, error)])``."""
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, x, err in items if err is not None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad
