"""Hewitt & Liang's control task on recurring sample types, selectivity per split, the C of
the training-label probe, and grid edges, on real Zarr and HDF5 stores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from analyze.config import AnalysisConfig
from analyze.controls import control_labels
from analyze.engine import run_analysis
from analyze.results import read_table
from analyze.solvers.logistic import fit_logistic_block
from extract.sample_types import area_means, auto_n_types, cluster_types
from probestore.cli import main
from probestore.errors import ConfigError, DataError, NotFoundError
from storage_schema.store import create_store, open_store
from storage_schema.validate import validate_store
from tests.helpers.analysis import quiet
from tests.helpers.stores import make_store

BACKENDS = ("zarr", "h5")
K = 10


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits (real images), a seeded 70/15/15 split and their k-means types."""
    X, y = load_digits(return_X_y=True)
    split = np.random.default_rng(0).choice(3, size=y.size, p=[0.7, 0.15, 0.15]).astype(np.int8)
    n_types = auto_n_types(np.bincount(split), K)
    types = cluster_types(area_means((X.reshape(-1, 8, 8) / 16.0).astype(np.float32)), n_types, seed=0)
    return X.astype(np.float32), y, split, types


def _pixel_store(path, digits, *, with_types=True):
    X, y, split, types = digits
    store = create_store(path, dataset_name="digits", sample_ids=[f"d{i:04d}" for i in range(y.size)],
                         labels=y, splits=split, class_names=[str(k) for k in range(K)])
    if with_types:
        store.set_sample_types(types, method={"kind": "kmeans", "n_clusters": int(types.max() + 1)})
    store.add_run("pixels", model={"name": "none"}, architecture="none", train_labels=y,
                  corrupted=np.zeros(y.size, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("pixels", "epoch_0000", epoch=0)
    store.create_block("pixels", "epoch_0000", "input", n_features=X.shape[1], reduction={"kind": "flatten"})
    store.write_rows("pixels", "epoch_0000", "input", 0, X)
    store.mark_block_complete("pixels", "epoch_0000", "input")
    store.mark_checkpoint_complete("pixels", "epoch_0000")
    store.close()
    return path


# ---------------------------------------------------------------------------- the store API


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_types_round_trip_and_write_once(tmp_path, backend):
    path = tmp_path / f"s.{backend}"
    store = create_store(path, dataset_name="t", sample_ids=[f"s{i}" for i in range(6)], labels=[0, 1] * 3,
                         splits=[0, 0, 1, 1, 2, 2], class_names=["a", "b"])
    assert not store.has_sample_types() and store.sample_types_info() == {}
    with pytest.raises(NotFoundError, match="set_sample_types"):
        store.sample_types()
    word_ids = np.array([-3, 10**12, -3, 7, 7, 10**12])  # any integers: word-type ids of a vocabulary
    store.set_sample_types(word_ids, method={"kind": "word type"})
    store.set_sample_types(word_ids)  # the same again: a no-op
    with pytest.raises(ConfigError, match="other sample types"):
        store.set_sample_types(np.arange(6))
    with pytest.raises(DataError, match="one integer per sample"):
        store.set_sample_types(np.zeros(6, dtype=float))
    store.close()
    with open_store(path) as s:
        np.testing.assert_array_equal(s.sample_types(), word_ids)
        assert s.sample_types_info() == {"n_types": 3, "method": {"kind": "word type"}}
        assert s.schema_version >= (1, 2)  # a store of this version (1.3 since token rows)
    assert validate_store(path) == []
    with open_store(path, "a") as s:
        s.set_sample_types(np.arange(6), overwrite=True)
        s.backend.update_attrs("samples/type", {"n_types": 5})  # a hand edit
    assert validate_store(path) == ["samples/type: attribute n_types does not count the distinct ids, "
                                    "expected 6, got 5"]


def test_older_store_gains_version_1_2_with_its_types(tmp_path, capsys):
    path = tmp_path / "old.zarr"
    store = create_store(path, dataset_name="t", sample_ids=["a", "b", "c"], labels=[0, 1, 0], splits=[0, 1, 2],
                         class_names=["x", "y"])
    store.backend.update_attrs("", {"schema_version": "1.1"})
    store.close()
    assert main(["inspect", str(path)]) == 0
    assert "sample types: none" in capsys.readouterr().out
    with open_store(path, "a") as s:
        assert s.schema_version == (1, 1)
        s.set_sample_types(np.array([4, 4, 9]), method={"kind": "kmeans", "n_clusters": 2, "seed": 0})
    with open_store(path) as s:
        assert s.schema_version == (1, 2) and s.root_attrs["schema_version"] == "1.2"
    assert validate_store(path) == []
    assert main(["inspect", str(path)]) == 0
    assert "sample types: 2 (kmeans; n_clusters 2, seed 0)" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the types of images


def test_area_means_and_auto_number_of_types():
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ref = x.reshape(5, 7, 4, 7, 4).mean(axis=(2, 4)).reshape(5, -1) / 255
    np.testing.assert_allclose(area_means(x, grid=7), ref, atol=1e-5)
    rgb = np.random.default_rng(1).integers(0, 256, (3, 10, 13, 3), dtype=np.uint8)
    assert area_means(rgb).shape == (3, 8 * 8 * 3)
    np.testing.assert_allclose(area_means(rgb, grid=20), rgb.reshape(3, -1) / 255, atol=1e-5)  # small: every pixel
    assert auto_n_types([7000, 1500, 1500], 10) == 150  # ~10 per type in the smallest split
    assert auto_n_types([140, 30, 30], 10) == 20  # at least two per class
    assert auto_n_types([700_000, 150_000, 150_000], 10) == 1000  # capped
    assert auto_n_types([5, 0, 1], 10) == 6  # never more than the samples


# ---------------------------------------------------------------------------- the control labels


def test_control_labels_recur_within_types_and_keep_class_counts(digits):
    _, y, split, types = digits
    ctrl = control_labels(types, y, K, seed=0)
    np.testing.assert_array_equal(ctrl, control_labels(types, y, K, seed=0))
    assert not np.array_equal(ctrl, control_labels(types, y, K, seed=1))

    def predictable_from_train(labels):
        """Fraction of test samples whose label is the majority label of train samples of their type."""
        hits = []
        for i in np.flatnonzero(split == 2):
            mates = labels[(types == types[i]) & (split == 0)]
            if mates.size:
                hits.append(np.bincount(mates, minlength=K).argmax() == labels[i])
        return float(np.mean(hits)), len(hits)

    acc, n_seen = predictable_from_train(ctrl)
    assert acc == 1.0 and n_seen > 0.95 * np.sum(split == 2)  # types recur: every seen type carries its label
    old = np.random.default_rng(0).permutation(y)  # the old per-sample construction
    assert predictable_from_train(old)[0] < 0.3
    sizes = np.bincount(types)
    assert np.abs(np.bincount(ctrl, minlength=K) - np.bincount(y, minlength=K)).max() <= sizes.max()
    assert np.mean(ctrl == y) < 0.4  # not the true labels in disguise
    hl = control_labels(types, y, K, seed=0, draw="empirical")  # Hewitt & Liang's own draw
    assert all(np.unique(hl[types == t]).size == 1 for t in np.unique(types))


# ---------------------------------------------------------------------------- control probe on a real store


@pytest.fixture(scope="module", params=BACKENDS)
def pixel_table(request, digits, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"pixels-{request.param}")
    store = _pixel_store(tmp / f"digits.{request.param}", digits)
    config = AnalysisConfig(scheduler="none", Cs=(0.01, 1.0, 100.0), probes=("classifier", "control"),
                            results=str(tmp / "r.parquet"))
    summary = run_analysis(store, config, progress=False, log=quiet)
    return read_table(summary.results).set_index("probe_id")


def test_control_probe_on_raw_pixels_is_learnable_and_at_the_task_probes_C(pixel_table, digits):
    X, y, split, types = digits
    true = pixel_table.loc["pixels/epoch_0000/input/classifier/true_labels"]
    ctrl = pixel_table.loc["pixels/epoch_0000/input/control/control_labels"]
    assert true["status"] == ctrl["status"] == "ok"
    assert ctrl["hyperparameter_value"] == true["hyperparameter_value"]  # H&L: same probe settings
    assert "true-label probe's C" in ctrl["message"]
    control_test_acc = 1 - ctrl["test_error"]
    assert control_test_acc > 0.4  # chance is 0.1: the control task is learnable (types recur)
    for s in ("train", "valid", "test"):
        assert true[f"selectivity_{s}"] == pytest.approx(ctrl[f"{s}_error"] - true[f"{s}_error"])
    # the old construction made selectivity_test = accuracy - 1/K; now the control probe is far above chance
    assert (1 - true["test_error"] - 1 / K) - true["selectivity_test"] > 0.3

    # scikit-learn at that C on the same data and control labels
    yc = control_labels(types, y, K, seed=0)
    sc = StandardScaler().fit(X[split == 0])
    ref = LogisticRegression(C=true["hyperparameter_value"], tol=1e-10, max_iter=20000)
    ref.fit(sc.transform(X[split == 0]), yc[split == 0])
    for code, s in enumerate(("train", "valid", "test")):
        Z, ys = sc.transform(X[split == code]), yc[split == code]
        assert abs(ctrl[f"{s}_error"] - np.mean(ref.predict(Z) != ys)) <= 1.0 / ys.size + 1e-12, s
        assert ctrl[f"{s}_loss"] == pytest.approx(log_loss(ys, ref.predict_proba(Z), labels=range(K)), rel=2e-3)


def test_fixed_C_fits_once_and_equals_the_grid_fit_at_that_C(digits):
    X, y, split, types = digits
    yc = control_labels(types, y, K, seed=0)
    Xs = [X[split == c] for c in range(3)]
    sets = {"true": tuple(y[split == c] for c in range(3)), "control": tuple(yc[split == c] for c in range(3))}
    kw = dict(n_classes=K, dtype=np.float64, tol=1e-8, max_iter=5000)
    res = fit_logistic_block(*Xs, sets, [0.01, 0.1, 1.0], fixed_C={"control": "true"}, **kw)
    grid = fit_logistic_block(*Xs, {"control": sets["control"]}, [res["true"].C], **kw)["control"]
    assert res["control"].C == res["true"].C
    assert np.isnan(res["control"].path["ce_valid"]).sum() == 2  # fitted at one C only
    np.testing.assert_allclose(res["control"].coef, grid.coef, atol=1e-4 * np.abs(grid.coef).max())
    assert res["control"].ce_test == pytest.approx(grid.ce_test, rel=1e-6)
    at = fit_logistic_block(*Xs, sets, [0.01, 0.1], fixed_C={"control": 5.0}, **kw)["control"]
    assert at.C == 5.0 and at.C_index == -1 and np.isfinite(at.error_test)
    with pytest.raises(ConfigError, match="fitted along the grid"):
        fit_logistic_block(*Xs, sets, [0.1], fixed_C={"control": "control"}, **kw)
    with pytest.raises(ConfigError, match="unknown label set"):
        fit_logistic_block(*Xs, sets, [0.1], fixed_C={"nope": 1.0}, **kw)


def test_control_alone_still_takes_the_true_label_C(tmp_path):
    store = make_store(tmp_path / "s.zarr", runs=(("clean", 0.0),), epochs=(1,))
    tables = {}
    for probes in (("control",), ("classifier", "control")):
        config = AnalysisConfig(scheduler="none", Cs=(0.001, 0.1, 10.0), probes=probes,
                                results=str(tmp_path / f"{len(probes)}.parquet"))
        tables[probes] = read_table(run_analysis(store, config, progress=False, log=quiet).results)
    alone, both = tables[("control",)], tables[("classifier", "control")].set_index("probe_id")
    assert list(alone["probe"]) == ["control"] * 3  # one row per layer: no classifier rows asked for
    for _, row in alone.iterrows():
        true = both.loc[row["probe_id"].replace("control/control_labels", "classifier/true_labels")]
        assert row["hyperparameter_value"] == true["hyperparameter_value"]
        assert row["test_error"] == both.loc[row["probe_id"], "test_error"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_without_types_fails_control_rows_and_the_fix_works(tmp_path, backend, capsys):
    store = make_store(tmp_path / f"s.{backend}", runs=(("clean", 0.0),), epochs=(1,), types=False)
    results = tmp_path / "r.parquet"
    args = ["analyze", str(store), "-o", str(results), "--scheduler", "none", "--Cs", "0.01,0.1,1",
            "--probes", "classifier,control", "--layers", "l1"]
    assert main(args) == 0
    t = read_table(results).set_index("probe_id")
    ctrl = t.loc["clean/epoch_0001/l1/control/control_labels"]
    assert ctrl["status"] == "failed" and "\n" not in ctrl["message"]
    assert "no control task" in ctrl["message"] and "set_sample_types" in ctrl["message"]
    assert t.loc["clean/epoch_0001/l1/classifier/true_labels", "status"] == "ok"
    # the fix the message gives: add the types, rerun with --retry-failed
    with open_store(store, "a") as s:
        s.set_sample_types(np.arange(s.n_samples) % 24)
    assert main([*args, "--retry-failed"]) == 0
    t = read_table(results).set_index("probe_id")
    assert t.loc["clean/epoch_0001/l1/control/control_labels", "status"] == "ok"
    assert np.isfinite(t.loc["clean/epoch_0001/l1/classifier/true_labels", "selectivity_test"])


# ---------------------------------------------------------------------------- training labels of memorizing runs


def _memorizing_store(path, *, n=400, F=12, seed=0):
    """A 1-memorizing layer: train rows encode their (random) training labels, valid/test rows nothing.

    Like a layer that memorized random labels: the training labels are linearly readable
    on train (and on held-out train samples), the true classes nowhere.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    split = rng.choice(3, size=n, p=[0.6, 0.2, 0.2]).astype(np.int8)
    train_labels = np.where(split == 0, rng.integers(0, 4, n), y)
    store = create_store(path, dataset_name="mem", sample_ids=[f"s{i}" for i in range(n)], labels=y,
                         splits=split, class_names=list("abcd"))
    store.add_run("mem", model={"name": "mlp"}, architecture="mlp", train_labels=train_labels,
                  corrupted=train_labels != y, corruption={"fraction": 1.0, "mode": "uniform", "seed": 0})
    store.add_checkpoint("mem", "epoch_0010", epoch=10)
    codes = rng.normal(size=(4, F))
    X = rng.normal(size=(n, F)) * 1.0
    X[split == 0] += 0.6 * codes[train_labels[split == 0]]
    store.create_block("mem", "epoch_0010", "relu", n_features=F)
    store.write_rows("mem", "epoch_0010", "relu", 0, X.astype(np.float32))
    store.mark_block_complete("mem", "epoch_0010", "relu")
    store.mark_checkpoint_complete("mem", "epoch_0010")
    store.close()
    return path, X, split, train_labels


def test_training_label_C_is_selected_on_held_out_training_labels(tmp_path):
    Cs = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
    path, X, split, train_labels = _memorizing_store(tmp_path / "mem.zarr")
    # the old rule: fitted on training labels, selected on the (true) valid labels -> strongest C
    old = fit_logistic_block(X[split == 0], X[split == 1], None,
                             {"t": (train_labels[split == 0], train_labels[split == 1], None)}, Cs, n_classes=4)["t"]
    assert old.C == min(Cs)
    config = AnalysisConfig(scheduler="none", Cs=Cs, probes=("classifier",), results=str(tmp_path / "r.parquet"))
    table = read_table(run_analysis(path, config, progress=False, log=quiet).results).set_index("probe_id")
    row = table.loc["mem/epoch_0010/relu/classifier/train_labels"]
    assert row["status"] == "ok" and row["hyperparameter_value"] > min(Cs)
    assert "inner split of train with the training labels" in row["message"]
    assert row["train_error"] < old.error_train - 0.1  # it reads the memorized labels the old C hid


# ---------------------------------------------------------------------------- grid edges


def test_grid_edge_column_warning_and_wider_grid(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr", runs=(("clean", 0.0),), epochs=(3,))
    narrow = tmp_path / "narrow.parquet"
    base = ["analyze", str(store), "--scheduler", "none", "--probes", "classifier,control,rcv", "--layers", "l2"]
    assert main([*base, "-o", str(narrow), "--Cs", "1e-6,1e-5", "--alphas", "1e6,1e7"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "--Cs / --alphas" in err and "largest C" in err and "smallest alpha" in err
    t = read_table(narrow).set_index("probe_id")
    assert t.loc["clean/epoch_0003/l2/classifier/true_labels", "grid_edge"] == "high"  # still improving at 1e-5
    assert t.loc["clean/epoch_0003/l2/rcv/area", "grid_edge"] == "low"
    assert t.loc["clean/epoch_0003/l2/control/control_labels", "grid_edge"] == ""  # not selected: no edge
    wide = tmp_path / "wide.parquet"
    assert main([*base, "-o", str(wide), "--Cs", "1e-4,1e-3,1e-2,0.1,1,10,100,1e3", "--alphas",
                 "1e-4,1e-3,1e-2,0.1,1,10,100,1e3"]) == 0
    t = read_table(wide).set_index("probe_id")
    assert t.loc["clean/epoch_0003/l2/classifier/true_labels", "grid_edge"] == ""
    assert t.loc["clean/epoch_0003/l2/rcv/area", "grid_edge"] == ""


def test_tables_of_the_old_results_version_are_not_mixed(tmp_path):
    from analyze.results import ResultsWriter

    path = tmp_path / "r.parquet"
    w = ResultsWriter(path, {"fingerprint": "fp", "version": "1.0", "settings": {}})
    w.write_part(("a",), [{"probe_id": "x", "status": "ok"}])
    w.finalize()
    with pytest.raises(ConfigError, match="results version 1.0"):
        ResultsWriter(path, {"fingerprint": "fp", "settings": {}})
    Path(path).unlink()  # the fix: delete the old table (and its csv) or write elsewhere
    ResultsWriter(path, {"fingerprint": "fp", "settings": {}})


# ---------------------------------------------------------------------------- extraction writes the types

EXTRACT_CONFIG = """
[experiment]
name = "types"
store = "{store}"
[dataset]
kind = "idx"
path = "{mnist}"
subset = "test"
max_samples = 300
[model]
name = "mlp"
options = {{ depth = 1, width = 16 }}
[[runs]]
name = "a"
checkpoints = "{ckpts}"
[extract]
layers = ["input"]
"""


@pytest.mark.slow
@pytest.mark.torch
def test_extraction_writes_types_and_adds_them_to_a_store_without(tmp_path, capsys):
    from tests.conftest import MNIST_DIR, require_data

    require_data(MNIST_DIR)
    import torch

    from extract.models import ModelSpec, build_model

    (tmp_path / "ckpt").mkdir()
    spec = ModelSpec("mlp", 10, (1, 28, 28), {"depth": 1, "width": 16})
    torch.save(build_model(spec, seed=1).state_dict(), tmp_path / "ckpt" / "epoch_0.pt")
    store = tmp_path / "types.zarr"
    config = tmp_path / "exp.toml"
    config.write_text(EXTRACT_CONFIG.format(store=store, mnist=MNIST_DIR, ckpts=tmp_path / "ckpt"))
    assert main(["extract", str(config), "--no-progress"]) == 0
    with open_store(store) as s:
        types, splits, info = s.sample_types(), s.splits(), s.sample_types_info()
    n_types = auto_n_types(np.bincount(splits), 10)  # 300 samples: two types per class, 20
    assert info["n_types"] == np.unique(types).size == n_types and info["method"]["kind"] == "kmeans"
    for code in range(3):  # types recur across splits
        assert np.isin(types[splits == code], types[splits == 0]).mean() > 0.9
    # a store written before schema 1.2 (no types): the same extract command adds them, features kept
    with open_store(store, "a") as s:
        s.backend.delete("samples/type")
        before = s.read_layer("a", s.checkpoints("a")[0].name, "input")
    assert main(["extract", str(config), "--no-progress"]) == 0
    with open_store(store) as s:
        np.testing.assert_array_equal(s.sample_types(), types)
        np.testing.assert_array_equal(s.read_layer("a", s.checkpoints("a")[0].name, "input"), before)
    assert validate_store(store) == []
