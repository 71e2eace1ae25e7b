"""The results table: schema, atomic parts, merge/dedup, fingerprint and lock, CSV, weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyze.results import (
    COLUMNS,
    ResultsWriter,
    default_results_path,
    finalize_frame,
    make_row,
    probe_id,
    read_metadata,
    read_table,
    read_weights,
    results_paths,
    to_frame,
    write_weights,
)
from probestore.errors import ConfigError, FingerprintMismatchError, StoreFormatError


def row(run="r", layer="l1", target="true_labels", probe="classifier", status="ok", **kw):
    return make_row(run=run, checkpoint="epoch_0001", epoch=1, layer=layer, target=target, probe=probe,
                    status=status, **kw)


def test_make_row_fills_the_schema():
    r = row(test_error=0.25, n_train=10)
    assert list(r) == list(COLUMNS)
    assert r["probe_id"] == probe_id("r", "epoch_0001", "l1", "classifier", "true_labels")
    assert r["probe_id"] == "r/epoch_0001/l1/classifier/true_labels"
    assert np.isnan(r["test_r2"]) and r["n_valid"] == -1 and r["message"] == ""
    with pytest.raises(ValueError, match="unknown result columns"):
        make_row(test_eror=0.1)


def test_frame_dtypes_and_parquet_round_trip(tmp_path):
    df = to_frame([row(), row(layer="l2", train_r2=0.5, probe="rcv", target="area")])
    assert str(df["epoch"].dtype) == "int64" and str(df["run"].dtype) == "str"
    assert str(df["train_r2"].dtype) == "float64"
    writer = ResultsWriter(tmp_path / "t.parquet", {"fingerprint": "sha256:abc"})
    writer.write_part(("r", "epoch_0001", "l1"), df.to_dict("records"))
    out = writer.finalize()
    back = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, out)
    pd.testing.assert_frame_equal(read_table(results_paths(tmp_path / "t.parquet")["csv"]), out)
    assert read_metadata(tmp_path / "t.parquet")["fingerprint"] == "sha256:abc"


def test_finalize_dedups_keeping_the_best_status_and_sorts():
    a = row(layer="l2", status="failed", message="boom")
    b = row(layer="l2", status="ok", test_error=0.1)
    c = row(layer="l1")
    out = finalize_frame(to_frame([a, c, b, c]))
    assert list(out["probe_id"]) == sorted({a["probe_id"], c["probe_id"]})
    assert out.set_index("probe_id").loc[a["probe_id"], "status"] == "ok"


def test_parts_are_merged_then_removed_and_done_ids_seen(tmp_path):
    path = tmp_path / "res.parquet"
    w = ResultsWriter(path, {"fingerprint": "fp"})
    w.write_part(("a",), [row(layer="l1"), row(layer="l1", probe="control", target="control_labels")])
    w.write_part(("b",), [row(layer="l2", status="failed")])
    parts = results_paths(path)["parts"]
    assert len(list(parts.glob("part-*.parquet"))) == 2 and not list(parts.glob(".*tmp"))
    assert len(w.done_ids()) == 3 and len(w.done_ids(retry_failed=True)) == 2
    w.finalize()
    assert not parts.exists() and len(read_table(path)) == 3
    # a second writer sees the table; new parts are merged with it
    w2 = ResultsWriter(path, {"fingerprint": "fp"})
    w2.write_part(("c",), [row(layer="l3")])
    assert len(w2.done_ids()) == 4
    assert len(w2.finalize()) == 4


def test_temporary_files_of_a_killed_writer_are_cleaned_at_the_merge(tmp_path):
    # what a SIGKILL inside an atomic write leaves: a temporary part, table and CSV
    path = tmp_path / "res.parquet"
    w = ResultsWriter(path, {"fingerprint": "fp"})
    w.write_part(("a",), [row(layer="l1")])
    parts = results_paths(path)["parts"]
    stale = [parts / ".part-0123.parquet.abcd1234.tmp", tmp_path / ".res.parquet.deadbeef.tmp",
             tmp_path / ".res.csv.0badf00d.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    with w:
        w.finalize()
    assert not parts.exists() and not any(f.exists() for f in stale)
    assert len(read_table(path)) == 1


def test_fingerprint_mismatch_and_missing_fingerprint_are_refused(tmp_path):
    path = tmp_path / "res.parquet"
    w = ResultsWriter(path, {"fingerprint": "fp1"})
    w.write_part(("a",), [row()])
    with pytest.raises(FingerprintMismatchError, match="another dataset.*expected fp2.*got fp1"):
        ResultsWriter(path, {"fingerprint": "fp2"})  # parts only
    w.finalize()
    with pytest.raises(FingerprintMismatchError, match=str(path)):
        ResultsWriter(path, {"fingerprint": "fp2"})  # the table
    foreign = tmp_path / "foreign.parquet"
    to_frame([row()]).to_parquet(foreign)
    with pytest.raises(StoreFormatError, match="no dataset fingerprint"):
        ResultsWriter(foreign, {"fingerprint": "fp1"})


def test_lock_refuses_a_second_writer(tmp_path):
    path = tmp_path / "res.parquet"
    with ResultsWriter(path, {"fingerprint": "fp"}):
        with pytest.raises(ConfigError, match="another analysis is writing"):
            ResultsWriter(path, {"fingerprint": "fp"}).acquire()
    with ResultsWriter(path, {"fingerprint": "fp"}):  # released: free again
        pass


def test_paths():
    assert str(default_results_path("/d/mnist.zarr")) == "/d/mnist.results.parquet"
    files = results_paths("/d/out.parquet")
    assert str(files["csv"]) == "/d/out.csv" and str(files["parts"]) == "/d/out.parquet.parts"
    assert str(files["weights"]) == "/d/out.weights.zarr"


def test_weights_round_trip(tmp_path):
    pid = "r/epoch_0001/l1/rcv/area"
    coef = np.arange(6, dtype=np.float32)
    write_weights(tmp_path / "w.zarr", {pid: {"coef": coef, "intercept": np.asarray(0.5)}}, {pid: {"alpha": 10.0}})
    write_weights(tmp_path / "w.zarr", {pid: {"coef": coef * 2, "intercept": np.asarray(0.5)}})  # rerun overwrites
    got = read_weights(tmp_path / "w.zarr", pid)
    np.testing.assert_array_equal(got["coef"], coef * 2)
    assert float(got["intercept"]) == 0.5
    import zarr

    assert zarr.open_group(str(tmp_path / "w.zarr"), mode="r")[pid].attrs["alpha"] == 10.0


def test_other_probe_settings_are_refused(tmp_path):
    path = tmp_path / "res.parquet"
    w = ResultsWriter(path, {"fingerprint": "fp", "settings": {"Cs": [0.1, 1.0], "control_seed": 0}})
    w.write_part(("a",), [row()])
    with pytest.raises(ConfigError, match="other probe settings.*expected Cs=\\[0.1, 1.0\\].*got Cs=\\[1.0\\]"):
        ResultsWriter(path, {"fingerprint": "fp", "settings": {"Cs": [1.0], "control_seed": 0}})
    w.finalize()
    with pytest.raises(ConfigError, match="control_seed"):
        ResultsWriter(path, {"fingerprint": "fp", "settings": {"Cs": [0.1, 1.0], "control_seed": 1}})
    ResultsWriter(path, {"fingerprint": "fp", "settings": {"Cs": [0.1, 1.0], "control_seed": 0}})  # same: fine


def test_among_equal_statuses_the_newest_row_wins(tmp_path):
    path = tmp_path / "res.parquet"
    w = ResultsWriter(path, {"fingerprint": "fp"})
    w.write_part(("a",), [row(status="failed", message="old reason")])
    w.finalize()
    w.write_part(("b",), [row(status="failed", message="new reason")])  # a --retry-failed refit
    assert list(w.finalize()["message"]) == ["new reason"]
