"""Where blocks run: in-process, an embedded local Dask cluster, or an existing one.

Sizing the embedded cluster. Each worker process runs **one block at a time** (one
Dask thread: memory stays bounded by one block per worker) and gives that block
``threads_per_worker`` BLAS threads (``OMP/OPENBLAS/MKL_NUM_THREADS`` in the worker's
environment, and ``threadpoolctl`` inside the task). ``n_workers × threads_per_worker``
never exceeds the cores, so BLAS never oversubscribes them. Default: one BLAS thread
per worker on up to 4 cores (the solvers' GEMMs are small enough that processes scale
better than threads), two above; as many workers as fit. Everything listens on
127.0.0.1 unless ``host`` says otherwise.

Determinism: a block's numbers depend only on its data, the config and its BLAS thread
count, never on which worker ran it or in which order; the in-process mode uses the
same thread count as the local workers by default, so all three modes agree.

Running on several machines (a shared filesystem must show the store at the same path
on every worker)::

    # on the scheduler machine (port 8786; the dashboard on 8787)
    dask scheduler --host 10.0.0.5
    # on each worker machine: one process per 1-2 cores, one thread each
    OMP_NUM_THREADS=1 dask worker tcp://10.0.0.5:8786 --nworkers 8 --nthreads 1
    # anywhere
    probestore analyze STORE --scheduler tcp://10.0.0.5:8786

On a SLURM cluster, with ``dask-jobqueue`` (not a probestore dependency), start the
scheduler from Python and pass its address::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=8, processes=8, memory="32GB", walltime="02:00:00")
    cluster.scale(jobs=4)
    print(cluster.scheduler_address)   # -> probestore analyze STORE --scheduler <address>

A Dask scheduler executes whatever its clients send: never expose one to an untrusted
network (bind to 127.0.0.1, a private interface, or use Dask's TLS security).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from analyze.config import LOOPBACK, ExecutionSettings
from probestore.errors import ConfigError

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: The settings type a caller passes in comes back out (with the thread count resolved).
Settings = TypeVar("Settings", bound=ExecutionSettings)


def machine_cores() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int) -> int:
    """BLAS threads per worker when not given: 1 up to 4 cores, else 2."""
    return 1 if cores <= 4 else 2


def size_local_cluster(cores: int, n_workers: int | None = None,
                       threads_per_worker: int | None = None) -> tuple[int, int]:
    """Choose ``(n_workers, threads_per_worker)`` with ``workers × threads <= cores``.

    Raises
    ------
    ConfigError
        An explicit choice that oversubscribes the cores.
    """
    if threads_per_worker is None:
        threads_per_worker = default_threads(cores) if n_workers is None else max(1, cores // max(1, n_workers))
    if n_workers is None:
        n_workers = max(1, cores // threads_per_worker)
    if n_workers * threads_per_worker > cores:
        raise ConfigError(
            "the local cluster would oversubscribe the cores",
            where="n_workers × threads_per_worker",
            expected=f"at most {cores} (cores available to this process)",
            got=f"{n_workers} × {threads_per_worker} = {n_workers * threads_per_worker}",
            fix="lower --workers or the threads per worker (--threads-per-worker; --threads for "
                "`probestore tcav`), or leave them out to size automatically",
        )
    return n_workers, threads_per_worker


@dataclass
class TaskDone:
    """One finished task: its item and either a value or the exception it raised."""

    item: Any
    value: Any = None
    error: BaseException | None = None


class InProcessExecutor:
    """Runs tasks one after another in this process (``--scheduler none``)."""

    description = "in-process (synchronous)"
    dashboard = None

    def map_unordered(self, fn: Callable, store_path: str, items: Sequence, *rest: Any) -> Iterator[TaskDone]:
        """``fn(store_path, item, *rest)`` for each item, in order."""
        for item in items:
            try:
                yield TaskDone(item, fn(store_path, item, *rest))
            except Exception as exc:  # noqa: BLE001 - reported per block by the engine
                yield TaskDone(item, error=exc)


class DaskExecutor:
    """Submits one task per item to a ``distributed.Client`` and yields as they finish."""

    def __init__(self, client, description: str) -> None:
        self.client = client
        self.description = description
        self.dashboard = _dashboard_link(client)

    def map_unordered(self, fn: Callable, store_path: str, items: Sequence, *rest: Any) -> Iterator[TaskDone]:
        """``fn(store_path, item, *rest)`` for each item as Dask tasks, yielded as they finish."""
        from distributed import as_completed

        if not items:
            return
        # Large shared arguments (the per-sample data) go to every worker once.
        shared = [self.client.scatter(a, broadcast=True) if _is_large(a) else a for a in rest]
        tag = uuid.uuid4().hex[:8]
        futures = {}
        for i, item in enumerate(items):
            name = getattr(item, "name", str(i))
            fut = self.client.submit(fn, store_path, item, *shared, key=f"probestore-{tag}-{i}-{name}", pure=False)
            futures[fut] = item
        for fut in as_completed(list(futures)):
            item = futures.pop(fut)
            try:
                yield TaskDone(item, fut.result())
            except Exception as exc:  # noqa: BLE001 - KilledWorker, task errors: reported per block
                yield TaskDone(item, error=exc)
            finally:
                fut.release()


@runtime_checkable
class Broadcast(Protocol):
    """A shared task argument that is sent to every worker once instead of with each task.

    A class opts in by declaring ``broadcast_to_workers: ClassVar[bool] = True`` (the
    per-sample data of an analysis does): the executor then scatters it, so a thousand
    blocks do not each carry a copy of the labels and splits.
    """

    broadcast_to_workers: ClassVar[bool]


def _is_large(obj: Any) -> bool:
    return isinstance(obj, Broadcast) and bool(obj.broadcast_to_workers)


def _dashboard_link(client) -> str | None:
    try:
        import bokeh  # noqa: F401  - the dashboard needs it
    except ImportError:
        return None
    with contextlib.suppress(Exception):
        return client.dashboard_link
    return None


@contextlib.contextmanager
def open_executor(config: Settings, n_tasks: int, *, client=None,
                  log: Callable[[str], None] = print) -> Iterator[tuple[Any, Settings]]:
    """Start (and afterwards stop) what runs the blocks.

    Parameters
    ----------
    config : ExecutionSettings (or an AnalysisConfig, which is one)
        ``scheduler``, ``n_workers``, ``threads_per_worker``, ``memory_limit``, ``host``.
    n_tasks : int
        Blocks to run: no more local workers than that are started.
    client : distributed.Client, optional
        Use this client (the caller owns it) instead of the config's scheduler.
    log : callable
        Receives one-line messages (cluster size, dashboard address).

    Yields
    ------
    executor, config
        The executor, and the config with ``threads_per_worker`` resolved (the tasks
        use it to cap their BLAS threads).
    """
    if client is not None:
        ex = DaskExecutor(client, f"dask client {client.scheduler.address}")
        _announce(ex, log)
        yield ex, config
        return
    cores = machine_cores()
    if config.synchronous:
        threads = config.threads_per_worker or default_threads(cores)
        log(f"in-process, {threads} BLAS thread(s)")  # the caller's log labels it (analysis, similarity, tcav)
        yield InProcessExecutor(), config.replace(threads_per_worker=threads)
        return
    if config.scheduler == "local":
        workers, threads = size_local_cluster(cores, config.n_workers, config.threads_per_worker)
        workers = max(1, min(workers, n_tasks))
        yield from _local(config, workers, threads, log)
        return
    yield from _remote(config, log)


def _local(config: ExecutionSettings, workers: int, threads: int, log):
    from distributed import Client, LocalCluster

    if config.host != LOOPBACK:
        log(f"warning: the Dask scheduler, workers and dashboard listen on {config.host}: anyone who can "
            "reach it can run code as you; use only on a trusted network")
    try:
        import bokeh  # noqa: F401
        dashboard = f"{config.host}:0"
    except ImportError:
        dashboard = None
    env = {k: str(threads) for k in BLAS_ENV}
    with _sigint_ignored():  # workers spawned now inherit "ignore"; dask_setup keeps it so in restarted ones
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host=config.host,
            dashboard_address=dashboard,
            memory_limit=config.memory_limit,
            env=env,
            silence_logs=logging.ERROR,
            preload=[__name__],
        )
    try:
        with Client(cluster) as client:
            ex = DaskExecutor(client, f"local Dask cluster: {workers} worker(s) × {threads} BLAS thread(s) "
                                      f"on {config.host}")
            _announce(ex, log)
            yield ex, config.replace(threads_per_worker=threads)
    except KeyboardInterrupt:
        _silence_distributed()
        raise
    finally:
        cluster.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the embedded cluster's worker processes are spawned.

    An ignored signal stays ignored across ``exec`` (and Python then installs no
    KeyboardInterrupt handler), so a Ctrl-C that arrives while a worker is still
    importing cannot kill it with a traceback, nor leave it orphaned by aborting the
    cluster's start. The price: a Ctrl-C during those seconds of start-up (before the
    "analysis: local Dask cluster" line) is ignored; press it again once the cluster is up.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def dask_setup(worker: Any) -> None:
    """Worker preload hook (``preload=["analyze.cluster"]``): leave Ctrl-C to the analysis.

    Why: Ctrl-C in a terminal goes to the whole process group. Worker processes that
    receive it die mid-task and print dozens of lines of tracebacks before the CLI's one
    line. Ignoring SIGINT in every worker of the embedded cluster (restarted ones too:
    the hook runs in each new worker, in its main thread) leaves the interruption to the
    analysis process, which stops the cluster in order when it unwinds.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _silence_distributed() -> None:
    """After Ctrl-C: the cluster's shutdown logs lost connections and cancelled tasks, as expected."""
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _remote(config: ExecutionSettings, log):
    from distributed import Client

    try:
        client = Client(config.scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError("cannot reach the Dask scheduler", where=f"--scheduler {config.scheduler}",
                          got=f"{type(exc).__name__}: {exc}",
                          fix="check the address printed by `dask scheduler` and that it is running") from None
    try:
        try:
            client.wait_for_workers(1, timeout=60)
        except TimeoutError:
            raise ConfigError("the Dask cluster has no workers", where=config.scheduler,
                              fix="start workers with `dask worker ADDRESS --nthreads 1`") from None
        ex = DaskExecutor(client, f"Dask cluster {config.scheduler} "
                                  f"({len(client.scheduler_info(n_workers=-1)['workers'])} worker(s))")
        _announce(ex, log)
        yield ex, config
    except KeyboardInterrupt:
        _silence_distributed()
        raise
    finally:
        client.close()


def _announce(ex, log) -> None:
    log(ex.description)  # labelled by the caller's log (probestore.progress.Log)
    if ex.dashboard:
        log(f"dashboard at {ex.dashboard}")
    else:
        log("no Dask dashboard (it needs the `bokeh` package)")


def check_store_visible(executor, store_path: str) -> None:
    """Refuse to start when some worker cannot see the store (no shared filesystem)."""
    client = getattr(executor, "client", None)
    if client is None:
        return
    seen = client.run(os.path.exists, store_path)
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise ConfigError(
            "some Dask workers cannot see the store",
            where=store_path,
            expected="the store at the same path on every worker (a shared filesystem)",
            got=f"missing on {', '.join(blind[:5])}" + (" ..." if len(blind) > 5 else ""),
            fix="put the store on a filesystem every worker mounts at the same path",
        )
