"""The one atomic file write of probestore: temporary file in the same folder, then rename.

Every file probestore writes whole (a results table, a CKA or TCAV table, a report
page or figure, a checkpoint manifest, a model state, a Zarr ``zarr.json``) goes through
here, so that every one has the same guarantees:

* **whole or absent**: the bytes go to a temporary file beside the target, which
  ``os.replace`` then renames over it; a reader, or a writer killed at any moment, sees
  the old file or the new one, never half of one;
* **unique temporary names** ``.<name>.<random>.tmp``, created with ``O_EXCL``, so
  concurrent writers of one target never write into each other's temporary file (and
  the results merge can find the temporaries of killed writers by that pattern);
* **no temporary left behind** on any failure (an exception, KeyboardInterrupt);
* **the mode any new file would get** (``0666`` minus the umask), or an explicit one;
* **durable by default**: the file is fsynced before the rename and its folder after,
  so a power cut after :func:`atomic_write` returns does not lose the new file.
  ``durable=False`` is for hot paths that establish durability another way (it keeps
  the whole-or-absent guarantee; the caller says why in a comment).

Two forms: :func:`atomic_write` takes the content (``str``/``bytes``) or a function
writing into a binary file object; :func:`atomic_path` is a context manager yielding
the temporary path, for libraries that write to a path themselves (pyarrow,
matplotlib's ``savefig``, pandas' ``to_csv``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_path", "atomic_write", "temp_name_pattern"]

Content = str | bytes | Callable[[BinaryIO], object]


def temp_name_pattern(path: str | os.PathLike[str]) -> str:
    """The glob matching the temporary files of writers of ``path`` (``.<name>.*.tmp``).

    For clean-up of temporaries left by writers that were killed (SIGKILL skips every
    ``finally``): only those can match, as live writers' names are unique and renamed
    away within one call.
    """
    return f".{Path(path).name}.*.tmp"


def atomic_write(path: str | os.PathLike[str], content: Content, *, durable: bool = True,
                 mode: int | None = None, encoding: str = "utf-8") -> Path:
    """Write ``content`` to ``path`` atomically; return ``path``.

    ``content`` is a ``str`` (written with ``encoding``), ``bytes``, or a callable that
    writes into the binary file object it is given (e.g. ``lambda f: torch.save(s, f)``).
    ``mode`` (e.g. ``0o600``) overrides the default ``0666 & ~umask``.
    """
    target = Path(path)
    with atomic_path(target, durable=durable, mode=mode) as tmp, open(tmp, "wb") as fh:
        if isinstance(content, str):
            fh.write(content.encode(encoding))
        elif isinstance(content, bytes | bytearray | memoryview):
            fh.write(content)
        else:
            content(fh)
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = True,
                mode: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on a clean exit, rename it over ``path``.

    The temporary file already exists (empty, with the final mode) when yielded; the
    body writes it by name, replacing its content. On any exception the temporary file
    is removed and ``path`` is left as it was.
    """
    target = Path(path)
    tmp = _create_temp(target, mode)
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(target.parent)


def _create_temp(target: Path, mode: int | None) -> Path:
    """Create ``.<name>.<random>.tmp`` beside ``target`` exclusively (never reuse a name).

    ``os.open(..., 0o666)`` applies the process umask itself, so the default mode is the
    one any new file would get, without reading the umask (which is not thread-safe).
    """
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:  # 2**-48 per try: another writer drew the same name
            continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; a file system that cannot fsync a folder is skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)
