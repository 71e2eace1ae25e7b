"""``run_analysis``: plan the blocks of a store, fit them (in parallel), write the table.

The driver does the bookkeeping and nothing heavy: it plans the blocks
(:mod:`analyze.jobs`), skips probes already in the results table, scatters the
per-sample data once, submits one task per block (:mod:`analyze.block_task`) and, as
each finishes, writes that block's rows as an atomic part file (:mod:`analyze.results`)
and optionally its weights. A killed analysis therefore loses only the blocks in flight;
rerunning the same command fits the rest and merges everything into the same table.

A block whose task raised something other than a data problem (a worker that died
too often, an I/O error) is not recorded: the summary lists it and a rerun retries it.
A block the store declares complete but that cannot be read (array deleted, chunks
lost: :mod:`analyze.block_checks`, or a store error while reading) becomes ``failed``
rows with the reason, is retried by every rerun, and makes the exit status non-zero:
no planned probe is ever silently absent. Rows measured on degenerate splits are
flagged by :mod:`analyze.split_checks` as they come back.

Determinism: every block is fitted from its own data only (no warm start from the
previous checkpoint's solution, which would chain the blocks of a layer and make the
numbers depend on which checkpoints were analysed before), the control labels are
seeded, the solvers are deterministic for a given BLAS thread count, and rows are
sorted by ``probe_id``: the table does not depend on the number of workers, the
scheduler or the order in which blocks finish.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analyze.block_task import BlockOutcome, SampleData, build_sample_data, run_block
from analyze.cluster import check_store_visible, open_executor
from analyze.config import AnalysisConfig
from analyze.jobs import Plan, format_plan, plan_jobs
from analyze.results import (
    UNREADABLE_BLOCK,
    ResultsWriter,
    default_results_path,
    results_paths,
    write_weights,
)
from analyze.split_checks import DEGENERATE, SplitChecker
from probestore.errors import ConfigError, FingerprintMismatchError, ProbestoreError
from probestore.progress import Log, Progress
from storage_schema.store import open_store


@dataclass
class AnalysisSummary:
    """What an analysis did (also printed at the end)."""

    results: Path
    blocks_total: int = 0
    blocks_done: int = 0
    blocks_skipped: int = 0
    probes_written: int = 0
    probes_skipped: int = 0
    status_counts: Counter = field(default_factory=Counter)
    lost_blocks: list[tuple[str, str]] = field(default_factory=list)
    #: names of lost blocks whose error a rerun cannot fix (the store or its data)
    stuck_blocks: set[str] = field(default_factory=set)
    #: (block, reason): declared complete by the store but unreadable; recorded as failed rows
    failed_blocks: list[tuple[str, str]] = field(default_factory=list)
    #: first message of the rows flagged degenerate_split in this run
    degenerate_example: str = ""
    seconds: float = 0.0
    rows: int = 0
    executor: str = ""
    #: (hyperparameter, "low" | "high") -> probes of the table whose selected value is a grid edge
    grid_edges: Counter = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        """Every planned block fitted (rows flagged degenerate_split or failed per probe still count)."""
        return not self.lost_blocks and not self.failed_blocks

    def format(self) -> str:
        rate = self.probes_written / self.seconds if self.seconds > 0 else 0.0
        status = ", ".join(f"{k} {v}" for k, v in sorted(self.status_counts.items())) or "none"
        lines = [
            f"analysis: {self.blocks_done}/{self.blocks_total} blocks fitted"
            + (f", {len(self.failed_blocks)} unreadable (recorded as failed)" if self.failed_blocks else "")
            + f", {self.probes_written} probes "
            f"({status}) in {self.seconds:.1f} s ({rate:.1f} probes/s); {self.probes_skipped} probes already "
            f"present were skipped",
            f"analysis: results table {self.results} ({self.rows} rows) and its CSV export",
        ]
        if self.grid_edges:
            lines.append(self.grid_edge_warning())
        lines += self._problem_lines()
        return "\n".join(lines)

    def _problem_lines(self) -> list[str]:
        """What went wrong, and what will help: a rerun only helps with transient failures."""
        lines = []
        if self.status_counts.get(DEGENERATE):
            lines.append(f"analysis: WARNING {self.status_counts[DEGENERATE]} probe(s) have status {DEGENERATE} "
                         f"(kept out of the report's figures), e.g. {self.degenerate_example}")
        for name, why in self.failed_blocks[:10]:
            lines.append(f"analysis: FAILED {why if why.startswith(name) else f'{name}: {why}'}")
        if self.failed_blocks:
            lines.append(f"analysis: {len(self.failed_blocks)} block(s) that the store declares complete could not "
                         f"be read; their probes are recorded as failed. {UNREADABLE_FIX}")
        for name, why in self.lost_blocks[:10]:
            lines.append(f"analysis: NOT DONE {name}: {why}")
        stuck = [n for n, _ in self.lost_blocks if n in self.stuck_blocks]
        transient = len(self.lost_blocks) - len(stuck)
        if transient:
            lines.append(f"analysis: {transient} block(s) not done (a worker died or an I/O error occurred); "
                         "rerun the same command to retry them")
        if stuck:
            lines.append(f"analysis: {len(stuck)} block(s) not done because of the store or its data: a rerun "
                         "alone will not help; do what the reason above says (`probestore validate STORE` "
                         "lists damage)")
        return lines

    def grid_edge_warning(self) -> str:
        """One line: how many probes chose the edge of their grid, and how to widen it."""
        parts = [f"{n} at the {'smallest' if edge == 'low' else 'largest'} {hp}"
                 for (hp, edge), n in sorted(self.grid_edges.items())]
        total = sum(self.grid_edges.values())
        return (f"analysis: WARNING {total} probe(s) selected the edge of their grid ({', '.join(parts)}): the "
                "optimum may lie outside it (column grid_edge); widen the grid with --Cs / --alphas or "
                "Cs / alphas in [analysis], and write to a new results path (-o)")


_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".json")
UNREADABLE_FIX = ("Repair the store (`probestore validate STORE` lists the damage; re-extract the damaged "
                  "checkpoints), then rerun the same command: unreadable blocks are retried on every run")


def resolve_results_path(store_path: str | Path, config: AnalysisConfig) -> Path:
    """The results table; only ``.parquet`` (its CSV export is written beside it).

    Why refuse ``-o res.csv``: the table is Parquet (it carries the dataset fingerprint
    and probe settings that make resuming safe), so writing it under a ``.csv`` name
    gave a file that every CSV reader, ``probestore report`` included, fails on.
    """
    path = Path(config.results) if config.results else default_results_path(store_path)
    if path.suffix.lower() != ".parquet":
        stem = path.with_suffix("") if path.suffix.lower() in _TEXT_SUFFIXES else path
        raise ConfigError(
            "the results table must be a .parquet file",
            where=f"-o/--results {path}",
            expected="a path ending in .parquet (the CSV export is written beside it, same name, .csv)",
            got=repr(path.suffix or "no suffix"),
            fix=f"use -o {stem}.parquet: {stem}.csv is written beside it",
        )
    return path


def plan_analysis(store_path: str | Path, config: AnalysisConfig) -> tuple[Plan, set[str]]:
    """The full plan and the probe ids already present in the results table."""
    with open_store(store_path, "r") as store:
        plan = plan_jobs(store, config)
        fingerprint = store.fingerprint
    writer = ResultsWriter(resolve_results_path(store_path, config),
                           {"fingerprint": fingerprint, "settings": config.probe_settings()})
    return plan, writer.done_ids(retry_failed=config.retry_failed)


def dry_run(store_path: str | Path, config: AnalysisConfig, *, deadline_s: float | None = None,
            estimate: bool = True) -> str:
    """The ``--dry-run`` text: what would be fitted, what is already done, and what it will cost.

    The cost lines (:mod:`analyze.cost_model`: time and memory per block and in total,
    workers for ``deadline_s``) come from a short calibration of this machine, cached;
    nothing is fitted.
    """
    plan, done = plan_analysis(store_path, config)
    pending = plan.pending(done)
    already = len(set(plan.probe_ids()) & done)
    text = format_plan(pending, max_block_bytes=config.max_block_bytes, done=already)
    for why in list(pending.unreadable.values())[:10]:
        text += f"\n  unreadable (its probes will be recorded as failed): {why}"
    text += f"\n  results: {resolve_results_path(store_path, config)}"
    if estimate:
        text += "\n" + _cost_text(store_path, pending, config, deadline_s)
    return text


def _cost_text(store_path: str | Path, pending: Plan, config: AnalysisConfig, deadline_s: float | None) -> str:
    from analyze import cost_model
    from analyze.cluster import default_threads, machine_cores, size_local_cluster

    cores = machine_cores()
    threads = config.threads_per_worker or default_threads(cores)
    workers = 1 if config.synchronous else (size_local_cluster(cores, config.n_workers, threads)[0]
                                            if config.scheduler == "local" else config.n_workers or 1)
    cal, source = cost_model.load_or_calibrate(threads)
    with open_store(store_path, "r") as store:
        splits = cost_model.split_sizes(store)
    estimates = cost_model.estimate_plan(pending, splits, config, cal)
    return cost_model.format_estimate(estimates, cal, source, workers=workers, deadline_s=deadline_s)


def run_analysis(
    store_path: str | Path,
    config: AnalysisConfig | None = None,
    *,
    client=None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> AnalysisSummary:
    """Fit every planned probe of a store and write the results table.

    Parameters
    ----------
    store_path : path
        A probestore store (Zarr or HDF5). On a remote cluster every worker must see it
        at this path.
    config : AnalysisConfig, optional
        Grids, filters, scheduler, results path (defaults: :class:`AnalysisConfig`).
    client : distributed.Client, optional
        Run on this client instead of starting what ``config.scheduler`` says.
    progress : bool
        Show progress over blocks: a bar on a terminal, else one timestamped line per
        block with rate and ETA (:class:`probestore.progress.Progress`).
    log : callable, optional
        Receives the one-line messages (default: print to stderr).

    Returns
    -------
    AnalysisSummary

    Raises
    ------
    FingerprintMismatchError
        The results table holds results of another dataset.
    NotFoundError, ConfigError
        A filter that matches nothing, an unusable store or cluster configuration.
    """
    config = config or AnalysisConfig()
    log = log or Log("analysis")
    store_path = str(Path(store_path).resolve())
    t_start = time.perf_counter()
    results_path = resolve_results_path(store_path, config)
    with open_store(store_path, "r") as store:
        plan = plan_jobs(store, config)
        metadata = {
            "fingerprint": store.fingerprint,
            "dataset": store.dataset.name,
            "store": store_path,
            "store_config_hash": store.config_hash,
            "analysis": config.to_dict(),
            "settings": config.probe_settings(),
        }
        with results_write_errors(results_path):
            writer = ResultsWriter(results_path, metadata).acquire()
        try:
            done = writer.done_ids(retry_failed=config.retry_failed)
            pending = plan.pending(done)
            sample = build_sample_data(store, pending, config)
            checker = SplitChecker(sample, store.dataset.class_names)
        except BaseException:
            writer.release()
            raise
    summary = AnalysisSummary(results=results_path, blocks_total=len(plan.jobs))
    summary.probes_skipped = len(set(plan.probe_ids()) & done)
    summary.blocks_skipped = len(plan.jobs) - len(pending.jobs)
    try:
        if pending.jobs:
            _run_pending(pending, store_path=store_path, sample=sample, config=config, client=client,
                         progress=progress, log=log, writer=writer, done=done, summary=summary, checker=checker)
        with results_write_errors(results_path):
            table = writer.finalize()
    finally:
        writer.release()
    summary.rows = len(table)
    edges = table[(table["grid_edge"] != "") & (table["status"] != "failed")] if "grid_edge" in table else table[:0]
    summary.grid_edges = Counter(zip(edges["hyperparameter"], edges["grid_edge"]))
    summary.seconds = time.perf_counter() - t_start
    log(summary.format())
    return summary


def _run_pending(pending: Plan, *, store_path: str, sample: SampleData, config: AnalysisConfig, client,
                 progress: bool, log: Callable[[str], None], writer: ResultsWriter, done: set[str],
                 summary: AnalysisSummary, checker: SplitChecker) -> None:
    """Submit the pending blocks and record each as it finishes.

    ``done``: probe ids already in the table (not counted again); ``summary`` is updated
    in place (blocks done, lost or unreadable, probes written).
    """
    want_weights = bool(config.save_weights)
    weights_path = results_paths(writer.path)["weights"] if want_weights else None
    for job in (j for j in pending.jobs if j.key in pending.unreadable):  # nothing to submit: record why
        _record_unreadable(job, pending.unreadable[job.key], sample, writer, summary)
    # Largest blocks first: the last tasks to finish are short ones (better packing).
    jobs = sorted((j for j in pending.jobs if j.key not in pending.unreadable),
                  key=lambda j: -j.read_bytes * max(1, len(j.probes)))
    if not jobs:
        return
    with open_executor(config, len(jobs), client=client, log=log) as (executor, task_config):
        summary.executor = executor.description
        check_store_visible(executor, store_path)
        bar = Progress(len(jobs), unit="block", log=log, enabled=progress)
        t0 = time.perf_counter()
        try:
            for task in executor.map_unordered(run_block, store_path, jobs, sample, task_config, want_weights):
                job = task.item
                if _is_block_data_error(task.error):
                    _record_unreadable(job, f"{job.name}: {task.error}", sample, writer, summary)
                elif task.error is not None:
                    summary.lost_blocks.append((job.name, _describe(task.error)))
                    if isinstance(task.error, ProbestoreError):
                        summary.stuck_blocks.add(job.name)
                else:
                    _record_outcome(job, task.value, writer=writer, weights_path=weights_path, done=done,
                                    summary=summary, checker=checker)
                rate = summary.probes_written / max(time.perf_counter() - t0, 1e-9)
                bar.update(1, f"{job.name}; {rate:.1f} probes/s, {pending.n_probes} probes planned")
        finally:
            bar.close()


def _record_outcome(job, outcome: BlockOutcome, *, writer: ResultsWriter, weights_path: Path | None,
                    done: set[str], summary: AnalysisSummary, checker: SplitChecker) -> None:
    """Write a finished block's rows (and weights, when ``weights_path``) and count them."""
    outcome.rows = checker.flag(outcome.rows)
    summary.degenerate_example = summary.degenerate_example or next(
        (r["message"] for r in outcome.rows if r["status"] == DEGENERATE), "")
    rows = [r for r in outcome.rows if r["probe_id"] not in done]
    with results_write_errors(writer.path):
        if weights_path is not None and outcome.weights:
            keep = {r["probe_id"] for r in rows}
            write_weights(weights_path, {k: v for k, v in outcome.weights.items() if k in keep},
                          outcome.weight_attrs)
        # The whole refitted group is written: a row already present comes back with the
        # same numbers, plus what its missing partner adds (selectivity once a failed
        # control probe is retried); the newest copy wins the merge.
        writer.write_part(job.key, outcome.rows)  # weights first: a part implies its weights
    summary.blocks_done += 1
    summary.probes_written += len(rows)
    summary.status_counts.update(r["status"] for r in rows)


