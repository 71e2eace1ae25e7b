"""Results that used to come out wrong or incomplete with exit status 0, and errors that were tracebacks.

Issue 12, analysis side: splits that lack classes, an empty test split, complete blocks
whose array is gone, failures a rerun cannot fix, unwritable or damaged results
tables, the report's silence about flagged probes, Ctrl-C with the embedded cluster,
and the report's file modes. Real Zarr and HDF5 stores, the real CLI, real processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyze.config import AnalysisConfig
from analyze.engine import AnalysisSummary, run_analysis
from analyze.results import read_table, results_paths
from analyze.split_checks import DEGENERATE, SplitChecker
from probestore.cli import main
from storage_schema import layout
from storage_schema.store import create_store, open_store

REPO = Path(__file__).resolve().parents[1]
BACKENDS = (".zarr", ".h5")
CS = (0.01, 0.1, 1.0, 10.0)
ALPHAS = (0.1, 10.0, 1e3)
FAST = ["--scheduler", "none", "--Cs", ",".join(map(str, CS)), "--alphas", ",".join(map(str, ALPHAS)), "--no-progress"]


def build_store(path, splits, *, n_classes=3, F=8, corrupt=0.0, checkpoints=("e1",), seed=0):
    """A class-structured store with the given split codes (0 train, 1 valid, 2 test)."""
    splits = np.asarray(splits, dtype=np.int8)
    n = splits.size
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    store = create_store(path, dataset_name="t", sample_ids=[f"s{i:04d}" for i in range(n)], labels=y,
                         splits=splits, class_names=[f"c{k}" for k in range(n_classes)])
    store.set_sample_types(rng.integers(0, 4 * n_classes, n), method={"kind": "test"})
    store.add_target("area", rng.normal(size=n), "continuous")
    train_labels = y.copy()
    flip = np.flatnonzero(splits == 0)[: int(corrupt * np.sum(splits == 0))]
    train_labels[flip] = (y[flip] + 1) % n_classes
    store.add_run("r", model={"name": "mlp"}, architecture="mlp", train_labels=train_labels,
                  corrupted=train_labels != y, corruption={"fraction": corrupt, "mode": "uniform", "seed": 0})
    centers = rng.normal(size=(n_classes, F)) * 2
    for ck in checkpoints:
        store.add_checkpoint("r", ck, epoch=int(ck[1:]))
        for layer in ("l1", "l2"):
            store.create_block("r", ck, layer, n_features=F)
            store.write_rows("r", ck, layer, 0, (centers[y] + rng.normal(size=(n, F))).astype(np.float32))
            store.mark_block_complete("r", ck, layer)
        store.create_block("r", ck, layout.OUTPUTS, n_features=n_classes)
        store.write_rows("r", ck, layout.OUTPUTS, 0, rng.normal(size=(n, n_classes)).astype(np.float32))
        store.mark_block_complete("r", ck, layout.OUTPUTS)
        store.set_layer_order("r", ck, ["l1", "l2"])
        store.mark_checkpoint_complete("r", ck)
    store.close()
    return Path(path)


def stratified(n=150, n_classes=3, valid_classes=None, test_classes=None, empty_test=False):
    """60/20/20 split per class; valid (test) only from ``valid_classes`` (``test_classes``)."""
    y = np.arange(n) % n_classes
    splits = np.zeros(n, np.int8)
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        k = len(idx) // 5
        if valid_classes is None or c in valid_classes:
            splits[idx[:k]] = 1
        if not empty_test and (test_classes is None or c in test_classes):
            splits[idx[k:2 * k]] = 2
    return splits


def analyse(store, tmp_path, name="res.parquet", **kw):
    cfg = AnalysisConfig(scheduler="none", Cs=CS, alphas=ALPHAS, results=str(tmp_path / name), **kw)
    logs: list[str] = []
    summary = run_analysis(store, cfg, progress=False, log=logs.append)
    return summary, read_table(summary.results).set_index("probe_id"), "\n".join(logs)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, command: str) -> str:
    """The stderr of a refused command: exactly one `probestore CMD: error:` line, no traceback."""
    lines = [line for line in err.strip().splitlines() if line]
    assert "Traceback" not in err, err
    assert lines[-1].startswith(f"probestore {command}: error:"), err
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1, err
    return lines[-1]


# ---------------------------------------------------------------------------- 1, 4: degenerate splits


@pytest.mark.parametrize("suffix", BACKENDS)
@pytest.mark.parametrize("valid_classes, missing", [((0,), "1 (c1), 2 (c2)"), ((0, 2), "1 (c1)")])
def test_a_valid_split_that_lacks_classes_flags_its_classifier_probes(tmp_path, suffix, valid_classes, missing):
    store = build_store(tmp_path / f"s{suffix}", stratified(valid_classes=valid_classes), corrupt=0.2)
    summary, df, log = analyse(store, tmp_path)
    for pid in ("r/e1/l1/classifier/true_labels", "r/e1/l1/classifier/train_labels", "r/e1/l1/control/control_labels"):
        row = df.loc[pid]
        assert row.status == DEGENERATE, (pid, row.status, row.message)
        assert f"the valid split lacks class(es) {missing} present in train" in row.message
        assert "fix: re-create the store with stratified splits" in row.message
        assert np.isfinite(row.test_error)  # still fitted: the numbers are there, and flagged
    assert (df.loc[df.probe == "rcv", "status"] == "ok").all()  # RCVs need no classes
    assert (df.loc[df.probe == "model_output", "status"] == "ok").all()
    assert f"have status {DEGENERATE}" in log and missing in log


@pytest.mark.parametrize("suffix", BACKENDS)
def test_a_test_split_that_lacks_a_class_or_is_empty_is_flagged(tmp_path, suffix):
    store = build_store(tmp_path / f"a{suffix}", stratified(test_classes=(1, 2)))
    _, df, _ = analyse(store, tmp_path, "a.parquet")
    row = df.loc["r/e1/l2/classifier/true_labels"]
    assert row.status == DEGENERATE and "the test split lacks class(es) 0 (c0)" in row.message
    assert (df.loc[df.probe == "rcv", "status"] == "ok").all()

    empty = build_store(tmp_path / f"b{suffix}", stratified(empty_test=True))
    _, df, _ = analyse(empty, tmp_path, "b.parquet")
    for probe in ("classifier", "control", "rcv"):
        rows = df[df.probe == probe]
        assert len(rows) and (rows.status == DEGENERATE).all(), rows[["status", "message"]]
        assert rows.message.str.contains("the test split is empty").all()
        assert rows.test_error.isna().all() if probe != "rcv" else rows.test_r2.isna().all()


def test_the_demos_stratified_splits_flag_nothing():
    """The demos' [splits] through the demos' split function: no label set is flagged."""
    from types import SimpleNamespace

    from analyze.controls import control_labels
    from extract.sample_types import auto_n_types
    from extract.splits import assign_splits

    for config, n in (("fashion_mlp_memorization.toml", 5000), ("dtd_cnn_concepts.toml", 1200)):
        fractions = tomllib.loads((REPO / "experiments" / config).read_text())["splits"]
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, n)
        codes = assign_splits(y, fractions, seed=0)
        idx = {s: np.flatnonzero(codes == c) for c, s in enumerate(("train", "valid", "test"))}
        types = rng.integers(0, auto_n_types([v.size for v in idx.values()], 10), n)
        train_labels = y.copy()
        flip = idx["train"][rng.random(idx["train"].size) < 0.5]  # a 0.5-memorizing run
        train_labels[flip] = (y[flip] + rng.integers(1, 10, flip.size)) % 10
        sample = SimpleNamespace(split_index=idx, labels=y, control=control_labels(types, y, 10, 0),
                                 train_labels={"mem": train_labels})
        checker = SplitChecker(sample)
        rows = [{"probe": p, "run": "mem", "target": t, "status": "ok", "message": ""}
                for p, t in (("classifier", "true_labels"), ("classifier", "train_labels"),
                             ("control", "control_labels"), ("rcv", "area"))]
        assert [r["status"] for r in checker.flag(rows)] == ["ok"] * 4, config


# ---------------------------------------------------------------------------- 2, 7: unreadable blocks


@pytest.mark.parametrize("suffix", BACKENDS)
def test_a_complete_block_whose_array_is_gone_is_failed_rows_and_exit_1(tmp_path, suffix, capsys):
    good = build_store(tmp_path / f"good{suffix}", stratified(), checkpoints=("e1", "e2"))
    damaged = build_store(tmp_path / f"bad{suffix}", stratified(), checkpoints=("e1", "e2"))
    with open_store(damaged, "a") as store:
        store.backend.delete(layout.block_array_node("r", "e2", "l2"))
        store.backend.delete(layout.block_array_node("r", "e1", layout.OUTPUTS))
    res = tmp_path / "res.parquet"
    code, _, err = cli(capsys, "analyze", damaged, "-o", res, *FAST)
    assert code == 1, err
    assert "4/6 blocks fitted, 2 unreadable (recorded as failed)" in err
    assert "FAILED r/e2/l2: r/e2/l2: its features array is missing" not in err  # the name once
    assert "FAILED r/e2/l2: its features array is missing" in err
    assert "rerun the same command to retry them" not in err  # a rerun alone cannot fix it
    df = read_table(res).set_index("probe_id")
    l2 = df[df.index.str.startswith("r/e2/l2/")]
    assert sorted(l2.probe) == ["classifier", "control", "rcv"] and (l2.status == "failed").all()
    assert l2.message.str.contains("its features array is missing").all()
    out = df.loc["r/e1/outputs/model_output/true_labels"]
    assert out.status == "failed" and "its logits array is missing" in out.message
    assert df.loc["r/e2/l1/classifier/true_labels", "status"] == "ok"

    # The advice works: once the store is repaired, the same command fits those blocks (no --retry-failed).
    assert cli(capsys, "analyze", good, "-o", tmp_path / "ref.parquet", *FAST)[0] == 0
    if suffix == ".zarr":
        import shutil

        shutil.rmtree(damaged)
        shutil.copytree(good, damaged)
    else:
        damaged.write_bytes(good.read_bytes())
    code, _, err = cli(capsys, "analyze", damaged, "-o", res, *FAST)
    assert code == 0, err
    ref = read_table(tmp_path / "ref.parquet").drop(columns=["fit_seconds"])
    pd.testing.assert_frame_equal(read_table(res).drop(columns=["fit_seconds"]), ref)


def test_a_lost_chunk_is_a_data_failure_and_the_advice_is_not_to_rerun(tmp_path, capsys):
    store = build_store(tmp_path / "s.zarr", stratified())
    chunks = sorted(p for p in (store / layout.block_array_node("r", "e1", "l1")).rglob("*")
                    if p.is_file() and p.name != "zarr.json")
    chunks[0].unlink()
    code, _, err = cli(capsys, "analyze", store, "-o", tmp_path / "res.parquet", *FAST)
    assert code == 1
    assert "FAILED r/e1/l1: " in err and "missing chunks" in err and "rerun the same command to retry" not in err
    df = read_table(tmp_path / "res.parquet")
    assert (df[df.layer == "l1"].status == "failed").all() and (df[df.layer == "l2"].status == "ok").all()


def test_the_summary_tells_transient_from_data_failures():
    summary = AnalysisSummary(results=Path("r.parquet"), blocks_total=3, blocks_done=1)
    summary.lost_blocks = [("r/e1/l1", "KilledWorker: worker died"), ("r/e1/l2", "FingerprintMismatchError: ...")]
    summary.stuck_blocks = {"r/e1/l2"}
    text = summary.format()
    assert "1 block(s) not done (a worker died or an I/O error occurred); rerun the same command" in text
    assert "1 block(s) not done because of the store or its data: a rerun alone will not help" in text


# ---------------------------------------------------------------------------- 8, 9: results paths and tables


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small zarr store and its results table (shared by the path / table tests)."""
    tmp = tmp_path_factory.mktemp("small")
    store = build_store(tmp / "s.zarr", stratified())
    cfg = AnalysisConfig(scheduler="none", Cs=CS, alphas=ALPHAS, results=str(tmp / "res.parquet"))
    run_analysis(store, cfg, progress=False, log=lambda m: None)
    return store, tmp / "res.parquet"


