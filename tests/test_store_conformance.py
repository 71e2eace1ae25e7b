"""One conformance suite that every storage backend passes (zarr-python's StoreTests idea).

Each test runs once per backend through the ``suffix`` fixture (tests/conftest.py); a new
backend joins by adding its suffix to ``BACKEND_SUFFIXES`` there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probestore.errors import (
    ConfigError,
    DataError,
    FingerprintMismatchError,
    InvalidNameError,
    NotFoundError,
    SchemaVersionError,
    StoreFormatError,
)
from storage_schema import layout
from storage_schema.fingerprint import dataset_fingerprint
from storage_schema.store import open_store
from storage_schema.validate import validate_store
from tests.helpers.stores import add_run, create_bare_store, write_checkpoint


# --------------------------------------------------------------------------- round trips
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 300),
    n_features=st.integers(1, 40),
    dtype=st.sampled_from(["float32", "float16"]),
    pieces=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_block_round_trip_any_shape_and_dtype(tmp_path_factory, suffix, n, n_features, dtype, pieces, seed):
    path = tmp_path_factory.mktemp("rt") / f"s{suffix}"
    store = create_bare_store(path, n=n)
    add_run(store)
    store.add_checkpoint("gen", "epoch_0001", epoch=1)
    store.create_block("gen", "epoch_0001", "fc1", n_features=n_features, dtype=dtype, chunk_rows=max(1, n // 3))
    values = np.random.default_rng(seed).standard_normal((n, n_features)).astype(dtype)
    bounds = np.linspace(0, n, pieces + 1).astype(int)
    for start, stop in zip(bounds[:-1], bounds[1:]):  # written in arbitrary, chunk-unaligned pieces
        store.write_rows("gen", "epoch_0001", "fc1", int(start), values[start:stop])
    store.mark_block_complete("gen", "epoch_0001", "fc1")
    reopened = open_store(path)
    got = reopened.read_layer("gen", "epoch_0001", "fc1")
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, values)
    rows = np.array(sorted({0, n // 2, n - 1}))
    np.testing.assert_array_equal(reopened.read_layer("gen", "epoch_0001", "fc1", rows=rows), values[rows])
    np.testing.assert_array_equal(np.asarray(reopened.block_dask("gen", "epoch_0001", "fc1").compute()), values)


def test_dataset_targets_runs_round_trip(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    store = create_bare_store(path)
    area = np.linspace(0, 1, 50)
    store.add_target("area", area, "continuous", description="pixels", family="shape")
    store.add_target("striped", np.arange(50) % 2 == 0, "binary")
    add_run(store, "mem", fraction=0.4)
    reopened = open_store(path)
    assert reopened.dataset.name == "toy" and reopened.n_samples == 50
    assert reopened.sample_ids()[3] == "img/0003.png"
    assert reopened.fingerprint == dataset_fingerprint(reopened.sample_ids(), reopened.labels())
    assert reopened.config == {"experiment": {"name": "toy"}}
    assert reopened.config_hash.startswith("sha256:")
    np.testing.assert_array_equal(reopened.read_target("area"), area)
    assert reopened.target_info("area").family == "shape"
    assert reopened.target_info("striped").kind == "binary"
    assert reopened.runs() == ["mem"]
    info = reopened.run_info("mem")
    assert info.corruption_fraction == 0.4 and info.corruption_mode == "uniform"
    assert reopened.corrupted_mask("mem").sum() == 20
    np.testing.assert_array_equal(reopened.split_indices("valid"), np.arange(1, 50, 3))
    assert validate_store(path) == []


def test_shared_reduction_indices_written_once(tmp_path, suffix):
    store = create_bare_store(tmp_path / f"s{suffix}")
    idx = np.array([3, 7, 11])
    store.save_reduction_indices("cnn-1", "conv1", idx, reduction={"kind": "random", "params": {"k": 3}}, source_shape=[4, 5, 5])
    store.save_reduction_indices("cnn-1", "conv1", idx, reduction={"kind": "random", "params": {"k": 3}}, source_shape=[4, 5, 5])
    np.testing.assert_array_equal(open_store(store.path).load_reduction_indices("cnn-1", "conv1"), idx)
    with pytest.raises(ConfigError, match="differ"):
        store.save_reduction_indices("cnn-1", "conv1", idx + 1, reduction={"kind": "random"}, source_shape=[4, 5, 5])


# --------------------------------------------------------------------------- completion
def test_incomplete_checkpoints_and_blocks_are_hidden(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    store = create_bare_store(path)
    add_run(store)
    write_checkpoint(store, "gen", "epoch_0000", {"fc1": np.ones((50, 4), "float32")}, np.zeros((50, 3), "float32"))
    store.add_checkpoint("gen", "epoch_0005", epoch=5)
    store.create_block("gen", "epoch_0005", "fc1", n_features=4)
    store.write_rows("gen", "epoch_0005", "fc1", 0, np.ones((20, 4), "float32"))
    store.set_rows_done("gen", "epoch_0005", "fc1", 20)

    reader = open_store(path)
    assert [c.name for c in reader.checkpoints("gen")] == ["epoch_0000"]
    assert [c.name for c in reader.checkpoints("gen", include_incomplete=True)] == ["epoch_0000", "epoch_0005"]
    assert reader.layers("gen", "epoch_0005") == []
    assert reader.block_info("gen", "epoch_0005", "fc1").rows_done == 20
    with pytest.raises(NotFoundError, match="not complete"):
        reader.read_layer("gen", "epoch_0005", "fc1")
    with pytest.raises(StoreFormatError, match="unfinished"):
        store.mark_checkpoint_complete("gen", "epoch_0005")
    # an incomplete store is still a valid store
    assert validate_store(path) == []


def test_resumed_block_keeps_written_rows(tmp_path, suffix):
    store = create_bare_store(tmp_path / f"s{suffix}")
    add_run(store)
    store.add_checkpoint("gen", "e1", epoch=1)
    store.create_block("gen", "e1", "fc1", n_features=4, reduction={"kind": "flatten"})
    store.write_rows("gen", "e1", "fc1", 0, np.full((10, 4), 2.0, "float32"))
    again = open_store(store.path, "a")
    again.add_checkpoint("gen", "e1", epoch=1)  # same weights: allowed
    info = again.create_block("gen", "e1", "fc1", n_features=4, reduction={"kind": "flatten"})
    assert info.n_features == 4
    np.testing.assert_array_equal(again.read_layer("gen", "e1", "fc1", allow_incomplete=True)[:10], 2.0)
    with pytest.raises(ConfigError, match="another shape or reduction"):
        again.create_block("gen", "e1", "fc1", n_features=5)
    with pytest.raises(ConfigError, match="another weight file"):
        again.add_checkpoint("gen", "e1", epoch=1, sha256="abc")


# --------------------------------------------------------------------------- refusals
def _edit_root_attrs(path: Path, **changes):
    from storage_schema.backends import backend_for

    backend = backend_for(path)(path, read_only=False)
    backend.update_attrs("", changes)


def test_unknown_major_version_is_refused(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    create_bare_store(path)
    _edit_root_attrs(path, schema_version="2.0")
    with pytest.raises(SchemaVersionError) as err:
        open_store(path)
    message = str(err.value)
    assert "2.0" in message and "1.x" in message and "upgrade" in message
    problems = validate_store(path)
    assert len(problems) == 1 and "2.0" in problems[0]


def test_newer_minor_version_with_extra_keys_is_read(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    create_bare_store(path)
    _edit_root_attrs(path, schema_version="1.7", future_key=1)
    assert open_store(path).n_samples == 50


def test_wrong_types_and_extra_keys_are_reported(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    store = create_bare_store(path)
    add_run(store)
    store.backend.update_attrs("runs/gen", {"architecture": 5, "surprise": True})
    problems = validate_store(path)
    assert any("'architecture' should be str" in p for p in problems)
    assert any("unknown attribute 'surprise'" in p for p in problems)
    with pytest.raises(StoreFormatError, match="architecture"):
        open_store(path).run_info("gen")


def test_fingerprint_mismatch_is_refused(tmp_path, suffix):
    store = create_bare_store(tmp_path / f"s{suffix}")
    other = dataset_fingerprint(np.array(["a", "b"]), np.array([0, 1]))
    with pytest.raises(FingerprintMismatchError, match="not the same samples"):
        store.check_fingerprint(other, where="results.parquet")
    store.check_fingerprint(store.fingerprint)


def test_tampered_labels_break_the_fingerprint(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    store = create_bare_store(path)
    labels = store.labels()
    labels[0] = (labels[0] + 1) % 3
    store.backend.write(layout.SAMPLE_LABEL, labels)
    assert any("fingerprint does not match" in p for p in validate_store(path))


@pytest.mark.parametrize("bad", ["..", "../escape", "/abs", "a/b", ".hidden", "", "x" * 300, "zarr.json", "a..b"])
def test_names_that_could_escape_the_store_are_refused(tmp_path, suffix, bad):
    store = create_bare_store(tmp_path / f"s{suffix}")
    with pytest.raises(InvalidNameError, match="invalid run name"):
        add_run(store, bad)
    with pytest.raises(InvalidNameError):
        store.add_target(bad, np.zeros(50), "continuous")
    assert not (tmp_path / "escape").exists()


def test_bad_input_is_refused_before_writing(tmp_path, suffix):
    store = create_bare_store(tmp_path / f"s{suffix}")
    add_run(store)
    store.add_checkpoint("gen", "e0", epoch=0)
    store.create_block("gen", "e0", "fc1", n_features=3)
    bad = np.ones((5, 3), "float32")
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        store.write_rows("gen", "e0", "fc1", 0, bad)
    with pytest.raises(DataError, match="do not fit"):
        store.write_rows("gen", "e0", "fc1", 48, np.ones((5, 3), "float32"))
    with pytest.raises(DataError, match="wrong number of samples"):
        store.add_target("t", np.zeros(49), "continuous")
    with pytest.raises(NotFoundError, match="did|unknown run|expected"):
        store.train_labels("nope") if False else store.run_info("nope")
    with pytest.raises(ConfigError, match="already exists"):
        create_bare_store(store.path)


def test_missing_completion_marker_is_reported(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    store = create_bare_store(path)
    add_run(store)
    write_checkpoint(store, "gen", "e0", {"fc1": np.ones((50, 4), "float32")}, np.zeros((50, 3), "float32"))
    store.backend.update_attrs("runs/gen/checkpoints/e0/layers/fc1", {"complete": False})
    problems = validate_store(path)
    assert any("marked complete but this block is not" in p for p in problems)


def test_wrong_suffix_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\.zarr"):
        create_bare_store(tmp_path / "store.npz")


# --------------------------------------------------------------------------- damage
def test_zarr_missing_chunk_is_detected(tmp_path):
    path = tmp_path / "s.zarr"
    store = create_bare_store(path, n=200)
    add_run(store)
    store.add_checkpoint("gen", "e0", epoch=0)
    store.create_block("gen", "e0", "fc1", n_features=4, chunk_rows=50)
    store.write_rows("gen", "e0", "fc1", 0, np.ones((200, 4), "float32"))
    store.mark_block_complete("gen", "e0", "fc1")
    chunk = path / "runs/gen/checkpoints/e0/layers/fc1/features/c/1/0"
    assert chunk.exists()
    chunk.unlink()
    with pytest.raises(StoreFormatError, match="missing chunks"):
        open_store(path).read_layer("gen", "e0", "fc1")
    assert any("chunks missing" in p for p in validate_store(path))


def test_zarr_corrupted_chunk_is_a_clear_error(tmp_path):
    path = tmp_path / "s.zarr"
    store = create_bare_store(path, n=200)
    add_run(store)
    store.add_checkpoint("gen", "e0", epoch=0)
    store.create_block("gen", "e0", "fc1", n_features=4, chunk_rows=50)
    store.write_rows("gen", "e0", "fc1", 0, np.random.default_rng(0).random((200, 4), dtype="float32"))
    store.mark_block_complete("gen", "e0", "fc1")
    (path / "runs/gen/checkpoints/e0/layers/fc1/features/c/2/0").write_bytes(b"garbage, not blosc")
    with pytest.raises(StoreFormatError, match="corrupted chunk"):
        open_store(path).read_layer("gen", "e0", "fc1")


def test_truncated_hdf5_file_is_a_clear_error(tmp_path):
    path = tmp_path / "s.h5"
    create_bare_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreFormatError, match="truncated or not HDF5"):
        open_store(path)
    assert "truncated" in validate_store(path)[0]


def test_broken_zarr_metadata_is_a_clear_error(tmp_path):
    path = tmp_path / "s.zarr"
    create_bare_store(path)
    (path / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreFormatError, match="cannot open"):
        open_store(path)


def test_every_compression_round_trips_and_trades_disk_for_time(tmp_path, suffix):
    store = create_bare_store(tmp_path / f"s{suffix}", n=600)
    add_run(store)
    store.add_checkpoint("gen", "e0", epoch=0)
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.standard_normal((600, 256)), 0).astype("float32")  # half exact zeros
    stored = {}
    for compression in ("fast", "small", "none"):
        store.create_block("gen", "e0", compression, n_features=256, compression=compression)
        store.write_rows("gen", "e0", compression, 0, relu)
        store.mark_block_complete("gen", "e0", compression)
        np.testing.assert_array_equal(store.read_layer("gen", "e0", compression), relu)
        stored[compression] = store.stored_bytes("gen", "e0", compression)
    assert stored["none"] >= relu.nbytes * 0.95  # raw chunks
    assert stored["fast"] < stored["none"] * 0.9 and stored["small"] < stored["none"] * 0.9
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        store.create_block("gen", "e0", "x", n_features=3, compression="smal")


def test_broken_node_metadata_is_a_clear_error_and_updates_leave_no_temporary_files(tmp_path):
    path = tmp_path / "s.zarr"
    store = create_bare_store(path)
    add_run(store)
    write_checkpoint(store, "gen", "e0", {"fc1": np.ones((50, 4), "float32")}, np.ones((50, 3), "float32"))
    assert not list(path.rglob(".zarr.json.*"))  # attribute updates renamed their temporary files
    meta = path / layout.block_node("gen", "e0", "fc1") / "zarr.json"
    meta.write_text('{"zarr_format": 3, "node_type": "group", "attributes": ')
    with pytest.raises(StoreFormatError, match="unreadable metadata") as err:
        open_store(path).read_layer("gen", "e0", "fc1")
    assert str(meta) in str(err.value)
    meta.write_text('{"zarr_format": 2, "node_type": "group"}')
    with pytest.raises(StoreFormatError, match="Zarr v3 node"):
        open_store(path).read_layer("gen", "e0", "fc1")


# --------------------------------------------------------------------------- concurrency
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from storage_schema import layout
    from storage_schema.store import open_store
    store = open_store(sys.argv[1], "a")
    for epoch in range(1, 7):
        ckpt = f"epoch_{epoch:04d}"
        store.add_checkpoint("gen", ckpt, epoch=epoch)
        for name, width in (("fc1", 6), (layout.OUTPUTS, 3)):  # one logit per class (num_classes 3)
            store.create_block("gen", ckpt, name, n_features=width, chunk_rows=64)
            for start in range(0, 400, 64):
                rows = min(64, 400 - start)
                store.write_rows("gen", ckpt, name, start, np.full((rows, width), epoch, "float32"))
                store.set_rows_done("gen", ckpt, name, start + rows)
                time.sleep(0.005)
            store.mark_block_complete("gen", ckpt, name)
        store.mark_checkpoint_complete("gen", ckpt)
    """
)


