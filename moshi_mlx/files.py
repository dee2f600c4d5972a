"""Writing files so that nobody ever sees half of one: a temporary file in the same folder, renamed
into place when complete, with the mode a plainly created file would get (the user's umask applies).

This is the project's one atomic-write helper; `weights/` and `audio/` use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(directory: bool = False) -> int:
    """The permission bits `open()`/`mkdir()` would give a new file or folder under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _named(e: OSError, path: Path) -> OSError:
    """`e` re-pointed at the user's `path`, so no temporary name reaches a message."""
    return type(e)(e.errno, e.strerror, str(path)) if e.errno else OSError(f"{path}: {e}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path in `path`'s folder to write to; when the block completes the file is
    flushed to disk, given `normal_mode()` and renamed to `path`; when it raises, it is removed.

    The folder must exist. Errors name `path`, never the temporary file.
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _named(e, path) from e
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, normal_mode())  # mkstemp creates 0600
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _named(e, path) from e
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """`open(path, mode)` that replaces `path` only once the block completes (see `atomic_path`)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write writes new files; mode must start with 'w', got {mode!r}")
    if encoding is None and "b" not in mode:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
