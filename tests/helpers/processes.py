"""Killing a real process at a chosen moment (the resume tests' SIGKILL)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pytest


def sigkill_when(proc: subprocess.Popen, reached: Callable[[], bool], *, timeout: float = 120.0,
                 what: str = "a partial checkpoint") -> None:
    """SIGKILL ``proc`` as soon as ``reached()`` holds (polled every 50 ms), and reap it.

    Fails the test when the process ends on its own first (it could not be killed
    mid-way) or ``timeout`` passes without ``reached()``; the process is killed in every
    case, so a failing test leaves nothing running.
    """
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if reached():
                break
            assert proc.poll() is None, "the process finished before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail(f"{what} never appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
