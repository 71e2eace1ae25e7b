"""``probestore validate`` on the schema-1.1 nodes: gradients (SCHEMA.md §6.1) and concept sets (§10).

One real store per backend is extracted (a small CNN, ``gap`` and ``random:30`` layers,
the gradient pass, dataset and external concept sets) and validates clean; each test
then copies it, breaks one node on disk with zarr / h5py directly (as a hand edit or a
crash would) and checks that the validator names that node and that violation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from torch import nn

from extract.gradients import extract_gradients
from extract.runner import extract_checkpoint, plan_extraction
from probestore.experiment import ExtractOptions
from storage_schema import layout
from storage_schema.concept_sets import (
    add_concept_set,
    concept_set_block_node,
    create_concept_block,
    write_concept_features,
)
from storage_schema.store import create_store
from storage_schema.validate import validate_store
from tests.helpers.torch_data import IndexedDataset

N, CHUNK = 70, 32
GRAD = "grad_own_logit"
G1 = layout.block_array_node("r", "e1", "conv1", GRAD)   # gap: lift_scale = 6·6
G2 = layout.block_array_node("r", "e1", "conv2", GRAD)   # random:30: lift_scale = 1
BANDED = "concept_sets/banded"
EXT = concept_set_block_node("r", "e1", "stripes", "conv2")


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.conv2(self.relu1(self.conv1(x))).flatten(1))


def _build(path: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, N)
    store = create_store(path, dataset_name="toy", sample_ids=[f"s{i:02d}" for i in range(N)], labels=labels,
                         splits=rng.integers(0, 3, N).astype(np.int8), class_names=["a", "b", "c"])
    store.add_run("r", model={"name": "cnn"}, architecture="cnn-0", train_labels=labels,
                  corrupted=np.zeros(N, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("r", "e1", epoch=1)
    torch.manual_seed(0)
    model = SmallCNN().eval()
    data = IndexedDataset(torch.randn(N, 3, 6, 6, generator=torch.Generator().manual_seed(1)))
    opts = ExtractOptions(layers=("conv1", "conv2"), reductions={"conv1": "gap", "conv2": "random:30"},
                          batch_size=16, chunk_rows=CHUNK, device="cpu")
    plan = plan_extraction(model, (3, 6, 6), opts)
    extract_checkpoint(store, "r", "e1", model, data, plan, opts, device=torch.device("cpu"), progress=False)
    extract_gradients(store, "r", "e1", model, data, plan.reductions, batch_size=16, device=torch.device("cpu"),
                      progress=False)
    rows = np.array([3, 10, 20, 41, 55])
    add_concept_set(store, "banded", kind="dataset", sample_ids=store.sample_ids()[rows], rows=rows)
    rr = np.arange(0, N, 7)
    add_concept_set(store, "random_0", kind="dataset", sample_ids=store.sample_ids()[rr], rows=rr, role="random",
                    source=f"random:{len(rr)}", seed=0)
    add_concept_set(store, "stripes", kind="external", sample_ids=[f"img{i}.png" for i in range(4)])
    for layer in ("conv1", "conv2"):
        meta = store.block_info("r", "e1", layer)
        create_concept_block(store, "r", "e1", "stripes", layer, n_features=meta.n_features)
        write_concept_features(store, "r", "e1", "stripes", layer, rng.standard_normal((4, meta.n_features)))
    store.close()
    return path


@pytest.fixture(scope="module", params=[".zarr", ".h5"])
def pristine(request, tmp_path_factory):
    path = _build(tmp_path_factory.mktemp("validate") / f"s{request.param}")
    assert validate_store(path) == []
    return path


@pytest.fixture
def store(pristine, tmp_path):
    """A fresh copy of the pristine store to break."""
    dest = tmp_path / pristine.name
    (shutil.copytree if pristine.is_dir() else shutil.copy2)(pristine, dest)
    return dest


# --------------------------------------------------------------------------- raw edits, per container


def _set_attr(path: Path, node: str, key: str, value) -> None:
    if path.suffix == ".zarr":
        root = zarr.open_group(str(path), mode="r+")
        (root if node == "/" else root[node]).attrs[key] = value
    else:
        with h5py.File(path, "r+") as f:
            f[node].attrs[key] = json.dumps(value)


def _del_attr(path: Path, node: str, key: str) -> None:
    if path.suffix == ".zarr":
        del zarr.open_group(str(path), mode="r+")[node].attrs[key]
    else:
        with h5py.File(path, "r+") as f:
            del f[node].attrs[key]


def _read(path: Path, node: str) -> np.ndarray:
    if path.suffix == ".zarr":
        return np.asarray(zarr.open_group(str(path), mode="r")[node][...])
    with h5py.File(path, "r") as f:
        return f[node][()]


def _replace(path: Path, node: str, values: np.ndarray, chunks=None, *, drop_last_chunk: bool = False) -> None:
    """(Re)write an array (other shape, dtype, chunks), keeping its attributes; maybe leave its last chunk unwritten."""
    values = np.asarray(values)
    chunks = chunks or values.shape
    upto = (len(values) - 1) // chunks[0] * chunks[0] if drop_last_chunk else len(values)
    if path.suffix == ".zarr":
        group = zarr.open_group(str(path), mode="r+")
        attrs = dict(group[node].attrs) if node in group else {}
        arr = group.create_array(node, shape=values.shape, dtype=values.dtype, chunks=chunks, overwrite=True)
        arr.attrs.update(attrs)
        arr[:upto] = values[:upto]
    else:
        with h5py.File(path, "r+") as f:
            attrs = dict(f[node].attrs) if node in f else {}
            if node in f:
                del f[node]
            dset = f.create_dataset(node, shape=values.shape, dtype=values.dtype, chunks=chunks)
            dset[:upto] = values[:upto]
            for k, v in attrs.items():
                dset.attrs[k] = v


def _problems_at(path: Path, node: str) -> list[str]:
    """Violations; each must be about ``node`` (the corruption is reported where it is)."""
    problems = validate_store(path)
    assert problems, "the corruption went unnoticed"
    assert all(node in p for p in problems), problems
    return problems


def _has(problems: list[str], *parts: str) -> bool:
    return any(all(s in p for s in parts) for p in problems)


# --------------------------------------------------------------------------- gradients (§6.1)


def test_the_real_store_holds_what_is_checked(pristine):
    """The pristine store really has the nodes under test (so the clean pass means something)."""
    assert _read(pristine, G1).shape == (N, 4) and _read(pristine, G2).shape == (N, 30)
    assert np.isfinite(_read(pristine, G1)).all() and np.abs(_read(pristine, G1)).sum() > 0
    assert _read(pristine, f"{BANDED}/rows").tolist() == [3, 10, 20, 41, 55]
    assert _read(pristine, f"{EXT}/features").shape == (4, 30)


@pytest.mark.parametrize(("node", "key", "value", "expected"), [
    (G1, "lift_scale", 1.0, ("'lift_scale', expected 36", "got 1.0")),
    (G2, "lift_scale", 36.0, ("'lift_scale', expected 1", "got 36.0")),
    (G1, "lift_scale", -36.0, ("'lift_scale', expected a finite number > 0",)),
    (G1, "lift_scale", "36", ("attribute 'lift_scale' should be int or float", "got str")),
    (G1, "lift_scale", True, ("attribute 'lift_scale' should be int or float", "got bool")),
    (G1, "kind", "grad", ("attribute 'kind', expected 'gradient'", "got 'grad'")),
    (G1, "of", "logit", ("attribute 'of', expected 'own_class_logit'", "got 'logit'")),
    (G1, "complete", "yes", ("attribute 'complete' should be bool",)),
    (G1, "rows_done", N + 5, ("'rows_done' out of range", f"expected 0..{N}", f"got {N + 5}")),
    (G1, "rows_done", 40, ("complete but rows_done is not n_samples", f"expected {N}", "got 40")),
    (G1, "lift_scael", 36.0, ("unknown attribute 'lift_scael'",)),
])
def test_gradient_attributes(store, node, key, value, expected):
    _set_attr(store, node, key, value)
    problems = _problems_at(store, node)
    assert _has(problems, node, *expected), problems


@pytest.mark.parametrize("key", ["kind", "of", "reduction", "lift_scale", "complete", "rows_done"])
def test_gradient_required_attribute_missing(store, key):
    _del_attr(store, G2, key)
    assert _has(_problems_at(store, G2), G2, f"missing attribute {key!r}")


def test_gradient_nonlinear_or_foreign_reduction(store):
    red = _read_attrs(store, G1)["reduction"]
    _set_attr(store, G1, "reduction", {**red, "kind": "gmp"})
    problems = _problems_at(store, G1)
    assert _has(problems, "reduction kind, expected a linear one", "got 'gmp'")
    assert _has(problems, "'reduction' differs from the block's", "'kind': 'gap'")


def _read_attrs(path: Path, node: str) -> dict:
    if path.suffix == ".zarr":
        return dict(zarr.open_group(str(path), mode="r")[node].attrs)
    with h5py.File(path, "r") as f:
        return {k: json.loads(v) for k, v in f[node].attrs.items()}


def test_gradient_shape_dtype_and_chunk_rows(store, tmp_path):
    g = _read(store, G2)
    _replace(store, G2, np.concatenate([g, g[:, :1]], 1), (CHUNK, 31))
    assert _has(_problems_at(store, G2), "shape differs from the block's", f"expected ({N}, 30)", f"got ({N}, 31)")
    _replace(store, G2, g.astype(np.float64), (CHUNK, 30))
    assert _has(_problems_at(store, G2), "dtype, expected float32", "got float64")
    _replace(store, G2, g, (16, 30))
    assert _has(_problems_at(store, G2), "chunk rows differ from the block's", f"expected {CHUNK}", "got 16")
    _replace(store, G2, g[:-1], (CHUNK, 30))  # not one row per sample
    assert _has(_problems_at(store, G2), "samples on axis 0", f"got shape ({N - 1}, 30)")


def test_complete_gradient_with_nan_or_a_missing_chunk(store):
    g = _read(store, G1)
    bad = g.copy()
    bad[5, 1] = np.nan
    _replace(store, G1, bad, (CHUNK, 4))
    assert _problems_at(store, G1) == [f"{G1}: NaN/Inf in a complete gradient array, expected finite values"]
    _replace(store, G1, g, (CHUNK, 4), drop_last_chunk=True)
    assert _problems_at(store, G1) == [f"{G1}: chunks missing in a complete gradient array, expected 3, got 2"]
    # the same array mid-pass (complete false, resume point 64) is fine: readers skip it (§6.1, §10)
    _set_attr(store, G1, "complete", False)
    _set_attr(store, G1, "rows_done", 2 * CHUNK)
    assert validate_store(store) == []


def test_gradient_group_instead_of_array(store):
    layer = layout.block_node("r", "e1", "conv2")
    if store.suffix == ".zarr":
        shutil.rmtree(store / G2)
        zarr.open_group(str(store), mode="r+").create_group(G2)
    else:
        with h5py.File(store, "r+") as f:
            del f[G2]
            f.create_group(G2)
    assert _problems_at(store, layer) == [f"{G2}: node kind group, expected an array [n, n_features]"]


# --------------------------------------------------------------------------- concept sets (§10)


@pytest.mark.parametrize(("rows", "expected"), [
    ([3, 20, 10, 41, 55], ("not sorted", "decrease at position 2")),
    ([3, 10, 10, 41, 55], ("not unique", "expected 5 distinct rows", "got 4")),
    ([3, 10, 20, 41, N], ("out of range", f"expected rows in 0..{N - 1}", f"got 3..{N}")),
    ([-1, 10, 20, 41, 55], ("out of range", "got -1..55")),
    ([3, 10, 21, 41, 55], ("do not point at sample_id (1 of 5)", "samples/sample_id[21] == 's20'", "got 's21'")),
])
def test_dataset_set_rows(store, rows, expected):
    _replace(store, f"{BANDED}/rows", np.array(rows, np.int64))
    problems = _problems_at(store, f"{BANDED}/rows")
    assert _has(problems, *expected), problems


def test_dataset_set_rows_array_missing_or_mistyped(store):
    rows = _read(store, f"{BANDED}/rows")
    _replace(store, f"{BANDED}/rows", rows.astype(np.int32))
    assert _problems_at(store, BANDED) == [f"{BANDED}/rows: dtype, expected int64, got int32"]
    _replace(store, f"{BANDED}/rows", rows[:4])
    assert _has(_problems_at(store, BANDED), "shape, expected (5,) (attribute n)", "got (4,)")
    if store.suffix == ".zarr":
        shutil.rmtree(store / BANDED / "rows")
    else:
        with h5py.File(store, "r+") as f:
            del f[f"{BANDED}/rows"]
    assert _has(_problems_at(store, BANDED), "missing array rows", "kind 'dataset'")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("role", "negative", ("attribute 'role', expected one of ('concept', 'random')", "got 'negative'")),
    ("kind", "folder", ("attribute 'kind', expected one of ('dataset', 'external')", "got 'folder'")),
    ("n", 6, ("sample_id: shape, expected (6,) (attribute n)", "got (5,)")),
    ("n", 0, ("attribute 'n' (examples), expected >= 1", "got 0")),
    ("seed", "zero", ("attribute 'seed' should be int or null",)),
    ("colour", "red", ("unknown attribute 'colour'",)),
])
def test_concept_set_attributes(store, key, value, expected):
    _set_attr(store, BANDED, key, value)
    problems = _problems_at(store, BANDED)
    assert _has(problems, *expected), problems


def test_a_set_being_written_is_not_a_set(store):
    _del_attr(store, BANDED, "kind")   # attributes are written last (§10): readers skip it, so does validate
    assert validate_store(store) == []


def test_external_set_has_no_rows(store):
    _replace(store, "concept_sets/stripes/rows", np.arange(4, dtype=np.int64))
    assert _problems_at(store, "concept_sets/stripes/rows") == [
        "concept_sets/stripes/rows: rows in an external set, expected none (kind 'dataset' only)"]


@pytest.mark.parametrize(("edit", "expected"), [
    (("n_features", 31), ("'n_features' differs from the layer block's", "expected 30", "got 31")),
    (("reduction", {"kind": "gap"}), ("'reduction' differs from the layer block's", "'kind': 'random'")),
    (("complete", None), ("missing attribute 'complete'",)),
    (("n_features", "30"), ("attribute 'n_features' should be int",)),
])
def test_external_block_attributes(store, edit, expected):
    key, value = edit
    if value is None:
        _del_attr(store, EXT, key)
    else:
        _set_attr(store, EXT, key, value)
    problems = _problems_at(store, EXT)
    assert _has(problems, *expected), problems


def test_external_block_arrays(store):
    feats = _read(store, f"{EXT}/features")
    _replace(store, f"{EXT}/features", feats[:3])
    assert _problems_at(store, EXT) == [f"{EXT}/features: shape, expected (4, 30) (set n, n_features), got (3, 30)"]
    bad = feats.copy()
    bad[0, 0] = np.inf
    _replace(store, f"{EXT}/features", bad)
    assert _problems_at(store, EXT) == [f"{EXT}/features: NaN/Inf in a complete concept set block, expected "
                                        "finite values"]
    _replace(store, f"{EXT}/features", feats.astype(np.int32))
    assert _has(_problems_at(store, EXT), "dtype, expected float32 or float16", "got int32")
    _set_attr(store, EXT, "complete", False)  # an unfinished block is allowed in a complete checkpoint (§10)
    _replace(store, f"{EXT}/features", feats, drop_last_chunk=True)
    assert validate_store(store) == []


def test_external_blocks_must_belong_to_an_external_set_and_a_layer(store):
    ckpt = layout.checkpoint_node("r", "e1")
    feats = _read(store, f"{EXT}/features")
    for bad in (f"{ckpt}/concept_sets/nosuch/layers/conv2", f"{ckpt}/concept_sets/banded/layers/conv2",
                f"{ckpt}/concept_sets/stripes/layers/fc9"):
        if store.suffix == ".zarr":
            g = zarr.open_group(str(store), mode="r+").require_group(bad)
            g.attrs.update({"n_features": 30, "complete": True})
            g.create_array("features", shape=feats.shape, dtype=feats.dtype, chunks=feats.shape)[:] = feats
        else:
            with h5py.File(store, "r+") as f:
                g = f.require_group(bad)
                g.attrs["n_features"], g.attrs["complete"] = "30", "true"
                g.create_dataset("features", data=feats, chunks=feats.shape)
    problems = validate_store(store)
    assert len(problems) == 3, problems
    assert _has(problems, "concept_sets/nosuch: features of an unregistered concept set", "got 'nosuch'")
    assert _has(problems, "concept_sets/banded: own features for a set of kind 'dataset'",
                "expected kind 'external'")
    assert _has(problems, "concept_sets/stripes/layers/fc9: no layer block 'fc9' in the checkpoint")


# --------------------------------------------------------------------------- schema version (§2)


def test_a_1_0_store_must_not_hold_1_1_nodes(store):
    _set_attr(store, "/", "schema_version", "1.0")
    problems = validate_store(store)
    assert problems == [f"/: schema_version '1.0' with schema-1.1 nodes, expected '1.1' (SCHEMA.md §2), got "
                        f"concept_sets, {G1}, {G2}"]
