"""The analysis on a real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from analyze.config import AnalysisConfig
from analyze.engine import run_analysis
from analyze.results import read_table, results_paths
from tests.helpers.analysis import ALPHAS, CS, comparable
from tests.helpers.stores import LAYERS, make_store

pytestmark = pytest.mark.slow

DASK = str(Path(sys.executable).with_name("dask"))


def _spawn(args, log):
    return subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two single-threaded workers as separate process groups."""
    sched_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed in the finally below
    procs = []
    try:
        procs.append(_spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                             "--scheduler-file", str(sched_file)], log))
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(_spawn(["worker", "--scheduler-file", str(sched_file), "--nworkers", "1",
                                 "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                 "--local-directory", str(tmp_path / "workers")], log))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, procs
    finally:
        for proc in reversed(procs):
            _kill(proc)
        log.close()


def _config(tmp_path, name, **kw):
    return AnalysisConfig(Cs=CS, alphas=ALPHAS, threads_per_worker=1, results=str(tmp_path / name), **kw)


def test_analysis_on_a_real_cluster_equals_the_local_one(tmp_path, cluster):
    address, _ = cluster
    store = make_store(tmp_path / "s.zarr", epochs=(0, 2), layers=LAYERS[:2])
    local = run_analysis(store, _config(tmp_path, "local.parquet", scheduler="none"), progress=False,
                         log=lambda m: None)
    lines = []
    remote = run_analysis(store, _config(tmp_path, "remote.parquet", scheduler=address), progress=False,
                          log=lines.append)
    assert remote.complete and remote.probes_written == local.probes_written > 0
    assert any(address in line and "2 worker(s)" in line for line in lines)
    pd.testing.assert_frame_equal(comparable(read_table(remote.results)), comparable(read_table(local.results)),
                                  check_exact=True)


def test_a_worker_killed_mid_analysis_loses_no_probe(tmp_path, cluster):
    address, procs = cluster
    store = make_store(tmp_path / "s.zarr", epochs=(0, 1, 2, 3))
    reference = read_table(run_analysis(store, _config(tmp_path, "ref.parquet", scheduler="none"),
                                        progress=False, log=lambda m: None).results)
    results = tmp_path / "killed.parquet"
    parts = results_paths(results)["parts"]
    killed = threading.Event()

    def kill_one_worker_after_some_blocks():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
            time.sleep(0.01)
        os.killpg(procs[1].pid, signal.SIGKILL)  # the worker's nanny and its worker process
        killed.set()

    killer = threading.Thread(target=kill_one_worker_after_some_blocks, daemon=True)
    killer.start()
    summary = run_analysis(store, _config(tmp_path, "killed.parquet", scheduler=address), progress=False,
                           log=lambda m: None)
    killer.join(timeout=10)
    assert killed.is_set() and procs[1].poll() is not None
    assert summary.complete, summary.lost_blocks
    table = read_table(results)
    assert table["probe_id"].is_unique and len(table) == len(reference)
    pd.testing.assert_frame_equal(comparable(table), comparable(reference), check_exact=True)
