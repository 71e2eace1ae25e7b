"""Ordinary least-squares RCVs (Graziani et al.'s ``rcvtool``) against scikit-learn and numpy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error, r2_score

from analyze.solvers.ridge import fit_ols_block, fit_ols_stats, fit_rcv_block
from analyze.solvers.standardize import stats_from_arrays
from probestore.errors import DataError

SPLITS = ("train", "valid", "test")


def make_block(n_train, F, T=5, n_valid=40, n_test=30, seed=0):
    """Correlated, unevenly scaled, offset features; noisy linear targets."""
    rng = np.random.default_rng(seed)
    n = n_train + n_valid + n_test
    mix = rng.normal(size=(F, F)) / np.sqrt(F)
    X = (rng.normal(size=(n, F)) @ mix) * rng.uniform(0.2, 5.0, F) + rng.normal(size=F) * 3
    Y = X @ rng.normal(size=(F, T)) / np.sqrt(F) + rng.normal(size=(n, T)) * 0.5 + 7.0
    cut = np.cumsum([n_train, n_valid])
    return np.split(X, cut), np.split(Y, cut)


def _assert_matches(res, Xs, Ys, coef_ref, icpt_ref, rtol=1e-7):
    T = Ys[0].shape[1]
    np.testing.assert_allclose(res.coef, coef_ref, rtol=rtol, atol=1e-9 * np.abs(coef_ref).max())
    np.testing.assert_allclose(res.intercept, icpt_ref, rtol=rtol, atol=1e-8)
    for split, X, Y in zip(SPLITS, Xs, Ys):
        pred = X @ coef_ref.T + icpt_ref
        r2 = [r2_score(Y[:, t], pred[:, t]) for t in range(T)]
        mse = [mean_squared_error(Y[:, t], pred[:, t]) for t in range(T)]
        np.testing.assert_allclose(getattr(res, f"r2_{split}"), r2, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(getattr(res, f"mspe_{split}"), mse, rtol=1e-6, atol=1e-20)


def test_ols_equals_sklearn_linear_regression_when_F_below_n():
    Xs, Ys = make_block(200, 12)
    lr = LinearRegression().fit(Xs[0], Ys[0])
    res = fit_ols_block(Xs[0], Ys[0], Xs[1], Ys[1], Xs[2], Ys[2])
    _assert_matches(res, Xs, Ys, lr.coef_, lr.intercept_)
    assert res.method == "ols-svd" and (res.alpha == 0).all() and (res.status == "ok").all()
    assert res.message == [""] * 5
    norms = np.linalg.norm(res.direction, axis=1)
    np.testing.assert_allclose(norms, 1.0)


def test_ols_is_numpy_minimum_norm_lstsq_when_F_above_n():
    Xs, Ys = make_block(30, 80)
    Xtr, Ytr = Xs[0], Ys[0]
    mean, ybar = Xtr.mean(0), Ytr.mean(0)
    coef_ref = np.linalg.lstsq(Xtr - mean, Ytr - ybar, rcond=None)[0].T
    res = fit_ols_block(Xtr, Ytr, Xs[1], Ys[1], Xs[2], Ys[2])
    _assert_matches(res, Xs, Ys, coef_ref, ybar - coef_ref @ mean, rtol=1e-6)
    # It interpolates the train split, and each row says why.
    np.testing.assert_allclose(res.r2_train, 1.0, atol=1e-9)
    assert all("minimum-norm" in m and "rank 29 < 80" in m for m in res.message)
    # sklearn's LinearRegression agrees here too (scipy lstsq on centered data).
    lr = LinearRegression().fit(Xtr, Ytr)
    np.testing.assert_allclose(res.coef, lr.coef_, rtol=1e-5, atol=1e-8)


def test_ols_differs_from_every_ridge_and_can_be_far_worse_out_of_sample():
    """Table 1's point: near-collinear features make OLS's held-out MSPE explode, ridge's not."""
    rng = np.random.default_rng(3)
    n, F = 140, 66
    base = rng.normal(size=(n, 3))
    X = base @ rng.normal(size=(3, F)) + 1e-3 * rng.normal(size=(n, F))   # rank ~3 + tiny noise
    y = base[:, 0] + 0.3 * rng.normal(size=n)
    tr, va, te = slice(0, 70), slice(70, 105), slice(105, None)
    ols = fit_ols_block(X[tr], y[tr], X[va], y[va], X[te], y[te])
    ridge = fit_rcv_block(X[tr], y[tr], X[va], y[va], X[te], y[te])
    assert ols.mspe_test[0] > 10 * ridge.mspe_test[0]
    assert ols.r2_train[0] > ridge.r2_train[0]


