"""Linear CKA: against the HSIC formula, its invariances, streaming, and `probestore similarity`."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ortho_group

from analyze.config import AnalysisConfig
from analyze.similarity import (
    CKA_COLUMNS,
    block_moments,
    cross_term,
    linear_cka,
    run_similarity,
    streaming_cka,
    use_sample_space,
)
from analyze.tables import CKA, read_table
from probestore.cli import main
from probestore.errors import ConfigError, DataError, NotFoundError
from storage_schema.store import open_store
from tests.helpers.stores import make_store


def hsic_cka(X, Y):
    """Kornblith et al.'s definition: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), H the centering matrix."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return np.trace(A @ H @ B @ H) / (n - 1) ** 2

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def data(n=40, f=7, g=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)) + 3.0
    Y = X[:, :min(f, g)] @ rng.normal(size=(min(f, g), g)) + 0.7 * rng.normal(size=(n, g))
    return X, Y


@pytest.mark.parametrize("shape", [(40, 7, 5), (12, 30, 25), (20, 3, 60)])
def test_matches_the_hsic_definition_in_both_spaces(shape):
    n, f, g = shape
    X, Y = data(n, f, g)
    assert linear_cka(X, Y) == pytest.approx(hsic_cka(X, Y), rel=1e-10)
    assert linear_cka(Y, X) == pytest.approx(linear_cka(X, Y), rel=1e-12)
    assert 0.0 < linear_cka(X, Y) < 1.0


def test_space_choice_follows_the_cost():
    assert not use_sample_space(1000, 10, 20)  # many samples: F x G Grams
    assert use_sample_space(20, 1000, 500)  # many features: n x n Grams


