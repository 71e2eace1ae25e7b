"""Ridge / RCV solver against scikit-learn's StandardScaler + Ridge pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from analyze.metrics import mspe, r2
from analyze.solvers.ridge import _select, fit_rcv_block, fit_ridge_path
from analyze.solvers.standardize import (
    GramAccumulator,
    Standardizer,
    chunk_stats,
    merge_stats,
    stats_from_arrays,
)
from probestore.errors import ConfigError, DataError

ALPHAS = np.logspace(-3, 5, 15)


def make_block(n_train, F, T=17, n_valid=60, n_test=50, seed=0, dtype=np.float64):
    """Correlated, unevenly scaled features; targets with varied noise so alphas differ."""
    rng = np.random.default_rng(seed)
    n = n_train + n_valid + n_test
    mix = rng.normal(size=(F, F)) / np.sqrt(F)
    X = (rng.normal(size=(n, F)) @ mix) * rng.uniform(0.2, 5.0, F) + rng.normal(size=F) * 3
    W = rng.normal(size=(F, T)) * (rng.random((F, T)) < 0.3)
    Y = X @ W / np.sqrt(F) + rng.normal(size=(n, T)) * rng.uniform(0.1, 3.0, T)
    X = X.astype(dtype)
    cut = np.cumsum([n_train, n_valid])
    return [np.split(a, cut) for a in (X, Y)]


def sklearn_reference(Xs, Ys, alphas):
    """The loop a user would write: one pipeline per (alpha, target)."""
    (Xtr, Xv, Xte), (Ytr, Yv, Yte) = Xs, Ys
    T = Ytr.shape[1]
    r2v = np.array([[r2_score(Yv[:, t], make_pipeline(StandardScaler(), Ridge(alpha=a))
                              .fit(Xtr, Ytr[:, t]).predict(Xv)) for t in range(T)] for a in alphas])
    best = np.argmax(r2v, axis=0)
    out = {"index": best, "r2_valid_path": r2v, "coef": [], "intercept": []}
    for split in ("train", "valid", "test"):
        out[f"r2_{split}"], out[f"mspe_{split}"] = [], []
    for t in range(T):
        pipe = make_pipeline(StandardScaler(), Ridge(alpha=alphas[best[t]])).fit(Xtr, Ytr[:, t])
        scaler, ridge = pipe
        out["coef"].append(ridge.coef_ / scaler.scale_)
        out["intercept"].append(pipe.predict(np.zeros((1, Xtr.shape[1])))[0])
        for split, X, Y in (("train", Xtr, Ytr), ("valid", Xv, Yv), ("test", Xte, Yte)):
            out[f"r2_{split}"].append(r2_score(Y[:, t], pipe.predict(X)))
            out[f"mspe_{split}"].append(mean_squared_error(Y[:, t], pipe.predict(X)))
    return {k: np.asarray(v) for k, v in out.items()}


def assert_matches(res, ref, rtol):
    np.testing.assert_array_equal(res.alpha_index, ref["index"])
    np.testing.assert_allclose(res.path["r2_valid"], ref["r2_valid_path"], rtol=rtol, atol=rtol)
    for key in ("r2_train", "r2_valid", "r2_test", "mspe_train", "mspe_valid", "mspe_test"):
        np.testing.assert_allclose(getattr(res, key), ref[key], rtol=rtol, atol=rtol, err_msg=key)
    scale = np.abs(ref["coef"]).max(axis=1, keepdims=True)
    np.testing.assert_allclose(res.coef / scale, ref["coef"] / scale, rtol=0, atol=rtol)
    np.testing.assert_allclose(res.intercept, ref["intercept"], rtol=rtol, atol=rtol * np.abs(ref["intercept"]).max())


@pytest.mark.parametrize(("n_train", "F", "method"), [(200, 30, "gram"), (40, 100, "kernel")])
def test_matches_sklearn_pipeline(n_train, F, method):
    Xs, Ys = make_block(n_train, F)
    res = fit_rcv_block(*Xs[:1], Ys[0], Xs[1], Ys[1], Xs[2], Ys[2], ALPHAS)
    ref = sklearn_reference(Xs, Ys, ALPHAS)
    assert res.method == method
    assert len(set(res.alpha_index.tolist())) > 2, "test data should make targets pick different alphas"
    assert_matches(res, ref, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(res.direction, axis=1), 1.0)
    np.testing.assert_allclose(res.direction, res.coef / np.linalg.norm(res.coef, axis=1, keepdims=True))
    assert (res.status == "ok").all()


@pytest.mark.parametrize(("n_train", "F"), [(200, 30), (40, 100)])
def test_streaming_equals_in_memory(n_train, F):
    Xs, Ys = make_block(n_train, F)
    args = (Xs[0], Ys[0], Xs[1], Ys[1], Xs[2], Ys[2], ALPHAS)
    mem = fit_rcv_block(*args)
    stream = fit_rcv_block(*args, chunk_rows=37)
    assert stream.method == "gram-streaming"
    np.testing.assert_array_equal(stream.alpha_index, mem.alpha_index)
    for key in ("r2_train", "r2_valid", "r2_test", "mspe_test", "coef", "intercept", "direction"):
        np.testing.assert_allclose(getattr(stream, key), getattr(mem, key), rtol=1e-8, atol=1e-9, err_msg=key)
    for key in mem.path:
        np.testing.assert_allclose(stream.path[key], mem.path[key], rtol=1e-8, atol=1e-9, err_msg=key)


def test_float32_inputs():
    Xs, Ys = make_block(200, 30, dtype=np.float32)
    args = (Xs[0], Ys[0], Xs[1], Ys[1], Xs[2], Ys[2], ALPHAS)
    res32 = fit_rcv_block(*args)
    # float32 -> float64 is exact and the solver works in float64: same numbers.
    res64 = fit_rcv_block(*(a.astype(np.float64) if a is not ALPHAS else a for a in args))
    np.testing.assert_allclose(res32.coef, res64.coef, rtol=1e-10, atol=1e-12)
    # scikit-learn computes in float32 on these arrays: agreement to float32 accuracy.
    assert_matches(res32, sklearn_reference(Xs, Ys, ALPHAS), rtol=1e-3)
    stream = fit_rcv_block(*args, chunk_rows=64)
    np.testing.assert_allclose(stream.r2_test, res32.r2_test, rtol=1e-8)


def test_real_digits_pixels_with_smooth_target():
    X, _ = load_digits(return_X_y=True)  # 64 pixels, several constant (always 0) columns
    rng = np.random.default_rng(1)
    X = X[rng.permutation(X.shape[0])][:900]
    img = X.reshape(-1, 8, 8)
    rows = np.arange(8)
    # smooth concept measures: vertical centroid of the ink and ink in a Gaussian blob
    mass = img.sum(axis=(1, 2))
    centroid = (img.sum(axis=2) @ rows) / mass
    blob = (img * np.exp(-((rows[:, None] - 3.5) ** 2 + (rows[None, :] - 2) ** 2) / 4)).sum(axis=(1, 2))
    Y = np.column_stack([centroid, blob / 10 + rng.normal(size=900)])
    Xs, Ys = np.split(X, [500, 700]), np.split(Y, [500, 700])
    assert Standardizer.fit(Xs[0]).constant.sum() >= 2
    res = fit_rcv_block(Xs[0], Ys[0], Xs[1], Ys[1], Xs[2], Ys[2], ALPHAS)
    assert_matches(res, sklearn_reference(Xs, Ys, ALPHAS), rtol=1e-6)
    assert res.r2_test[1] > 0.3  # the blob is linear in pixels up to noise
    stream = fit_rcv_block(Xs[0], Ys[0], Xs[1], Ys[1], Xs[2], Ys[2], ALPHAS, chunk_rows=100)
    np.testing.assert_allclose(stream.r2_test, res.r2_test, rtol=1e-8)


def test_standardizer_matches_standard_scaler():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 5)) * [1, 1e-3, 10, 1, 1] + [0, 5, -2, 7, 0]
    X[:, 3] = 7.0  # constant
    X[:, 4] = 0.1  # constant, not exactly representable
    sk = StandardScaler().fit(X)
    std = Standardizer.fit(X)
    np.testing.assert_allclose(std.mean, sk.mean_)
    np.testing.assert_allclose(std.scale, sk.scale_)
    np.testing.assert_allclose(std.transform(X), sk.transform(X), atol=1e-12)
    assert std.constant.tolist() == [False, False, False, True, True]
    streamed = Standardizer.from_stats(stats_from_arrays(X, np.zeros(50), chunk_rows=7))
    np.testing.assert_allclose(streamed.scale, sk.scale_, rtol=1e-12)
    coef, b = std.coef_to_original(*std.coef_to_standardized(np.ones((2, 5)), np.zeros(2)))
    np.testing.assert_allclose(coef, 1.0)
    np.testing.assert_allclose(b, 0.0, atol=1e-12)


def test_gram_accumulator_and_merge_are_exact():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(103, 6)) + 100.0  # large offset: naive sum-of-squares would cancel
    Y = rng.normal(size=(103, 3))
    whole = chunk_stats(X, Y)
    acc = GramAccumulator(6, 3)
    for start in range(0, 103, 10):
        acc.update(X[start:start + 10], Y[start:start + 10])
    tree = merge_stats(chunk_stats(X[:50], Y[:50]), merge_stats(chunk_stats(X[50:51], Y[50:51]),
                                                                 chunk_stats(X[51:], Y[51:])))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    for s in (acc.stats(), tree):
        assert s.n == 103
        np.testing.assert_allclose(s.cxx, Xc.T @ Xc, rtol=1e-10)
        np.testing.assert_allclose(s.cxy, Xc.T @ Yc, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(s.cyy, (Yc**2).sum(0), rtol=1e-10)
        np.testing.assert_allclose(s.mean_x, whole.mean_x, rtol=1e-14)


def test_metrics_match_sklearn():
    rng = np.random.default_rng(5)
    y, yhat = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    np.testing.assert_allclose(r2(y, yhat), r2_score(y, yhat, multioutput="raw_values"))
    np.testing.assert_allclose(mspe(y, yhat), mean_squared_error(y, yhat, multioutput="raw_values"))
    y[:, 1] = 2.0
    assert np.isnan(r2(y, yhat)[1]) and np.isfinite(r2(y, yhat)[[0, 2]]).all()


def test_ties_go_to_the_larger_alpha():
    path = np.array([[0.5, 0.1], [0.7, 0.3], [0.7, 0.3], [0.2, 0.3]])
    np.testing.assert_array_equal(_select(path), [2, 3])


def test_nan_in_one_target_fails_only_that_target():
    Xs, Ys = make_block(200, 30, T=4)
    Ybad = [y.copy() for y in Ys]
    Ybad[1][5, 2] = np.nan
    res = fit_rcv_block(Xs[0], Ybad[0], Xs[1], Ybad[1], Xs[2], Ybad[2], ALPHAS)
    assert res.status.tolist() == ["ok", "ok", "failed", "ok"]
    assert "NaN" in res.message[2] and "valid" in res.message[2]
    assert np.isnan(res.r2_test[2]) and np.isnan(res.coef[2]).all()
    clean = fit_rcv_block(Xs[0], Ys[0][:, [0, 1, 3]], Xs[1], Ys[1][:, [0, 1, 3]], Xs[2], Ys[2][:, [0, 1, 3]],
                          ALPHAS)
    np.testing.assert_allclose(res.coef[[0, 1, 3]], clean.coef)
    stream = fit_rcv_block(Xs[0], Ybad[0], Xs[1], Ybad[1], Xs[2], Ybad[2], ALPHAS, chunk_rows=50)
    assert stream.status.tolist() == ["ok", "ok", "failed", "ok"]
    rows = res.records(["a", "b", "c", "d"])
    assert rows[2]["target"] == "c" and rows[2]["status"] == "failed"


def test_constant_target_in_train_is_reported():
    Xs, Ys = make_block(200, 30, T=2)
    Ys[0][:, 1] = 3.0
    res = fit_rcv_block(Xs[0], Ys[0], Xs[1], Ys[1], alphas=ALPHAS)
    assert res.status.tolist() == ["ok", "failed"]
    assert "constant in the train split" in res.message[1]
    assert np.isnan(res.r2_test).all()  # no test split given
    with pytest.raises(DataError, match="no target can be fitted.*constant"):
        fit_rcv_block(Xs[0], Ys[0][:, 1], Xs[1], Ys[1][:, 1], alphas=ALPHAS)


def test_bad_features_and_splits_raise():
    Xs, Ys = make_block(50, 5, T=2)
    Xnan = Xs[0].copy()
    Xnan[3, 4] = np.inf
    with pytest.raises(DataError, match="NaN or Inf.*row 3, feature 4"):
        fit_rcv_block(Xnan, Ys[0], Xs[1], Ys[1], alphas=ALPHAS)
    with pytest.raises(DataError, match="NaN or Inf"):
        fit_rcv_block(Xnan, Ys[0], Xs[1], Ys[1], alphas=ALPHAS, chunk_rows=10)
    with pytest.raises(DataError, match="valid split is empty"):
        fit_rcv_block(Xs[0], Ys[0], Xs[1][:0], Ys[1][:0], alphas=ALPHAS)
    with pytest.raises(DataError, match="different feature counts"):
        fit_rcv_block(Xs[0], Ys[0], Xs[1][:, :3], Ys[1], alphas=ALPHAS)
    with pytest.raises(ConfigError, match="penalty grid"):
        fit_rcv_block(Xs[0], Ys[0], Xs[1], Ys[1], alphas=[1.0, -1.0])


def test_all_constant_features_predict_the_train_mean():
    rng = np.random.default_rng(6)
    Ytr, Yv = rng.normal(size=(20, 2)), rng.normal(size=(10, 2))
    res = fit_rcv_block(np.ones((20, 4)), Ytr, np.ones((10, 4)), Yv, alphas=ALPHAS)
    np.testing.assert_allclose(res.coef, 0.0)
    np.testing.assert_allclose(res.intercept, Ytr.mean(0))
    assert np.isnan(res.direction).all() and (res.r2_valid <= 0).all()


def test_fit_ridge_path_from_stats_matches_arrays():
    Xs, Ys = make_block(120, 20, T=3)
    st = [stats_from_arrays(X, Y, chunk_rows=25) for X, Y in zip(Xs, Ys)]
    res = fit_ridge_path(st[0], st[1], ALPHAS, st[2])
    mem = fit_rcv_block(Xs[0], Ys[0], Xs[1], Ys[1], Xs[2], Ys[2], ALPHAS)
    np.testing.assert_allclose(res.mspe_test, mem.mspe_test, rtol=1e-9)
