"""One inter-process file lock for every writer that shares a store.

HDF5 access and store set-up by concurrent extraction shards both serialize on an
``fcntl`` lock held on a small side file; keeping the mechanism in one place keeps
their semantics (blocking, shared vs exclusive, read-only folders) the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(lock_path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold a blocking ``fcntl`` lock on ``lock_path`` (created if missing).

    A shared lock in a folder where the lock file cannot be created (read-only
    media) is skipped: readers can still read; writers could not write there anyway.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
