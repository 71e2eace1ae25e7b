"""The one inter-process file lock of probestore, and the writer locks built on it.

Four users share one mechanism, so that blocking, shared vs exclusive, read-only
folders and clean-up behave the same everywhere:

* HDF5 access (``<file>.h5.lock``: shared to read, exclusive to write, per operation);
* store set-up by concurrent extraction processes (``<store>.extract-lock``);
* a results table (``<results>.lock``, taken without waiting by :func:`try_file_lock`:
  a second analysis writing the same table is refused, not queued);
* **writer locks**: one per checkpoint (``<store>.writer-<run>@<checkpoint>.lock``),
  held by the extraction process for the whole time it writes that checkpoint, so two
  ``probestore extract`` of one store never write the same checkpoint, while shards
  (``--shard i/n``), which write different checkpoints, still run side by side.

The lock is an ``fcntl.flock`` on a small side file. The kernel releases it when the
holder dies, even by SIGKILL, so a lock of a killed process is *stale* by construction:
the next process simply gets it (and is told whose it was, from the holder line the
killed process wrote into the file).

**No lock file is left behind.** Whoever releases a lock last removes its file: the
releaser tries to take the lock exclusively without waiting; if that works, nobody
else holds or waits for it and the file is unlinked before the lock is dropped. A
process that opened the file just before it was unlinked finds, once it holds the
lock, that the path no longer names its file (the inode differs) and starts again, so
two processes never both believe they hold one lock. Lock files therefore exist only
while a lock is held (or after a holder was killed), and read-only inspection of a
store whose folder cannot be written creates none at all.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from probestore.errors import ProbestoreError

__all__ = ["file_lock", "try_file_lock", "HeldLock", "writer_lock", "writer_lock_path",
           "held_writer_locks", "Holder", "LockHeldError"]

_MODES = {True: fcntl.LOCK_EX, False: fcntl.LOCK_SH}


class LockHeldError(ProbestoreError):
    """Another live process holds a writer lock that this one needs."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held, if it was killed) a writer lock."""

    pid: int
    host: str
    since: str

    def __str__(self) -> str:
        return f"process {self.pid} on host {self.host} since {self.since}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        parts = text.split()
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        return cls(int(parts[0]), parts[1], parts[2])


def _open_locked(path: Path, op: int) -> int | None:
    """An fd of ``path`` locked with ``op``, or None when ``LOCK_NB`` and it is busy.

    Retries until the locked file is still the one the path names (it may have been
    unlinked by its last holder between our ``open`` and our ``flock``).
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _release(fd: int, path: Path) -> None:
    """Drop a lock; remove its file when nobody else holds or waits for it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # another process holds or waits for it: it removes the file later
    else:
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except OSError:
            pass  # already gone, or a folder we may no longer write: harmless
    finally:
        os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def file_lock(lock_path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold a blocking ``fcntl`` lock on ``lock_path`` (created while held, then removed).

    A shared lock in a folder where the lock file cannot be created (read-only media,
    another user's folder) is skipped: readers can still read; writers could not write
    there anyway. An exclusive lock there raises the ``OSError``.
    """
    lock_path = Path(lock_path)
    try:
        fd = _open_locked(lock_path, _MODES[exclusive])
    except OSError:
        if exclusive:
            raise
        yield
        return
    assert fd is not None  # blocking: never None
    try:
        yield
    finally:
        _release(fd, lock_path)


class HeldLock:
    """A lock taken by :func:`try_file_lock`, held until :meth:`release` (or the ``with`` ends).

    For holders whose lock outlives one function (an object that takes it in one method
    and drops it in another); the kernel still drops it if the process dies.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (and remove its file when nobody else wants it); idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _release(fd, self.path)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_file_lock(lock_path: str | os.PathLike[str], *, exclusive: bool = True) -> HeldLock | None:
    """Take the lock on ``lock_path`` without waiting: a :class:`HeldLock`, or None when busy.

    The non-blocking form of :func:`file_lock` (same file, same clean-up), for callers
    that refuse to start, rather than queue, while another process holds the lock (two
    analyses writing one results table). An ``OSError`` creating the file is raised.
    """
    path = Path(lock_path)
    fd = _open_locked(path, _MODES[exclusive] | fcntl.LOCK_NB)
    return None if fd is None else HeldLock(fd, path)


def setup_lock_path(store_path: str | os.PathLike[str]) -> Path:
    """``<store>.extract-lock`` beside the store: held while a store is created, grown or edited.

    One definition for the extraction (which sets the store up under it) and
    ``probestore delete`` (which must not remove nodes while it is held).
    """
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".extract-lock")


def writer_lock_path(store_path: str | os.PathLike[str], run: str, checkpoint: str) -> Path:
    """``<store>.writer-<run>@<checkpoint>.lock`` beside the store (names cannot hold ``@``)."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name}.writer-{run}@{checkpoint}.lock")


def _read_holder(fd_or_path: int | Path) -> Holder | None:
    try:
        if isinstance(fd_or_path, int):
            text = os.pread(fd_or_path, 256, 0).decode("utf-8", "replace")
        else:
            text = Path(fd_or_path).read_text(encoding="utf-8", errors="replace")[:256]
    except OSError:
        return None
    return Holder.parse(text)


def _write_holder(fd: int) -> None:
    since = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    line = f"{os.getpid()} {socket.gethostname() or 'localhost'} {since}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, line, 0)


@contextlib.contextmanager
def writer_lock(lock_path: Path, *, what: str, wait: bool = False,
                on_wait: Callable[[Holder | None], None] | None = None) -> Iterator[Holder | None]:
    """Hold the exclusive writer lock of ``what`` (e.g. a checkpoint) for a whole write.

    Parameters
    ----------
    lock_path : pathlib.Path
        From :func:`writer_lock_path`.
    what : str
        Named in messages ("checkpoint run/epoch_0001 of STORE").
    wait : bool
        Block until the holder is done (``on_wait`` is called first with the holder),
        instead of raising :class:`LockHeldError`.

    Yields
    ------
    Holder or None
        The previous holder when its lock was stale (the process was killed while
        writing and its lock file is still there), else None.

    Raises
    ------
    LockHeldError
        ``wait=False`` and a live process holds the lock: "being written by process N
        on host H since T".
    """
    lock_path = Path(lock_path)
    fd = _open_locked(lock_path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        holder = _read_holder(lock_path)
        if not wait:
            raise LockHeldError(
                f"{what} is being written by {holder or 'another process'}",
                where=str(lock_path),
                fix="wait for that process to finish (or stop it), then rerun the same command; "
                    "to split the work on purpose, give each process its own --shard i/n")
        if on_wait is not None:
            on_wait(holder)
        fd = _open_locked(lock_path, fcntl.LOCK_EX)
        assert fd is not None
    try:
        stale = _read_holder(fd)  # a live holder removes its file; one left means a killed one
        _write_holder(fd)
        yield stale
    finally:
        _release(fd, lock_path)


def held_writer_locks(store_path: str | os.PathLike[str]) -> list[tuple[Path, Holder | None]]:
    """Writer locks of a store that a live process holds now (stale ones are not listed)."""
    store_path = Path(store_path)
    out = []
    try:
        candidates = sorted(store_path.parent.glob(f"{store_path.name}.writer-*.lock"))
    except OSError:
        return []
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            out.append((path, _read_holder(path)))
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.EINVAL):
                raise
        finally:
            os.close(fd)
    return out