def test_streamed_ols_equals_in_memory_and_sklearn():
    Xs, Ys = make_block(300, 10, T=3)
    Xs[0][:, 4] = 2.5                                  # a constant feature: coefficient 0
    for X in Xs[1:]:
        X[:, 4] = 2.5
    st = [stats_from_arrays(X, Y, chunk_rows=37, where=s) for s, X, Y in zip(SPLITS, Xs, Ys)]
    res = fit_ols_stats(*st)
    mem = fit_ols_block(*[a for pair in zip(Xs, Ys) for a in pair])
    lr = LinearRegression().fit(Xs[0], Ys[0])
    _assert_matches(res, Xs, Ys, lr.coef_, lr.intercept_, rtol=1e-6)
    assert res.coef[:, 4].tolist() == [0.0] * 3 and mem.coef[:, 4].tolist() == [0.0] * 3
    for k in ("r2_test", "mspe_valid", "coef"):
        np.testing.assert_allclose(getattr(res, k), getattr(mem, k), rtol=1e-6, atol=1e-10)
    assert res.method == "ols-gram-streaming"
    assert all("1 constant feature" in m for m in res.message)


def test_streamed_ols_refuses_when_the_gram_cannot_give_the_exact_solution():
    Xs, Ys = make_block(30, 80, T=2)
    st = [stats_from_arrays(X, Y, where=s) for s, X, Y in zip(SPLITS, Xs, Ys)]
    with pytest.raises(DataError) as exc:
        fit_ols_stats(*st)
    text = str(exc.value)
    assert "cannot be solved exactly from streamed statistics" in text
    assert "--max-block-bytes" in text and "30 train rows" in text


def test_ols_target_failures_are_per_target():
    Xs, Ys = make_block(100, 8, T=3)
    Ys[0][:, 1] = 4.0                                  # constant in train
    Ys[2][3, 2] = np.nan                               # NaN in test
    res = fit_ols_block(Xs[0], Ys[0], Xs[1], Ys[1], Xs[2], Ys[2])
    assert res.status.tolist() == ["ok", "failed", "failed"]
    assert "constant in the train split" in res.message[1] and "NaN" in res.message[2]
    lr = LinearRegression().fit(Xs[0], Ys[0][:, 0])
    np.testing.assert_allclose(res.coef[0], lr.coef_, rtol=1e-7)
    assert np.isnan(res.coef[1]).all() and np.isnan(res.r2_test[2])
    with pytest.raises(DataError, match="non-finite|NaN or Inf"):
        bad = Xs[0].copy()
        bad[2, 3] = np.inf
        fit_ols_block(bad, Ys[0], Xs[1], Ys[1])


