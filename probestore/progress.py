"""Progress and log lines of long commands: a bar on a terminal, timestamped lines in a log file.

Extraction and analysis run overnight with stderr redirected to a file. There a
carriage-return progress bar is noise, and a block-buffered stream keeps finished
work invisible for minutes and loses it on SIGKILL. So every command reports through
this one module: on a terminal, a tqdm bar (and plain lines); anywhere else, one line
per finished unit (checkpoint, block, task), each written and flushed at once, each
starting with an ISO 8601 timestamp and the command's name, with the rate and the
ETA::

    2026-11-26T03:10:42+00:00 extract: checkpoint 2/3 (67%), 0.7 checkpoints/s, ETA 0:00:01; a/epoch_0001 ...
    2026-11-26T03:12:07+00:00 similarity: moments 4/12 blocks (33%), 3.1 blocks/s, ETA 0:00:03

The stream is looked up when a line is written (``sys.stderr`` by default), so a
redirected or captured stderr is honoured.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["Log", "Progress", "is_terminal", "format_rate", "format_eta"]


def is_terminal(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


def _timestamp() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def format_rate(count: float, seconds: float, unit: str) -> str:
    """``"3125 samples/s"``, ``"1.5 blocks/s"`` or, below one per second, ``"12.0 blocks/min"``."""
    rate = count / seconds if seconds > 0 else 0.0
    if rate >= 100:
        return f"{rate:.0f} {unit}s/s"
    if rate >= 1:
        return f"{rate:.1f} {unit}s/s"
    return f"{rate * 60:.1f} {unit}s/min"


def format_bytes(nbytes: float) -> str:
    """``"512 B"``, ``"41.0 MiB"``, ``"1.2 TiB"``: sizes in store listings, plans and estimates."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (``"?"`` when unknown)."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Log:
    """The one-line messages of a command, labelled with its name (``"tcav: ..."``).

    Outside a terminal each line also starts with a timestamp. A message that already
    starts with the label is not labelled twice. Each line is flushed when written.

    Parameters
    ----------
    label : str
        The command's name (``"extract"``, ``"analysis"``, ``"similarity"``, ``"tcav"``).
    stream : file, optional
        Where lines go (default: ``sys.stderr`` at the time of writing).
    """

    def __init__(self, label: str = "", stream: IO[str] | None = None) -> None:
        self.label = label
        self._stream = stream

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def line(self, message: str) -> str:
        """The text written for one line of ``message`` (without the newline)."""
        labelled = message
        if self.label and not message.startswith(f"{self.label}:"):
            labelled = f"{self.label}: {message}"
        return labelled if is_terminal(self.stream) else f"{_timestamp()} {labelled}"

    def __call__(self, message: str) -> None:
        stream = self.stream
        for part in str(message).splitlines() or [""]:
            stream.write(self.line(part) + "\n")
        stream.flush()


class Progress:
    """Counted work: a tqdm bar on a terminal, timestamped lines elsewhere.

    Parameters
    ----------
    total : int
        Units of work in all (checkpoints, blocks, samples).
    unit : str
        Singular name of a unit (``"block"``).
    log : Log or callable, optional
        Where lines go: a :class:`Log` (its stream decides bar or lines, its label
        names the command), or any callable taking a line (never a bar). Default:
        an unlabelled :class:`Log` on stderr.
    desc : str
        What is counted (``"a/epoch_0001"``, ``"moments"``); shown before the count.
    initial : int
        Units already done (a resumed checkpoint); not counted in the rate.
    enabled : bool
        False: neither bar nor lines (``--no-progress``).
    bar : bool
        Draw a bar on a terminal. False: lines everywhere (an outer count whose inner
        work draws its own bar).
    each : bool
        Outside a bar, write a line at every :meth:`update` (checkpoints, blocks).
        False: only every ``interval`` seconds (samples of one long checkpoint).
    interval : float
        Seconds between lines when ``each`` is False.
    """

    def __init__(self, total: int, *, unit: str, log: Callable[[str], None] | None = None, desc: str = "",
                 initial: int = 0, enabled: bool = True, bar: bool = True, each: bool = True,
                 interval: float = 60.0) -> None:
        self.total, self.unit, self.desc = int(total), unit, desc
        self.log: Callable[[str], None] = log if log is not None else Log()
        self.done = self.initial = int(initial)
        self.each, self.interval = each, interval
        self.enabled = enabled
        self._t0 = self._last = time.perf_counter()
        self._bar: Any = None
        stream = self.log.stream if isinstance(self.log, Log) else None
        if enabled and bar and stream is not None and is_terminal(stream):
            from tqdm.auto import tqdm

            label = self.log.label if isinstance(self.log, Log) else ""
            prefix = f"{label}: {desc}" if label and desc else (desc or label)
            self._bar = tqdm(total=self.total, initial=self.done, unit=unit, unit_scale=unit == "sample",
                             desc=prefix, file=stream, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more units done; ``note`` says which (shown on the bar or at the end of the line)."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            if note:  # before the update, which redraws the bar
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.each or now - self._last >= self.interval:
            self._last = now
            self.log(self.status(note))

    def status(self, note: str = "") -> str:
        """``"desc 3/20 blocks (15%), 1.2 blocks/s, ETA 0:00:14; note"``."""
        elapsed = time.perf_counter() - self._t0
        counted = self.done - self.initial
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc + ' ' if self.desc else ''}{self.done}/{self.total} {self.unit}s{pct}"
        if counted > 0 and elapsed > 0:
            eta = (self.total - self.done) * elapsed / counted
            text += f", {format_rate(counted, elapsed, self.unit)}, ETA {format_eta(eta)}"
        return text + (f"; {note}" if note else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