def test_unwritable_results_and_report_paths_are_one_line(small, tmp_path, capsys):
    store, res = small
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed (refused even for root)")
    code, _, err = cli(capsys, "analyze", store, "-o", blocker / "res.parquet", *FAST)
    line = one_line_error(err, "analyze")
    assert code == 2 and "cannot write the analysis results" in line and "a file or folder is in the way" in line
    code, _, err = cli(capsys, "report", res, "-o", blocker / "rep")
    line = one_line_error(err, "report")
    assert code == 2 and "cannot write the report" in line and "choose another -o/--out folder" in line


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A folder nobody may write: a read-only tmpfs for root (chmod does not stop root), else mode 0555."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path, "Permission denied"
        finally:
            path.chmod(0o755)
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"root without mount permission: cannot make a read-only folder ({proc.stderr.strip()})")
    try:
        yield path, "Read-only file system"
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_directory_is_one_line_with_a_fix_that_works(small, tmp_path, capsys):
    store, res = small
    with read_only_dir(tmp_path / "ro") as (ro, reason):
        for cmd, what in ((["analyze", store, "-o", ro / "res.parquet", *FAST], "cannot write the analysis results"),
                          (["report", res, "-o", ro / "rep"], "cannot write the report")):
            code, _, err = cli(capsys, *cmd)
            line = one_line_error(err, cmd[0])
            assert code == 2 and what in line and reason in line and "in a directory you can write" in line
    assert cli(capsys, "analyze", store, "-o", tmp_path / "res.parquet", *FAST)[0] == 0  # the fix works
    assert cli(capsys, "report", res, "-o", tmp_path / "rep")[0] == 0


