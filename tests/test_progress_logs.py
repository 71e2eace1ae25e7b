"""Logs that work in batch jobs: lines as work finishes, timestamped, no carriage returns.

A real ``probestore extract`` of three checkpoints runs with stderr on a pipe: its
per-checkpoint lines are read while it is provably still running (the test holds the
writer lock of the third checkpoint, so the child waits for it), and carry a timestamp,
the rate and the ETA. A command on a pseudo-terminal draws a bar and writes no
timestamps. The analysis commands label their own lines (``analysis:``,
``similarity:``, ``tcav:``).
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import queue
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from probestore.cli import main
from probestore.locking import writer_lock, writer_lock_path
from probestore.progress import Log, Progress, format_eta, format_rate
from tests.conftest import MNIST_DIR, needs_data
from tests.helpers.experiments import write_experiment
from tests.helpers.stores import make_store
from tests.helpers.tcav import planted_store

REPO = Path(__file__).resolve().parents[1]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"
CHECKPOINT_LINE = re.compile(STAMP + r" extract: (\d)/3 checkpoints \(\d+%\), [\d.]+ checkpoints/(s|min), "
                             r"ETA \d+:\d\d:\d\d; (\w)/(epoch_\d+): 100 samples in [\d.]+ s \(\d+ samples/s\)")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# --------------------------------------------------------------------------- the module itself


def test_lines_outside_a_terminal_are_timestamped_labelled_and_flushed():
    class Counting(io.StringIO):
        flushes = 0

        def flush(self):
            Counting.flushes += 1

    out = Counting()
    log = Log("similarity", stream=out)
    log("in-process, 1 BLAS thread(s)")
    log("similarity: 3 pairs")  # already labelled: not twice
    bar = Progress(4, unit="block", log=log, desc="moments")
    for i in range(4):
        bar.update(1, f"r/e/l{i}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and Counting.flushes == 6  # one flush per line: nothing waits in a buffer
    assert all(re.match(STAMP + " similarity: ", line) for line in lines), lines
    assert "similarity: similarity" not in out.getvalue()
    assert re.search(r"moments 2/4 blocks \(50%\), [\d.]+ blocks/(s|min), ETA \d:\d\d:\d\d; r/e/l1$", lines[3])
    assert "\r" not in out.getvalue()


def test_a_terminal_gets_a_bar_and_untimestamped_lines():
    out = _Tty()
    log = Log("analysis", stream=out)
    log("starting")
    with Progress(3, unit="block", log=log) as bar:
        for _ in range(3):
            bar.update(1, "x")
    text = out.getvalue()
    assert text.startswith("analysis: starting\n")
    assert "\r" in text and "3/3" in text  # tqdm redraws in place


def test_sparse_lines_and_disabled_progress():
    out = io.StringIO()
    bar = Progress(1000, unit="sample", log=Log("extract", stream=out), desc="a/e", each=False, interval=3600)
    bar.update(500)
    assert out.getvalue() == ""  # a line a minute at most, not one per batch
    bar.interval = 0
    bar.update(100)
    assert "a/e 600/1000 samples (60%)" in out.getvalue()
    quiet = io.StringIO()
    Progress(5, unit="block", log=Log("x", stream=quiet), enabled=False).update(5)
    assert quiet.getvalue() == ""


def test_rate_and_eta_formats():
    assert format_rate(300, 0.1, "sample") == "3000 samples/s"
    assert format_rate(3, 2, "block") == "1.5 blocks/s"
    assert format_rate(1, 30, "checkpoint") == "2.0 checkpoints/min"
    assert format_eta(3725) == "1:02:05" and format_eta(float("inf")) == "?"


# --------------------------------------------------------------------------- a real extraction


def _extract_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "probestore", "extract", str(config)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}


def _reader(stream, lines: queue.Queue) -> None:
    """Lines as bytes split at ``\n`` only (text mode would turn a ``\r`` into a newline)."""
    for line in iter(stream.readline, b""):
        lines.put(line.decode("utf-8", "replace"))
    lines.put(None)


def _next_line(lines: queue.Queue, timeout: float = 120) -> str | None:
    return lines.get(timeout=timeout)


@needs_data(MNIST_DIR)
def test_extraction_lines_reach_a_pipe_while_it_runs(tmp_path):
    config = write_experiment(tmp_path, n=100)
    store = tmp_path / "store.zarr"
    # Hold the last checkpoint's writer lock: the child extracts the other two, then
    # waits for us; everything it wrote by then must already be readable.
    with writer_lock(writer_lock_path(store, "b", "epoch_0000"), what="test"):
        proc = subprocess.Popen(_extract_command(config), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stderr, lines), daemon=True).start()
        seen: list[str] = []
        try:
            while not any("waiting for" in line for line in seen):
                line = _next_line(lines)
                assert line is not None, f"the extraction ended early: {''.join(seen)}"
                seen.append(line)
            time.sleep(0.2)
            assert proc.poll() is None  # still running: it waits for the lock we hold
        except BaseException:
            proc.kill()
            raise
        done = [CHECKPOINT_LINE.match(line) for line in seen]
        assert [(m[1], m[3], m[4]) for m in done if m] == [("1", "a", "epoch_0000"), ("2", "a", "epoch_0001")], seen
    while (line := _next_line(lines)) is not None:  # (communicate() would race the reader for stderr)
        seen.append(line)
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, "".join(seen)
    text = "".join(seen)
    assert "\r" not in text  # no bar in a log file
    assert all(re.match(STAMP + " ", line) for line in seen), text
    assert [m[1] for m in map(CHECKPOINT_LINE.match, seen) if m] == ["1", "2", "3"], text
    assert "extracted 3 checkpoint(s)" in out.decode()


def test_a_command_on_a_terminal_draws_a_bar(tmp_path):
    """A real pseudo-terminal as stderr (``probestore analyze``: the same Progress as extract, no torch)."""
    make_store(tmp_path / "s.zarr", n=80)
    master, slave = pty.openpty()
    # a terminal 100 columns wide (a fresh pseudo-terminal has 0: tqdm would draw nothing)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    command = [sys.executable, "-m", "probestore", "analyze", "s.zarr", "-o", "r.parquet", "--workers", "0",
               "--probes", "classifier", "--layers", "l1"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode("utf-8", "replace")
    # tqdm's bar, redrawn in place ("\r" not followed by "\n": the terminal's own line ends are \r\n)
    assert re.search(r"\ranalysis: 100%\|.*\| 6/6 \[.*block/s, \w+/epoch_\d+/l1", text), text
    assert re.search(r"^analysis: 6/6 blocks fitted", text, re.MULTILINE), text  # no timestamp on a terminal
    assert not re.search(STAMP, text), text


# --------------------------------------------------------------------------- analysis commands label their lines


def _stderr_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "\r" not in err
    return err.splitlines()


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_analyze_writes_a_line_per_block(tmp_path, capsys, suffix):
    make_store(tmp_path / f"s{suffix}", n=80)
    assert main(["analyze", str(tmp_path / f"s{suffix}"), "-o", str(tmp_path / "r.parquet"), "--workers", "0",
                 "--probes", "classifier", "--layers", "l1"]) == 0
    lines = _stderr_lines(capsys)
    assert all(re.match(STAMP + " analysis: ", line) for line in lines), lines
    blocks = [line for line in lines if re.search(r"analysis: \d+/\d+ blocks \(\d+%\), .* ETA ", line)]
    assert blocks and re.search(r"(\d+)/\1 blocks \(100%\)", blocks[-1]), lines


def test_similarity_labels_its_own_lines(tmp_path, capsys):
    make_store(tmp_path / "s.zarr", n=80)
    assert main(["similarity", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "cka.parquet"), "--workers", "0"]) == 0
    lines = _stderr_lines(capsys)
    assert lines and all(re.match(STAMP + " similarity: ", line) for line in lines), lines
    assert not any("analysis:" in line for line in lines)
    assert any(re.search(r"similarity: moments \d+/\d+ blocks .* ETA ", line) for line in lines)
    assert any(re.search(r"similarity: CKA \d+/\d+ tasks .* ETA ", line) for line in lines)


def test_tcav_labels_its_own_lines(tmp_path, capsys):
    store, _ = planted_store(tmp_path / "t.zarr")
    store.close()
    assert main(["tcav", str(tmp_path / "t.zarr"), "-o", str(tmp_path / "t.parquet"), "--workers", "0",
                 "--repeats", "3", "--random-size", "20"]) == 0
    lines = _stderr_lines(capsys)
    assert any(re.match(STAMP + r" tcav: 1/1 blocks \(100%\), .*; r/e1/fc$", line) for line in lines), lines
    assert all(re.match(STAMP + " tcav: ", line) for line in lines), lines


def test_the_command_line_makes_stdout_line_buffered(monkeypatch, tmp_path):
    """A batch job's stdout is a file: the CLI's printed lines are flushed line by line."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    assert not out.line_buffering
    monkeypatch.setattr(sys, "stdout", out)
    main(["validate", str(tmp_path / "missing.zarr")])
    assert out.line_buffering
