"""``run_analysis``: plan the blocks of a store, fit them (in parallel), write the table.

The driver does the bookkeeping and nothing heavy: it plans the blocks
(:mod:`analyze.jobs`), skips probes already in the results table, scatters the
per-sample data once, submits one task per block (:mod:`analyze.block_task`) and, as
each finishes, writes that block's rows as an atomic part file (:mod:`analyze.results`)
and optionally its weights. A killed analysis therefore loses only the blocks in flight;
rerunning the same command fits the rest and merges everything into the same table.

A block whose task raised something other than a data problem (a worker that died
too often, an I/O error) is not recorded: the summary lists it and a rerun retries it.

Determinism: every block is fitted from its own data only (no warm start from the
previous checkpoint's solution, which would chain the blocks of a layer and make the
numbers depend on which checkpoints were analysed before), the control labels are
seeded, the solvers are deterministic for a given BLAS thread count, and rows are
sorted by ``probe_id``: the table does not depend on the number of workers, the
scheduler or the order in which blocks finish.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analyze.block_task import BlockOutcome, build_sample_data, run_block
from analyze.cluster import check_store_visible, open_executor
from analyze.config import AnalysisConfig
from analyze.jobs import Plan, format_plan, plan_jobs
from analyze.results import ResultsWriter, default_results_path, results_paths, write_weights
from storage_schema.errors import ProbestoreError
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
    seconds: float = 0.0
    rows: int = 0
    executor: str = ""

    @property
    def complete(self) -> bool:
        return not self.lost_blocks

    def format(self) -> str:
        rate = self.probes_written / self.seconds if self.seconds > 0 else 0.0
        status = ", ".join(f"{k} {v}" for k, v in sorted(self.status_counts.items())) or "none"
        lines = [
            f"analysis: {self.blocks_done}/{self.blocks_total} blocks fitted, {self.probes_written} probes "
            f"({status}) in {self.seconds:.1f} s ({rate:.1f} probes/s); {self.probes_skipped} probes already "
            f"present were skipped",
            f"analysis: results table {self.results} ({self.rows} rows) and its CSV export",
        ]
        for name, why in self.lost_blocks[:10]:
            lines.append(f"analysis: NOT DONE {name}: {why}")
        if self.lost_blocks:
            lines.append(f"analysis: {len(self.lost_blocks)} block(s) not done; rerun the same command to retry them")
        return "\n".join(lines)


def resolve_results_path(store_path: str | Path, config: AnalysisConfig) -> Path:
    return Path(config.results) if config.results else default_results_path(store_path)


def plan_analysis(store_path: str | Path, config: AnalysisConfig) -> tuple[Plan, set[str]]:
    """The full plan and the probe ids already present in the results table."""
    with open_store(store_path, "r") as store:
        plan = plan_jobs(store, config)
        fingerprint = store.fingerprint
    writer = ResultsWriter(resolve_results_path(store_path, config),
                           {"fingerprint": fingerprint, "settings": config.probe_settings()})
    return plan, writer.done_ids(retry_failed=config.retry_failed)


def dry_run(store_path: str | Path, config: AnalysisConfig) -> str:
    """The ``--dry-run`` text: what would be fitted, and what is already done."""
    plan, done = plan_analysis(store_path, config)
    pending = plan.pending(done)
    already = len(set(plan.probe_ids()) & done)
    text = format_plan(pending, max_block_bytes=config.max_block_bytes, done=already)
    return text + f"\n  results: {resolve_results_path(store_path, config)}"


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
        Show a progress bar over blocks (tqdm, on stderr).
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
    log = log or (lambda msg: print(msg, file=sys.stderr))
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
        writer = ResultsWriter(results_path, metadata).acquire()
        try:
            done = writer.done_ids(retry_failed=config.retry_failed)
            pending = plan.pending(done)
            sample = build_sample_data(store, pending, config)
        except BaseException:
            writer.release()
            raise
    summary = AnalysisSummary(results=results_path, blocks_total=len(plan.jobs))
    summary.probes_skipped = len(set(plan.probe_ids()) & done)
    summary.blocks_skipped = len(plan.jobs) - len(pending.jobs)
    try:
        if pending.jobs:
            _run_pending(store_path, pending, sample, config, client, progress, log, writer, done, summary)
        with results_write_errors(results_path):
            table = writer.finalize()
    finally:
        writer.release()
    summary.rows = len(table)
    summary.seconds = time.perf_counter() - t_start
    log(summary.format())
    return summary


def _run_pending(store_path, pending: Plan, sample, config, client, progress, log, writer, done, summary):
    """Submit the pending blocks and record each as it finishes."""
    want_weights = bool(config.save_weights)
    weights_path = results_paths(writer.path)["weights"]
    # Largest blocks first: the last tasks to finish are short ones (better packing).
    jobs = sorted(pending.jobs, key=lambda j: -j.read_bytes * max(1, len(j.probes)))
    with open_executor(config, len(jobs), client=client, log=log) as (executor, task_config):
        summary.executor = executor.description
        check_store_visible(executor, store_path)
        bar = _progress(len(jobs), progress)
        t0 = time.perf_counter()
        try:
            for task in executor.map_unordered(run_block, store_path, jobs, sample, task_config, want_weights):
                job = task.item
                if task.error is not None:
                    summary.lost_blocks.append((job.name, _describe(task.error)))
                else:
                    outcome: BlockOutcome = task.value
                    rows = [r for r in outcome.rows if r["probe_id"] not in done]
                    with results_write_errors(writer.path):
                        if want_weights and outcome.weights:
                            keep = {r["probe_id"] for r in rows}
                            write_weights(weights_path, {k: v for k, v in outcome.weights.items() if k in keep},
                                          outcome.weight_attrs)
                        writer.write_part(job.key, rows)  # weights first: a part implies its weights
                    summary.blocks_done += 1
                    summary.probes_written += len(rows)
                    summary.status_counts.update(r["status"] for r in rows)
                bar.update(1)
                rate = summary.probes_written / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} probes/s, {pending.n_probes} probes planned")
        finally:
            bar.close()


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
            fix="free disk space (or choose a writable -o/--results path) and rerun the same command: "
                "blocks already written are kept and skipped",
        ) from exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="block", desc="analysis", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)