@pytest.mark.parametrize("content", [b"", b"not a parquet file\n" * 10], ids=["empty", "garbage"])
def test_an_empty_or_garbage_table_is_one_line_and_moving_it_aside_works(small, tmp_path, capsys, content):
    store, _ = small
    res = tmp_path / "res.parquet"
    res.write_bytes(content)
    code, _, err = cli(capsys, "analyze", store, "-o", res, *FAST)
    line = one_line_error(err, "analyze")
    assert code == 2 and "not a readable Parquet file" in line and f"mv {res} {res}.damaged" in line
    code, _, err = cli(capsys, "report", res, "-o", tmp_path / "rep")
    assert code == 2 and "not a readable Parquet file" in one_line_error(err, "report")
    res.rename(f"{res}.damaged")  # the suggested fix
    assert cli(capsys, "analyze", store, "-o", res, *FAST)[0] == 0


def test_a_csv_results_path_is_refused_and_its_fix_gives_the_csv(small, tmp_path, capsys):
    store, _ = small
    code, _, err = cli(capsys, "analyze", store, "-o", tmp_path / "res.csv", *FAST)
    line = one_line_error(err, "analyze")
    assert code == 2 and f"use -o {tmp_path / 'res'}.parquet" in line
    assert not (tmp_path / "res.csv").exists()
    assert cli(capsys, "analyze", store, "-o", tmp_path / "res.parquet", *FAST)[0] == 0
    assert (tmp_path / "res.csv").read_text().startswith("probe_id,")  # the CSV the user asked for
    assert cli(capsys, "report", tmp_path / "res.csv", "-o", tmp_path / "rep")[0] == 0
    # A Parquet table under a .csv name (written by older versions): named, and renaming works.
    old = tmp_path / "old.csv"
    old.write_bytes((tmp_path / "res.parquet").read_bytes())
    code, _, err = cli(capsys, "report", old, "-o", tmp_path / "rep2")
    line = one_line_error(err, "report")
    assert code == 2 and "holds a Parquet table" in line and f"mv {old} {tmp_path / 'old.parquet'}" in line
    old.rename(tmp_path / "old.parquet")
    assert cli(capsys, "report", tmp_path / "old.parquet", "-o", tmp_path / "rep2")[0] == 0