def test_invariances():
    X, Y = data(50, 6, 6, seed=1)
    base = linear_cka(X, Y)
    Q = ortho_group.rvs(6, random_state=0)
    assert linear_cka(X @ Q, Y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(X, 3.7 * Y + 2.0) == pytest.approx(base, rel=1e-10)  # isotropic scale, shift
    assert linear_cka(X, X) == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(X, 5 * X @ Q) == pytest.approx(1.0, rel=1e-12)
    A = np.diag([1.0, 10.0, 0.1, 1.0, 3.0, 1.0])  # invertible but not orthogonal x scalar
    assert abs(linear_cka(X @ A, Y) - base) > 1e-3
    assert np.isnan(linear_cka(np.ones((10, 3)), X[:10]))  # constant side: undefined


def test_bad_inputs():
    X, Y = data()
    with pytest.raises(DataError, match="different numbers of samples"):
        linear_cka(X, Y[:-1])
    Z = X.copy()
    Z[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        linear_cka(Z, Y)
    with pytest.raises(DataError, match="2-D"):
        linear_cka(X[:, 0], Y)


@pytest.mark.parametrize("shape,step", [((53, 6, 9), 7), ((53, 6, 9), 53), ((15, 40, 4), 4), ((15, 40, 33), 6)])
def test_streaming_equals_in_memory(shape, step):
    n, f, g = shape
    X, Y = data(n, f, g, seed=3)
    X = (X + 1e4).astype(np.float32).astype(np.float64)  # large offset: the shifted sums must keep precision

    def reader(A):
        return lambda a, b: A[a:b]

    got = streaming_cka(reader(X), f, reader(Y), g, n, step)
    assert got == pytest.approx(linear_cka(X, Y), rel=1e-8)
    mx = block_moments(reader(X), n, f, step)
    assert mx.norm == pytest.approx(np.linalg.norm((X - X.mean(0)).T @ (X - X.mean(0))), rel=1e-6)
    my = block_moments(reader(Y), n, g, step)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    assert cross_term(reader(X), mx, reader(Y), my, step) == pytest.approx(np.linalg.norm(Yc.T @ Xc) ** 2, rel=1e-6)


# ---------------------------------------------------------------------------- from a store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("cka") / "s.zarr", n=120, epochs=(0, 3))


def _direct(store_path, a, b, rows=None):
    with open_store(store_path) as s:
        X = s.read_layer(*a)
        Y = s.read_layer(*b)
    if rows is not None:
        X, Y = X[rows], Y[rows]
    return linear_cka(X, Y)


def test_cli_table_matches_direct_computation(store, tmp_path):
    out = tmp_path / "cka.parquet"
    assert main(["similarity", str(store), "-o", str(out), "--workers", "0"]) == 0
    df = read_table(out, CKA)
    assert list(df.columns) == list(CKA_COLUMNS)
    layers, ckpts, runs = ("l1", "l2", "l3"), ("epoch_0000", "epoch_0003"), ("clean", "noisy")
    # 4 (run, ckpt) x 3 layer pairs + 6 (run, layer) x 1 ckpt pair + 6 (ckpt, layer) x 1 run pair
    assert len(df) == 4 * 3 + 6 + 6
    assert (df["n_samples"] == 120).all()
    got = {(r.run_a, r.checkpoint_a, r.layer_a, r.run_b, r.checkpoint_b, r.layer_b): r.cka for r in df.itertuples()}
    for run, ck in itertools.product(runs, ckpts):
        for la, lb in itertools.combinations(layers, 2):
            key = (run, ck, la, run, ck, lb) if (run, ck, la, run, ck, lb) in got else (run, ck, lb, run, ck, la)
            assert got[key] == pytest.approx(_direct(store, key[:3], key[3:]), rel=1e-6)
    row = df[(df.run_a == "clean") & (df.run_b == "noisy") & (df.layer_a == "l2") & (df.checkpoint_a == "epoch_0003")]
    assert len(row) == 1 and row["epoch_a"].iloc[0] == 3
    assert row["cka"].iloc[0] == pytest.approx(_direct(store, ("clean", "epoch_0003", "l2"),
                                                        ("noisy", "epoch_0003", "l2")), rel=1e-6)


def test_filters_pairs_test_split_and_a_dask_cluster(store, tmp_path):
    with open_store(store) as s:
        test = s.split_indices("test")
    sync = AnalysisConfig(scheduler="none", max_block_bytes=4000)  # forces row chunks of a few rows
    df = run_similarity(store, tmp_path / "a.csv", layers=["l1", "l3"], pairs="across-checkpoints",
                        samples="test", config=sync, log=lambda m: None)
    assert len(df) == 2 * 2 and set(df["layer_a"]) == {"l1", "l3"}
    assert (df["layer_a"] == df["layer_b"]).all() and (df["run_a"] == df["run_b"]).all()
    assert (df["n_samples"] == test.size).all()
    for r in df.itertuples():
        want = _direct(store, (r.run_a, r.checkpoint_a, r.layer_a), (r.run_b, r.checkpoint_b, r.layer_b), test)
        assert r.cka == pytest.approx(want, rel=1e-6)
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.csv", CKA), df)
    dask = run_similarity(store, None, layers=["l1", "l3"], pairs="across-checkpoints", samples="test",
                          config=AnalysisConfig(n_workers=2, threads_per_worker=1, max_block_bytes=4000),
                          log=lambda m: None)
    pd.testing.assert_frame_equal(dask, df)


def test_more_features_than_samples(tmp_path):
    path = make_store(tmp_path / "wide.zarr", n=24, layers=(("wide", 60), ("narrow", 3)), epochs=(1,),
                      runs=(("clean", 0.0),))
    df = run_similarity(path, None, config=AnalysisConfig(scheduler="none", max_block_bytes=2000),
                        log=lambda m: None)
    assert len(df) == 1
    assert df["cka"].iloc[0] == pytest.approx(_direct(path, ("clean", "epoch_0001", "wide"),
                                                      ("clean", "epoch_0001", "narrow")), rel=1e-6)


def test_user_errors(store, tmp_path, capsys):
    with pytest.raises(NotFoundError, match="no layer matches 'l9'"):
        run_similarity(store, None, layers=["l9"], config=AnalysisConfig(scheduler="none"))
    with pytest.raises(ConfigError, match="unknown pair kind"):
        run_similarity(store, None, pairs="across-run", config=AnalysisConfig(scheduler="none"))
    with pytest.raises(NotFoundError, match="no pair"):
        run_similarity(store, None, layers=["l1"], pairs="within-checkpoint", config=AnalysisConfig(scheduler="none"))
    assert main(["similarity", str(store), "-o", str(tmp_path / "x.parquet"), "--workers", "0",
                 "--runs", "clen"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" in err.lower() and "clean" in err
