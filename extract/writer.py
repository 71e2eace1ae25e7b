"""Background writer: disk I/O of one checkpoint's blocks overlaps with the forward pass.

The extraction loop hands each batch's reduced rows to :class:`CheckpointWriter` and
goes on computing; a thread writes them. Three rules make the result resumable:

* **Chunk-aligned writes.** Rows are buffered per block until whole chunks
  (``BlockMeta.chunk_rows``) are ready, so every chunk file is written once, complete
  (zarr writes each file to a temporary name and renames it), never patched row by row.
* **Progress after data.** A block's ``rows_done`` is raised only after the rows below
  it are written and synced to disk (the store fdatasyncs the chunk files; waiting for
  the disk here overlaps with the forward pass), so after a kill (even SIGKILL, even a
  power cut) every row under ``rows_done`` is on disk; rows at or above it are recomputed by the resumed run (the loop restarts at
  ``min(rows_done)`` rounded down to the batch size), and rows a block already holds
  are dropped here rather than written twice.
* **Completion last.** The tail is written, then blocks are marked complete, the
  layer order is set, and the checkpoint is marked complete (the store flushes the
  page cache to disk first).

The queue is bounded so a slow disk throttles the loop instead of filling memory, and
an error in the thread (a NaN refused by the store, a full disk) is raised in the
loop's thread at its next :meth:`CheckpointWriter.put` rather than hanging it.

**Parallel encoding.** When several blocks have chunks ready at once, their writes
(compression included) run on a small thread pool, one block per thread, when the
backend allows concurrent writes to different arrays (Zarr: one file per chunk;
HDF5 is one file and writes serially). A GPU produces features faster than one core
compresses them (~400 MB/s with lz4), so a single writing thread would become the
bottleneck there; on a CPU-only box whose cores all run the forward pass, the pool
changes little. Each block's chunks are still written in order, each followed by
its own ``rows_done``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from storage_schema import layout
from storage_schema.metadata import BlockMeta

__all__ = ["CheckpointWriter"]

_FINISH = object()
_ABORT = object()


class _BlockBuffer:
    """Rows of one block waiting for a whole chunk."""

    def __init__(self, meta: BlockMeta, n_samples: int) -> None:
        self.meta = meta
        self.n = n_samples
        self.pos = min(int(meta.rows_done), n_samples)  # next row not on disk
        self.parts: list[np.ndarray] = []
        self.buffered = 0

    @property
    def end(self) -> int:
        return self.pos + self.buffered

    def add(self, start: int, rows: np.ndarray) -> None:
        stop = start + len(rows)
        if stop <= self.end:  # already on disk (resumed run) or already buffered
            return
        if start > self.end:
            raise RuntimeError(f"writer got rows {start}..{stop} of block {self.meta.name!r} "
                               f"but expected row {self.end} next (rows would be missing)")
        self.parts.append(rows[self.end - start:])
        self.buffered += stop - self.end

    def take(self, final: bool) -> tuple[int, np.ndarray] | None:
        """Rows ready to write (whole chunks, or everything when ``final``), or None."""
        chunk = max(1, int(self.meta.chunk_rows))
        target = self.end if final else (self.end // chunk) * chunk
        if target <= self.pos:
            return None
        rows = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        out, rest = rows[: target - self.pos], rows[target - self.pos:]
        start = self.pos
        self.parts = [rest] if len(rest) else []
        self.buffered = len(rest)
        self.pos = target
        return start, out


class CheckpointWriter:
    """Write the blocks of one checkpoint from a background thread.

    Parameters
    ----------
    store : ActivationStore
        Open for appending; only this writer's thread touches it while the writer runs.
    run, checkpoint : str
    blocks : sequence of BlockMeta
        Every block of the checkpoint (layers and ``outputs``), as created; their
        ``rows_done`` say where each one resumes.
    layer_order : sequence of str
        Feature blocks in model order, recorded at completion.
    max_queue : int
        Batches in flight between the loop and the writer (memory bound).
    write_threads : int or None
        Blocks written concurrently (None: up to 4, bounded by the cores, where the
        backend supports concurrent writes; 1 otherwise).

    Examples
    --------
    >>> with CheckpointWriter(store, "run", "epoch_0001", metas, names) as w:  # doctest: +SKIP
    ...     for start, arrays in batches:
    ...         w.put(start, arrays)
    ...     w.finish()
    """

    def __init__(self, store, run: str, checkpoint: str, blocks: Sequence[BlockMeta],
                 layer_order: Sequence[str], *, max_queue: int = 8,
                 write_threads: int | None = None) -> None:
        self.store = store
        self.run = run
        self.checkpoint = checkpoint
        self.layer_order = list(layer_order)
        self._buffers = {b.name: _BlockBuffer(b, store.n_samples) for b in blocks}
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=f"writer-{run}/{checkpoint}",
                                        daemon=True)
        self._done = False
        self.write_seconds = 0.0
        self.rows_written = 0
        if write_threads is None:
            write_threads = min(4, os.cpu_count() or 1, len(self._buffers)) \
                if store.concurrent_writes else 1
        self._pool = ThreadPoolExecutor(write_threads, thread_name_prefix=f"write-{run}/{checkpoint}") \
            if write_threads > 1 else None
        self._count_lock = threading.Lock()

    # ----------------------------------------------------------------- loop side
    def __enter__(self) -> CheckpointWriter:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    def start(self) -> None:
        self._thread.start()

    @property
    def resume_row(self) -> int:
        """Smallest ``rows_done`` over the blocks: rows below it are on disk everywhere."""
        return min((b.pos for b in self._buffers.values()), default=0)

    def put(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Queue rows ``[start, start + k)`` of every block (a dict block name -> [k, F]).

        Raises
        ------
        BaseException
            The writer thread's error, as soon as it has one.
        """
        missing = set(self._buffers) - set(arrays)
        if missing:
            raise ValueError(f"batch lacks blocks {sorted(missing)}")
        self._put((int(start), dict(arrays)))

    def finish(self) -> None:
        """Write the tails, mark blocks and the checkpoint complete; wait for it all."""
        self._put(_FINISH)
        self._thread.join()
        self._done = True
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop the thread without completing anything (what is on disk stays resumable)."""
        self._done = True
        if self._thread.is_alive():
            while True:
                try:
                    self._queue.put(_ABORT, timeout=0.1)
                    break
                except queue.Full:
                    if not self._thread.is_alive():
                        break
            self._thread.join()

    def _put(self, item) -> None:
        self._raise_if_failed()
        while True:
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                self._raise_if_failed()
                if not self._thread.is_alive():
                    raise RuntimeError("the writer thread stopped unexpectedly") from None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # ----------------------------------------------------------------- thread side
    def _work(self) -> None:
        try:
            self._serve()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _ABORT:
                return
            if self._error is not None:  # keep draining so that put() never blocks
                if item is _FINISH:
                    return
                continue
            try:
                if item is _FINISH:
                    self._complete()
                    return
                start, arrays = item
                for name, buf in self._buffers.items():
                    buf.add(start, np.asarray(arrays[name]))
                self._write_ready(final=False)
            except BaseException as exc:  # handed to the loop's thread
                self._error = exc

    def _write_ready(self, final: bool) -> None:
        """Write every block's whole chunks (all rows when ``final``), blocks in parallel."""
        ready = [(buf, chunk) for buf in self._buffers.values()
                 if (chunk := buf.take(final)) is not None]
        if self._pool is None or len(ready) < 2:
            for buf, (start, rows) in ready:
                self._write(buf, start, rows)
            return
        futures = [self._pool.submit(self._write, buf, start, rows) for buf, (start, rows) in ready]
        wait(futures)  # every write ends before an error is raised: none is left running
        for f in futures:
            f.result()

    def _write(self, buf: _BlockBuffer, start: int, rows: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.store.write_rows(self.run, self.checkpoint, buf.meta.name, start, rows)
        self.store.set_rows_done(self.run, self.checkpoint, buf.meta.name, start + len(rows))
        with self._count_lock:
            self.write_seconds += time.perf_counter() - t0
            self.rows_written += len(rows)

    def _complete(self) -> None:
        for buf in self._buffers.values():
            if buf.end != buf.n:
                raise RuntimeError(f"block {buf.meta.name!r} got rows up to {buf.end} of {buf.n}")
        self._write_ready(final=True)
        for name in self._buffers:
            self.store.mark_block_complete(self.run, self.checkpoint, name)
        self.store.set_layer_order(self.run, self.checkpoint,
                                   [n for n in self.layer_order if n != layout.OUTPUTS])
        self.store.mark_checkpoint_complete(self.run, self.checkpoint)