# ---------------------------------------------------------------------------- 3: the report's flagged probes


def test_the_report_lists_and_marks_flagged_probes_and_leaves_out_bad_ones(small, tmp_path, capsys):
    from analyze.report import build_report, make_view
    from analyze.report.figures import layer_error_data

    _, res = small
    df = read_table(res).assign(grid_edge="")
    assert (df["status"] == "ok").all()
    clean = tmp_path / "clean.parquet"
    df.to_parquet(clean)
    true = df["probe"].eq("classifier") & df["target"].eq("true_labels")
    l1, l2 = true & df["layer"].eq("l1"), true & df["layer"].eq("l2")
    df.loc[l1, "status"] = "not_converged"
    df.loc[l1, "message"] = "no convergence in 5 iterations"
    df.loc[l2, "status"] = DEGENERATE
    df.loc[l2, "message"] = "true_labels: the valid split lacks class(es) 1 (c1)"
    df.loc[df["probe"].eq("rcv"), "grid_edge"] = "low"
    df.loc[df["probe"].eq("control"), ["status", "message"]] = ["failed", "NaN in features"]
    flagged = tmp_path / "flagged.parquet"
    df.to_parquet(flagged)

    data = layer_error_data(make_view(read_table(flagged)))
    assert set(data["layer"]) == {"l1"}  # the degenerate-split probe is left out
    assert (data["flag"] == "not converged").all()  # the not-converged one is drawn, marked

    code, out, _ = cli(capsys, "report", flagged, "-o", tmp_path / "rep")
    assert code == 0
    assert ("report: 2 failed (left out (no numbers)), 1 degenerate split (left out of figures and findings), "
            "1 not converged (drawn, marked), 2 C / alpha at the low edge of its grid (drawn, marked) "
            f"of {len(df)} probes") in out
    html = (tmp_path / "rep" / "index.html").read_text()
    md = (tmp_path / "rep" / "report.md").read_text()
    for text in (html, md):
        assert "Probes left out or flagged" in text
        assert "the valid split lacks class(es) 1 (c1)" in text and "no convergence in 5 iterations" in text
        assert "Marked (open black ring" in text and "(1 here)" in text  # layer_error: l1 marked
        assert "Left out: failed, skipped and degenerate-split probes (3 in the table)" in text
    # A clean table: no caption notes, no CLI line.
    idx = build_report(clean, out_dir=tmp_path / "clean", log=lambda line: pytest.fail(line))
    assert "Marked (open black ring" not in idx.read_text()