@contextlib.contextmanager
def results_write_errors(results_path: Path):
    """An OS error while writing results (disk full, read-only, quota) as one clear line.

    Why: it would otherwise surface as a pyarrow / zarr traceback. Stopping loses
    nothing: part files are written atomically, so every block recorded before the
    error is kept and a rerun of the same command fits only the rest.
    """
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ProbestoreError(
            f"cannot write the analysis results ({reason})",
            where=str(results_path),
            got=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
            fix=f"{write_fix(exc, '-o/--results path')} and rerun the same command: blocks already written are "
                "kept and skipped",
        ) from None


def write_fix(exc: OSError, option: str) -> str:
    """What helps with an OS error on writing: space, permissions, or a file in the way."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"free disk space (or choose another {option})"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"choose a {option} in a directory you can write (or make this one writable)"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"a file or folder is in the way ({exc.filename}): choose another {option} (or move it)"
    return f"choose another {option} (or fix the cause above)"


def _is_block_data_error(exc: BaseException | None) -> bool:
    """The task could not read its block (damaged store), as opposed to a transient failure.

    Fitting errors never get here (they become failed rows inside the task); a store
    that changed during the analysis (fingerprint) is not a block's problem.
    """
    return isinstance(exc, ProbestoreError) and not isinstance(exc, FingerprintMismatchError)


def _record_unreadable(job, reason: str, sample, writer: ResultsWriter, summary: AnalysisSummary) -> None:
    """Failed rows for every probe of a block that cannot be read, so that none is silently absent."""
    from analyze.block_task import failed_rows

    text = reason if "fix:" in reason else f"{reason}; fix: {UNREADABLE_FIX[0].lower()}{UNREADABLE_FIX[1:]}"
    rows = failed_rows(job, job.probes, sample, UNREADABLE_BLOCK + text)
    with results_write_errors(writer.path):
        writer.write_part(job.key, rows)
    summary.failed_blocks.append((job.name, reason.split("; fix:")[0]))
    summary.probes_written += len(rows)
    summary.status_counts.update(r["status"] for r in rows)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]

