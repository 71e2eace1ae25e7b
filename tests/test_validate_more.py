"""``probestore validate``: splits lacking classes, damaged metadata, logits width, links.

Each test builds a real store (Zarr and HDF5) with ``create_store``, damages it with
zarr / h5py / os calls as a crash, a hand edit or a hostile sender would, runs
``probestore validate`` through the CLI's ``main`` and checks the exact listing and the
exit status.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import zarr

from extract.corruption import corrupt_labels
from extract.splits import assign_splits
from probestore.cli import main
from storage_schema import layout
from storage_schema.store import create_store, open_store
from storage_schema.validate import split_warnings, validate_store
from tests.conftest import DTD_DIR, MNIST_DIR, needs_data

N = 60
CLASSES = ["c0", "c1", "c2"]
CKPT = layout.checkpoint_node("r", "e1")
OUT = f"{CKPT}/outputs"
RELU1 = f"{CKPT}/layers/relu1"
RELU2 = f"{CKPT}/layers/relu2"


def _build(path: Path, *, splits=None, logits: int = 3, model=None, train_labels=None) -> Path:
    labels = np.arange(N) % 3
    splits = (np.arange(N) // 3) % 3 if splits is None else splits
    store = create_store(path, dataset_name="toy", sample_ids=[f"s{i:03d}" for i in range(N)], labels=labels,
                         splits=np.asarray(splits, np.int8), class_names=CLASSES)
    tl = labels if train_labels is None else train_labels
    store.add_run("r", model=model or {"name": "mlp"}, architecture="mlp-a", train_labels=tl,
                  corrupted=tl != labels, corruption={"fraction": 0.0 if train_labels is None else 0.5,
                                                      "mode": "none" if train_labels is None else "uniform",
                                                      "seed": 0})
    store.add_checkpoint("r", "e1", epoch=1)
    rng = np.random.default_rng(0)
    for block, width in (("relu1", 8), ("relu2", 5), ("outputs", logits)):
        store.create_block("r", "e1", block, n_features=width)
        store.write_rows("r", "e1", block, 0, rng.random((N, width)).astype("float32"))
        store.mark_block_complete("r", "e1", block)
    store.mark_checkpoint_complete("r", "e1")
    store.close()
    return path


def _validate(path: Path, capsys) -> tuple[int, list[str], str]:
    """Exit status, the listed lines (stderr) and stdout of ``probestore validate``."""
    capsys.readouterr()
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    return code, out.err.splitlines(), out.out


# --------------------------------------------------------------------------- splits lacking classes


def test_valid_and_test_splits_lacking_train_classes_are_warned(tmp_path, suffix, capsys):
    labels = np.arange(N) % 3
    splits = np.zeros(N, np.int8)
    splits[(labels != 2) & (np.arange(N) % 5 == 0)] = 1   # valid: classes c0, c1 only
    splits[(labels == 0) & (np.arange(N) % 5 == 1)] = 2   # test: class c0 only
    path = _build(tmp_path / f"s{suffix}", splits=splits)
    code, err, out = _validate(path, capsys)
    assert code == 0 and out == f"{path}: valid\n"
    assert err == [
        f"{path}: warning: samples/label: split 'valid' lacks 1 of the 3 classes present in train (true labels), "
        "expected every train class (probes select on valid and report on test), got none of ['c2']",
        f"{path}: warning: samples/label: split 'test' lacks 2 of the 3 classes present in train (true labels), "
        "expected every train class (probes select on valid and report on test), got none of ['c1', 'c2']",
    ]
    assert validate_store(path) == []  # not a schema violation


def test_a_corrupted_runs_training_labels_are_checked_too(tmp_path, suffix, capsys):
    labels = np.arange(N) % 3
    splits = (np.arange(N) // 3) % 3
    train_labels = labels.copy()
    train_labels[labels == 2] = 1   # the run never trains on c2 ...
    train_labels[(splits == 0) & (labels == 2)] = 2  # ... except in train: c2 present in train only
    train_labels[(splits != 0) & (labels == 2)] = 0
    path = _build(tmp_path / f"s{suffix}", splits=splits, train_labels=train_labels)
    code, err, _ = _validate(path, capsys)
    assert code == 0
    assert err == [
        f"{path}: warning: runs/r/train_labels: split '{s}' lacks 1 of the 3 classes present in train (training "
        f"labels of run 'r'), expected every train class (probes select on valid and report on test), got none of "
        "['c2']" for s in ("valid", "test")]


def _read_idx_labels(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read()[8:], np.uint8).astype(np.int64)


@needs_data(DTD_DIR, MNIST_DIR)
def test_the_demos_stratified_splits_are_not_reported(tmp_path):
    """The demo's own split and corruption code on real labels: nothing to report; the same
    labels split without stratification (a quarter of the classes left out of valid) are."""
    dtd = np.concatenate([np.full(len(list(d.glob("*.jpg"))), i) for i, d in enumerate(sorted(DTD_DIR.iterdir()))
                          if d.is_dir()])
    mnist = _read_idx_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:5000]
    for name, labels in (("dtd", dtd), ("mnist", mnist)):
        k = int(labels.max()) + 1
        splits = assign_splits(labels, {"train": 0.7, "valid": 0.15, "test": 0.15}, seed=0)
        store = create_store(tmp_path / f"{name}.zarr", dataset_name=name, labels=labels, splits=splits,
                             sample_ids=[f"{name}{i}" for i in range(len(labels))],
                             class_names=[str(c) for c in range(k)])
        for fraction in (0.5, 1.0):
            tl, corrupted = corrupt_labels(labels, splits, fraction, k, mode="shuffle", seed=0)
            store.add_run(f"memorizing-{fraction}", model={"name": "mlp"}, architecture="a", train_labels=tl,
                          corrupted=corrupted, corruption={"fraction": fraction, "mode": "shuffle", "seed": 0})
        store.close()
        assert split_warnings(open_store(tmp_path / f"{name}.zarr")) == []
        bad = splits.copy()
        bad[(bad == 1) & (labels < k // 4 + 1)] = 0
        store = create_store(tmp_path / f"{name}-bad.zarr", dataset_name=name, labels=labels, splits=bad,
                             sample_ids=[f"{name}{i}" for i in range(len(labels))],
                             class_names=[str(c) for c in range(k)])
        store.close()
        found = split_warnings(open_store(tmp_path / f"{name}-bad.zarr"))
        assert [w.split(",")[0] for w in found] == [
            f"samples/label: split 'valid' lacks {k // 4 + 1} of the {k} classes present in train (true labels)"]


# --------------------------------------------------------------------------- damaged metadata


def _nan_in_outputs(path: Path) -> None:
    if path.suffix == ".zarr":
        arr = zarr.open_array(str(path / OUT / "logits"), mode="r+")
        arr[0, 0] = np.nan
    else:
        with h5py.File(path, "r+") as f:
            f[f"{OUT}/logits"][0, 0] = np.nan


def test_corrupt_zarr_json_is_listed_with_the_other_violations(tmp_path, capsys):
    path = _build(tmp_path / "s.zarr")
    (path / RELU1 / "zarr.json").write_text("{not json")
    (path / RELU2 / "features" / "zarr.json").write_text('{"zarr_format": 3}')
    _nan_in_outputs(path)
    code, err, _ = _validate(path, capsys)
    assert code == 1, err
    assert err[0] == f"{path}: 3 violation(s) of the probestore schema:"
    assert err[1].startswith(f"  - unreadable metadata; in {path / RELU1 / 'zarr.json'}; got JSONDecodeError: ")
    assert err[2].startswith(f"  - unreadable metadata; in {path / RELU2 / 'features' / 'zarr.json'}; expected "
                             'a Zarr v3 node ("zarr_format": 3, "node_type": group|array); got {\'zarr_format\': 3}')
    assert "; fix: " in err[1] and "; fix: " in err[2]
    assert err[3] == f"  - {OUT}/logits: contains NaN/Inf"


def test_unreadable_hdf5_attribute_is_listed_with_the_other_violations(tmp_path, capsys):
    path = _build(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f[RELU1].attrs["kind"] = "{not json"
    _nan_in_outputs(path)
    code, err, _ = _validate(path, capsys)
    assert code == 1, err
    assert err[0] == f"{path}: 2 violation(s) of the probestore schema:"
    assert err[1].startswith(f"  - attribute is not JSON; in {path}:{RELU1}@kind; got '{{not json'")
    assert err[2] == f"  - {OUT}/logits: contains NaN/Inf"


# --------------------------------------------------------------------------- logits width


def _widen_logits(path: Path, width: int) -> None:
    values = np.random.default_rng(1).random((N, width)).astype("float32")
    if path.suffix == ".zarr":
        root = zarr.open_group(str(path), mode="r+")
        old = root[f"{OUT}/logits"]
        root[OUT].attrs["n_features"] = width
        del root[f"{OUT}/logits"]
        root[OUT].create_array("logits", shape=values.shape, dtype="float32", chunks=old.chunks[:1] + (width,))[:] \
            = values
    else:
        with h5py.File(path, "r+") as f:
            f[OUT].attrs["n_features"] = json.dumps(width)
            del f[f"{OUT}/logits"]
            f[OUT].create_dataset("logits", data=values, chunks=(min(N, 64), width))


def test_logits_width_must_equal_the_number_of_classes(tmp_path, suffix, capsys):
    path = _build(tmp_path / f"s{suffix}")
    _widen_logits(path, 4)
    code, err, _ = _validate(path, capsys)
    assert code == 1
    assert err == [f"{path}: 1 violation(s) of the probestore schema:",
                   f"  - {OUT}: logits width differs from the number of classes, expected 3 (len(class_names)), "
                   "got n_features 4"]


def test_logits_width_is_keyed_on_the_recorded_num_classes(tmp_path, suffix, capsys):
    path = _build(tmp_path / f"s{suffix}", model={"name": "mlp", "num_classes": 4}, logits=4)
    assert _validate(path, capsys)[:2] == (0, [])
    _widen_logits(path, 3)  # now it disagrees with the model's own head
    code, err, _ = _validate(path, capsys)
    assert code == 1 and err[1:] == [
        f"  - {OUT}: logits width differs from the number of classes, expected 4 (the run's model.num_classes), "
        "got n_features 3"]


# --------------------------------------------------------------------------- links leaving the store


def test_symlinks_leaving_a_zarr_store_are_flagged(tmp_path, capsys):
    path = _build(tmp_path / "s.zarr")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(path / RELU1), elsewhere / "relu1")
    os.symlink(elsewhere / "relu1", path / RELU1)       # a whole block from outside
    chunk = next(p for p in sorted((path / RELU2 / "features").rglob("*")) if p.is_file() and p.name != "zarr.json")
    shutil.move(str(chunk), elsewhere / "chunk")
    os.symlink(elsewhere / "chunk", chunk)               # one chunk file from outside
    os.symlink("relu2", path / CKPT / "layers" / "relu3")  # inside the store: allowed
    code, err, _ = _validate(path, capsys)
    rel_chunk = chunk.relative_to(path).as_posix()
    assert code == 1
    assert err == [f"{path}: 2 violation(s) of the probestore schema:",
                   f"  - {RELU1}: symbolic link leaving the store, expected a file or directory inside s.zarr, got a "
                   f"link to {elsewhere / 'relu1'}",
                   f"  - {rel_chunk}: symbolic link leaving the store, expected a file or directory inside s.zarr, "
                   f"got a link to {elsewhere / 'chunk'}"]


def test_links_leaving_an_hdf5_store_are_flagged(tmp_path, capsys):
    path = _build(tmp_path / "s.h5")
    other = tmp_path / "other.h5"
    with h5py.File(path, "r") as src, h5py.File(other, "w") as dst:
        src.copy(src[RELU1], dst, "relu1")
    raw = tmp_path / "raw.bin"
    values = np.random.default_rng(2).random((N, 5)).astype("float32")
    values.tofile(raw)
    with h5py.File(path, "r+") as f:
        del f[RELU1]
        f[RELU1] = h5py.ExternalLink(str(other), "/relu1")
        attrs = dict(f[f"{RELU2}/features"].attrs)
        del f[f"{RELU2}/features"]
        ds = f.create_dataset(f"{RELU2}/features", shape=(N, 5), dtype="float32", external=[(str(raw), 0, raw.stat().st_size)])
        ds.attrs.update(attrs)
    code, err, _ = _validate(path, capsys)
    assert code == 1, err
    assert err[:3] == [f"{path}: 2 violation(s) of the probestore schema:",
                       f"  - {RELU1}: external link leaving the store, expected a node inside s.h5, got a link to "
                       f"{other}:/relu1",
                       f"  - {RELU2}/features: raw data in external file(s), expected data inside s.h5, got {raw}"]