def test_report_pages_follow_the_umask(small, tmp_path):
    umask = 0o027  # files from mkstemp were 0600 whatever the umask
    from analyze.report import build_report

    old = os.umask(umask)
    try:
        index = build_report(small[1], out_dir=tmp_path / "rep")
    finally:
        os.umask(old)
    for page in (index, index.parent / "report.md"):
        assert page.stat().st_mode & 0o777 == 0o666 & ~umask, oct(page.stat().st_mode)


# ---------------------------------------------------------------------------- 11: Ctrl-C with the local cluster


def test_ctrl_c_during_a_local_cluster_analysis_is_one_line_and_a_rerun_completes(tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C), while blocks are being fitted."""
    store = build_store(tmp_path / "s.zarr", stratified(n=600), F=40,
                        checkpoints=tuple(f"e{i}" for i in range(1, 9)))
    res = tmp_path / "res.parquet"
    base = [sys.executable, "-m", "probestore", "analyze", str(store), "-o", str(res), "--no-progress",
            "--Cs", "0.01,0.1,1,10,100", "--alphas", "0.1,10,1000"]
    cmd = [*base, "--workers", "2", "--threads-per-worker", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=tmp_path)
    parts = results_paths(res)["parts"]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ERROR" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1] == "probestore analyze: interrupted; rerun the same command to resume", err
    assert len(lines) <= 4, err  # cluster, dashboard, the message
    done = len(list(parts.glob("part-*.parquet")))
    rerun = subprocess.run([*base, "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    table = read_table(res)
    assert len(table) == 8 * (2 * 3 + 1) and (table.status == "ok").all()
    assert done >= 2