# ---------------------------------------------------------------------------- in the analysis engine


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_rcv_ols_rows_match_sklearn_in_memory_and_streamed(tmp_path, suffix):
    """``--probes rcv,rcv_ols`` on a real store: OLS rows beside ridge rows, streamed = in memory."""
    from analyze.config import AnalysisConfig
    from analyze.engine import run_analysis
    from analyze.results import read_table
    from storage_schema.store import open_store
    from tests.helpers.stores import make_store

    store = make_store(tmp_path / f"s{suffix}", runs=(("clean", 0.0),), epochs=(1,), layers=(("l1", 6), ("wide", 200)))

    def analyse(name, **kw):
        cfg = AnalysisConfig(scheduler="none", probes=("rcv", "rcv_ols"), alphas=(0.1, 10.0),
                             results=str(tmp_path / name), **kw)
        return read_table(run_analysis(store, cfg, progress=False, log=lambda m: None).results)

    mem = analyse("mem.parquet")
    assert set(mem.probe) == {"rcv", "rcv_ols"}
    ols = mem[mem.probe == "rcv_ols"].set_index(["layer", "target"])
    assert (ols.hyperparameter == "none").all() and ols.hyperparameter_value.isna().all()
    with open_store(store) as s:
        X = s.read_layer("clean", "epoch_0001", "l1").astype(np.float64)
        codes = s.splits()
        y = s.read_target("area")
    idx = [np.flatnonzero(codes == c) for c in range(3)]
    lr = LinearRegression().fit(X[idx[0]], y[idx[0]])
    row = ols.loc[("l1", "area")]
    for split, rows in zip(SPLITS, idx):
        pred = lr.predict(X[rows])
        np.testing.assert_allclose(row[f"{split}_r2"], r2_score(y[rows], pred), rtol=1e-5)
        np.testing.assert_allclose(row[f"{split}_mspe"], mean_squared_error(y[rows], pred), rtol=1e-5)
    assert row.status == "ok" and row.message == ""
    # 200 features on 144 train rows: the minimum-norm fit interpolates, and says so.
    wide = ols.loc[("wide", "area")]
    assert wide.status == "ok" and "minimum-norm" in wide.message and wide.train_r2 > 1 - 1e-6

    streamed = analyse("streamed.parquet", max_block_bytes=2000).set_index("probe_id")
    ref = mem.set_index("probe_id").loc[streamed.index]
    narrow = [p for p in streamed.index if "/l1/" in p]
    for col in ("test_r2", "valid_mspe", "train_r2"):
        np.testing.assert_allclose(streamed.loc[narrow, col], ref.loc[narrow, col], rtol=1e-6)
    wide_ols = streamed[(streamed.layer == "wide") & (streamed.probe == "rcv_ols")]
    assert (wide_ols.status == "failed").all()
    assert wide_ols.message.str.contains("cannot be solved exactly from streamed statistics").all()
    wide_ridge = streamed[(streamed.layer == "wide") & (streamed.probe == "rcv")]
    assert (wide_ridge.status == "ok").all()   # the ridge group is unaffected


# ---------------------------------------------------------------------------- report Table 1


def test_report_table1_shows_ols_beside_ridge():
    """Rows per (network, fit); bold compares networks within one fit; the figure draws."""
    import pandas as pd

    from analyze.report import figures as F
    from analyze.report import make_view
    from tests.helpers.report_table import make_table

    df = make_table()
    ols = df[df.probe == "rcv"].copy()
    ols["probe"] = "rcv_ols"
    ols["hyperparameter"] = "none"
    ols["test_mspe"] = ols["test_mspe"] * 1e5          # OLS on a random net: Table 1's 1e5 scale
    ols["probe_id"] = ols["probe_id"].str.replace("/rcv/", "/rcv_ols/")
    view = make_view(pd.concat([df, ols], ignore_index=True))
    data = F.mspe_table_data(view)
    assert list(data.index) == [f"{r} · {f}" for r in ("random", "memorizing", "generalizing")
                                for f in ("ridge", "OLS")]
    assert data.loc["random · OLS", "area"] == pytest.approx(1e5 * data.loc["random · ridge", "area"])
    assert data.attrs["fit"]["random · OLS"] == "OLS" and data.attrs["sources"]["random · OLS"] == "gen/epoch000"
    cells = dict(F.mspe_cells(data))
    # The best of each fit is bold: generalizing in both, although every OLS value is larger.
    assert cells["generalizing · ridge"][0][1] and cells["generalizing · OLS"][0][1]
    assert not cells["memorizing · OLS"][0][1] and not cells["memorizing · ridge"][0][1]
    fig = F.plot_mspe_table(data, view)
    assert len(fig.axes[0].patches) == len(data) * len(data.columns)
    # Without OLS rows the table keeps its plain role rows.
    assert list(F.mspe_table_data(make_view(df)).index) == ["random", "memorizing", "generalizing"]