@pytest.mark.slow
def test_reading_while_another_process_appends(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    store = create_bare_store(path, n=400)
    add_run(store)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), str(path)])
    seen: set[str] = set()
    try:
        deadline = time.time() + 120
        while writer.poll() is None and time.time() < deadline:
            reader = open_store(path)
            for ckpt in reader.checkpoints("gen"):
                # a listed checkpoint is complete: every row has its final value
                epoch = ckpt.epoch
                assert np.all(reader.read_layer("gen", ckpt.name, "fc1") == epoch)
                assert np.all(reader.read_logits("gen", ckpt.name) == epoch)
                seen.add(ckpt.name)
            time.sleep(0.02)
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
    final = open_store(path)
    assert [c.epoch for c in final.checkpoints("gen")] == [1, 2, 3, 4, 5, 6]
    assert validate_store(path) == []
    assert seen, "the reader never saw a complete checkpoint while the writer ran"


def test_metadata_is_plain_json(tmp_path):
    """Plain zarr users can read the metadata without probestore."""
    import zarr

    path = tmp_path / "s.zarr"
    store = create_bare_store(path)
    add_run(store)
    write_checkpoint(store, "gen", "e0", {"fc1": np.ones((50, 4), "float32")}, np.zeros((50, 3), "float32"))
    root = zarr.open_group(str(path), mode="r")
    assert root.attrs["dataset"]["n_samples"] == 50
    features = root["runs/gen/checkpoints/e0/layers/fc1/features"]
    assert features.shape == (50, 4) and np.all(features[:] == 1)
    meta = json.loads((path / "runs/gen/checkpoints/e0/layers/fc1/features/zarr.json").read_text())
    assert meta["dimension_names"] == ["sample", "feature"]
