"""Model-output analyses (Graziani et al. Fig. 5) against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

from analyze.config import AnalysisConfig
from analyze.engine import run_analysis
from analyze.outputs import model_output_metrics
from analyze.results import read_table
from probestore.errors import DataError
from storage_schema.store import open_store
from tests.helpers.stores import make_store


def _direct(logits, y, idx, corrupted):
    pred = np.argmax(logits, axis=1)
    out = {f"{s}_error": np.mean(pred[i] != y[i]) for s, i in idx.items()}
    out.update({f"{s}_loss": -np.mean(log_softmax(logits[i], axis=1)[np.arange(i.size), y[i]])
                for s, i in idx.items()})
    tr = idx["train"]
    if corrupted[tr].any():
        out["clean_error"] = np.mean(pred[tr][~corrupted[tr]] != y[tr][~corrupted[tr]])
        out["corrupted_error"] = np.mean(pred[tr][corrupted[tr]] != y[tr][corrupted[tr]])
    return out


def test_metrics_against_numpy_with_clean_and_corrupted_samples():
    rng = np.random.default_rng(0)
    n, K = 300, 7
    y = rng.integers(0, K, n)
    corrupted = np.zeros(n, dtype=bool)
    corrupted[rng.choice(200, 60, replace=False)] = True
    y_train = np.where(corrupted, (y + 1 + rng.integers(0, K - 1, n)) % K, y)
    # a model that learned the training labels on most samples
    logits = rng.normal(size=(n, K)) + 3.0 * np.eye(K)[y_train] * (rng.random(n) < 0.8)[:, None]
    idx = {"train": np.arange(200), "valid": np.arange(200, 250), "test": np.arange(250, 300)}
    got = model_output_metrics(logits, {"true_labels": y, "train_labels": y_train}, idx, corrupted, K)
    for name, labels in (("true_labels", y), ("train_labels", y_train)):
        want = _direct(logits, labels, idx, corrupted)
        for key, value in want.items():
            assert got[name][key] == pytest.approx(value, rel=1e-12), (name, key)
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        hit = (top5 == labels[:, None]).any(axis=1)
        assert got[name]["test_top5_error"] == pytest.approx(1 - hit[idx["test"]].mean())
        assert got[name]["n_train"] == 200 and got[name]["n_test"] == 50
    # the model fits its (corrupted) training labels better than the true ones on corrupted samples
    assert got["train_labels"]["corrupted_error"] < got["true_labels"]["corrupted_error"]
    # clean samples have the same labels in both labelings
    assert got["train_labels"]["clean_error"] == got["true_labels"]["clean_error"]


def test_no_corruption_gives_nan_clean_corrupted_and_few_classes_no_top5():
    logits = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 2.0
    idx = {"train": np.arange(4), "valid": np.arange(4, 6), "test": np.zeros(0, dtype=int)}
    got = model_output_metrics(logits, {"true_labels": np.array([0, 1, 2, 1, 1, 2])}, idx, None, 3)["true_labels"]
    assert got["train_error"] == 0.25 and got["valid_error"] == 0.0
    assert np.isnan(got["clean_error"]) and np.isnan(got["corrupted_error"])
    assert np.isnan(got["train_top5_error"]) and np.isnan(got["test_error"]) and got["n_test"] == 0


def test_bad_logits_are_refused():
    idx = {"train": np.arange(2), "valid": np.arange(2), "test": np.arange(2)}
    with pytest.raises(DataError, match="NaN or Inf"):
        model_output_metrics(np.array([[0.0, np.nan], [1.0, 0.0]]), {"t": np.array([0, 1])}, idx, None, 2)
    with pytest.raises(DataError, match="wrong shape"):
        model_output_metrics(np.zeros((2, 3)), {"t": np.array([0, 1])}, idx, None, 2)


def test_engine_model_output_rows_equal_direct_computation(tmp_path):
    store = make_store(tmp_path / "s.h5", epochs=(0, 3), layers=(("l1", 4),))
    cfg = AnalysisConfig(scheduler="none", probes="outputs", results=str(tmp_path / "r.parquet"))
    table = read_table(run_analysis(store, cfg, progress=False, log=lambda m: None).results)
    assert set(table["probe"]) == {"model_output"} and set(table["layer"]) == {"outputs"}
    assert len(table) == 2 * 1 + 2 * 2  # clean: true labels; noisy: true + training labels
    with open_store(store) as s:
        codes = s.splits()
        idx = {name: np.flatnonzero(codes == c) for c, name in enumerate(("train", "valid", "test"))}
        for r in table.itertuples():
            logits = s.read_logits(r.run, r.checkpoint).astype(np.float64)
            y = s.labels() if r.target == "true_labels" else s.train_labels(r.run)
            corrupted = s.corrupted_mask(r.run)
            want = _direct(logits, y, idx, corrupted)
            for key in ("train_error", "valid_error", "test_error", "train_loss", "test_loss"):
                assert getattr(r, key) == pytest.approx(want[key], rel=1e-12)
            if corrupted.any():
                assert r.clean_error == pytest.approx(want["clean_error"])
                assert r.corrupted_error == pytest.approx(want["corrupted_error"])
            else:
                assert np.isnan(r.clean_error) and np.isnan(r.corrupted_error)
            assert r.n_features == 4 and r.reduction == "none" and r.hyperparameter == ""
    # trained epoch: the model fits its training labels, so clean error < corrupted error vs true labels
    late = table[(table.run == "noisy") & (table.epoch == 3) & (table.target == "true_labels")].iloc[0]
    assert late.clean_error < late.corrupted_error
