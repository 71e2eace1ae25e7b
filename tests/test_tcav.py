"""TCAV from the store: CAVs vs scikit-learn, the t-test vs scipy, ConExp vs numpy, determinism."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from analyze import tcav_commands
from analyze.tcav import (
    TCAVOptions,
    conexp,
    draw_random_sets,
    fit_cavs,
    rcv_sensitivity,
    run_tcav,
    tcav_scores,
    tcav_test,
    write_table,
)
from probestore.errors import ConfigError, DataError, NotFoundError
from storage_schema.concept_sets import (
    add_concept_set,
    concept_set_info,
    concept_sets,
    create_concept_block,
    read_concept_features,
    set_extra_attrs,
    write_concept_features,
)
from storage_schema.store import open_store
from storage_schema.validate import validate_store
from tests.helpers.tcav import GRAD, F, N, U, planted_store


def test_fit_cavs_matches_sklearn_per_problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5)) * [1, 2, 3, 0.5, 1] + [0, 1, -2, 3, 0]
    masks = np.zeros((3, 60), bool)
    y = np.zeros((3, 60))
    masks[0, :40] = True
    y[0, :20] = 1
    masks[1, 10:60] = True
    y[1, 10:25] = 1
    masks[2, ::2] = True
    y[2, ::4] = 1
    C = 0.7
    fit = fit_cavs(X, masks, y, C=C)
    assert fit.converged
    mean = X.mean(0)
    scale = np.sqrt(((X - mean) ** 2).mean())
    for p in range(3):
        Xs = (X[masks[p]] - mean) / scale
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(Xs, y[p, masks[p]])
        coef_raw = ref.coef_[0] / scale
        np.testing.assert_allclose(fit.coef[p], coef_raw, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(fit.intercept[p], ref.intercept_[0] - coef_raw @ mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(fit.directions[p]), 1.0)
        acc = (ref.predict(Xs) == y[p, masks[p]]).mean()
        assert fit.train_accuracy[p] == pytest.approx(acc)
    assert np.isnan(fit.heldout_accuracy).all()  # nothing held out: no held-out accuracy
    with pytest.raises(DataError, match="lacks"):
        fit_cavs(X, masks, np.zeros((3, 60)))


def test_cav_points_to_the_concept():
    rng = np.random.default_rng(1)
    u = np.array([1.0, -2.0, 0.5])
    X = np.concatenate([rng.standard_normal((30, 3)) + 3 * u, rng.standard_normal((30, 3))])
    fit = fit_cavs(X, np.ones((1, 60), bool), np.r_[np.ones(30), np.zeros(30)][None])
    assert fit.directions[0] @ u / np.linalg.norm(u) > 0.9


def test_tcav_test_against_scipy_and_hand_cohen_d():
    a = np.array([0.9, 0.8, 0.85, 0.95, 0.7])
    b = np.array([0.5, 0.4, 0.6, 0.55, 0.45, 0.5])
    got = tcav_test(a, b)
    t, p = stats.ttest_ind(a, b)
    assert got["t"] == pytest.approx(t) and got["p_value"] == pytest.approx(p)
    pooled = np.sqrt(((4 * a.var(ddof=1)) + 5 * b.var(ddof=1)) / 9)
    assert got["cohen_d"] == pytest.approx((a.mean() - b.mean()) / pooled)
    assert got["mean"] == pytest.approx(0.84) and got["random_std"] == pytest.approx(b.std(ddof=1))
    same = tcav_test(np.ones(4), np.ones(4))
    assert same["p_value"] == 1.0 and same["cohen_d"] == 0.0
    assert tcav_test(np.ones(4), np.zeros(4))["p_value"] == 0.0


def test_scores_conexp_rcv_by_hand():
    g = np.array([[1.0, 0.0], [-1.0, 0.5], [0.2, -3.0]])
    d = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(tcav_scores(g, d), [2 / 3, 1 / 3])
    assert np.isnan(tcav_scores(np.zeros((0, 2)), d)).all()
    scores = np.arange(12.0).reshape(4, 3) ** 1.5
    c = np.array([True, False, True, False])
    np.testing.assert_allclose(conexp(scores, c), scores[[0, 2]].mean(0) - scores[[1, 3]].mean(0))
    assert np.isnan(conexp(scores, np.ones(4, bool))).all()
    mean, frac = rcv_sensitivity(g, np.array([0.6, 0.8]))
    assert mean == pytest.approx((g @ [0.6, 0.8]).mean()) and frac == pytest.approx(1 / 3)


def test_random_sets_are_seeded_and_prefix_stable():
    pool = np.arange(100, 200)
    a = draw_random_sets(pool, 5, 10, seed=3)
    b = draw_random_sets(pool, 8, 10, seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert all(len(np.unique(s)) == 10 and np.isin(s, pool).all() for s in a)
    assert not np.array_equal(draw_random_sets(pool, 1, 10, seed=4)[0], a[0])
    with pytest.raises(ConfigError, match="random-size"):
        draw_random_sets(pool, 1, 101, seed=0)


# --------------------------------------------------------------------------- store end to end

def test_tcav_end_to_end_planted_concept_and_reruns_identical(tmp_path):
    store, data = planted_store(tmp_path / "s.zarr")
    store.close()
    opts = TCAVOptions(repeats=8, random_size=20, seed=1, conexp_score="prob")
    rows = run_tcav(tmp_path / "s.zarr", opts)
    df = pd.DataFrame(rows)
    t = df[df.method == "tcav"].set_index("class_name")
    assert set(t.concept) == {"striped"}
    assert t.loc["zero", "score_mean"] > 0.95 and t.loc["zero", "significant"]
    assert t.loc["one", "score_mean"] < 0.05 and t.loc["one", "significant"]
    assert t.loc["zero", "effect_size"] > 0 > t.loc["one", "effect_size"]
    for k, name in enumerate(["zero", "one", "two"]):
        assert t.loc[name, "n_samples"] == ((data["splits"] == 2) & (data["labels"] == k)).sum()
    assert (t.repeats == 8).all()
    # ConExp equals a direct numpy computation on the stored logits
    c = df[df.method == "conexp"].set_index("class_index")
    test = data["splits"] == 2
    z = data["logits"].astype(np.float32).astype(np.float64)[test]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    s = data["striped"][test]
    for k in range(3):
        assert c.loc[k, "score_mean"] == pytest.approx(p[s, k].mean() - p[~s, k].mean())
    # RCV sensitivity: the ridge direction is close to U, so class 0 has positive derivatives
    r = df[df.method == "rcv"].set_index("class_name")
    assert r.loc["zero", "sign_fraction"] > 0.9 and r.loc["one", "sign_fraction"] < 0.1
    # Reruns give bit-identical tables; another seed gives other random sets
    again = pd.DataFrame(run_tcav(tmp_path / "s.zarr", opts))
    pd.testing.assert_frame_equal(df, again)
    other = pd.DataFrame(run_tcav(tmp_path / "s.zarr", TCAVOptions(repeats=8, random_size=20, seed=2)))
    assert not np.allclose(other[other.method == "tcav"].random_mean.to_numpy(),
                           df[df.method == "tcav"].random_mean.to_numpy())
    # Bonferroni divides alpha by the number of tests
    bon = pd.DataFrame(run_tcav(tmp_path / "s.zarr", TCAVOptions(repeats=8, random_size=20, seed=1,
                                                                 bonferroni=True, alpha=0.06)))
    assert np.allclose(bon[bon.method == "tcav"].alpha, 0.06 / 3)


def test_concept_sets_in_the_store(tmp_path):
    store, data = planted_store(tmp_path / "s.h5")
    rows = np.flatnonzero(data["striped"])[:30]
    ids = store.sample_ids()[rows]
    add_concept_set(store, "banded", kind="dataset", sample_ids=ids, rows=rows, source="examples/banded")
    add_concept_set(store, "banded", kind="dataset", sample_ids=ids, rows=rows)  # idempotent
    with pytest.raises(ConfigError, match="other examples"):
        add_concept_set(store, "banded", kind="dataset", sample_ids=ids[:5], rows=rows[:5])
    with pytest.raises(DataError, match="do not point"):
        add_concept_set(store, "bad", kind="dataset", sample_ids=ids[::-1], rows=rows)
    ext = np.random.default_rng(3).standard_normal((12, F)) + 4 * U
    add_concept_set(store, "ext_stripes", kind="external", sample_ids=[f"img{i}.jpg" for i in range(12)])
    assert create_concept_block(store, "r", "e1", "ext_stripes", "fc", n_features=F) is False
    with pytest.raises(NotFoundError, match="no complete features"):
        read_concept_features(store, "r", "e1", "ext_stripes", "fc")
    write_concept_features(store, "r", "e1", "ext_stripes", "fc", ext)
    assert create_concept_block(store, "r", "e1", "ext_stripes", "fc", n_features=F) is True
    with pytest.raises(ConfigError, match="differs"):
        create_concept_block(store, "r", "e1", "ext_stripes", "fc", n_features=F + 1)
    np.testing.assert_allclose(read_concept_features(store, "r", "e1", "ext_stripes", "fc"), ext.astype(np.float32))
    np.testing.assert_allclose(read_concept_features(store, "r", "e1", "banded", "fc"),
                               data["X"][rows].astype(np.float32))
    for i in range(4):  # stored random counterexample sets
        rr = np.sort(np.random.default_rng(i).choice(np.flatnonzero(~data["striped"]), 20, replace=False))
        add_concept_set(store, f"random_{i}", kind="dataset", sample_ids=store.sample_ids()[rr], rows=rr,
                        role="random", source="random:20", seed=i)
    assert concept_sets(store, role="random") == [f"random_{i}" for i in range(4)]
    assert concept_set_info(store, "random_2").seed == 2
    with pytest.raises(NotFoundError, match="banded"):
        concept_set_info(store, "bandd")
    store.close()
    assert validate_store(tmp_path / "s.h5") == []
    res = pd.DataFrame(run_tcav(tmp_path / "s.h5", TCAVOptions(concepts=("banded", "ext_stripes"), repeats=3,
                                                               rcv=False, conexp=False)))
    assert set(res.concept) == {"banded", "ext_stripes"} and (res.random_source == "stored sets").all()
    zero = res[res.class_name == "zero"].set_index("concept")
    assert zero.loc["banded", "score_mean"] > 0.9 and zero.loc["ext_stripes", "score_mean"] > 0.9
    assert zero.loc["ext_stripes", "n_concept"] == 12


def test_errors_name_the_fix(tmp_path):
    store, _ = planted_store(tmp_path / "s.zarr")
    store.add_target("never", np.zeros(N, bool), "binary")
    store.close()
    rows = run_tcav(tmp_path / "s.zarr", TCAVOptions(repeats=2, rcv=False, conexp=False))
    assert {r["concept"] for r in rows} == {"striped"}  # an empty binary concept is left out
    with pytest.raises(ConfigError, match="0 positive"):
        run_tcav(tmp_path / "s.zarr", TCAVOptions(repeats=2, concepts=("never",)))
    with pytest.raises(ConfigError, match="striped"):
        run_tcav(tmp_path / "s.zarr", TCAVOptions(concepts=("stripd",), repeats=2))
    with pytest.raises(ConfigError, match="repeats"):
        TCAVOptions(repeats=1)
    # without gradients TCAV is refused with the extraction option to set
    s2, _ = planted_store(tmp_path / "t.zarr")
    set_extra_attrs(s2, "r", "e1", "fc", GRAD, {"complete": False})
    s2.close()
    with pytest.raises(ConfigError, match="gradients = true"):
        run_tcav(tmp_path / "t.zarr", TCAVOptions(repeats=2))
    only_conexp = run_tcav(tmp_path / "t.zarr", TCAVOptions(repeats=2, concepts=(), rcv=False))
    assert {r["method"] for r in only_conexp} == {"conexp"}


def test_cli_writes_the_table(tmp_path, capsys):
    store, _ = planted_store(tmp_path / "s.zarr")
    store.close()
    parser = argparse.ArgumentParser()
    tcav_commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "t.parquet"
    args = parser.parse_args(["tcav", str(tmp_path / "s.zarr"), "-o", str(out), "--repeats", "4",
                              "--random-size", "15", "--classes", "zero,one", "--no-rcv", "--workers", "0"])
    assert args.func(args) == 0
    df = pd.read_parquet(out)
    assert set(df.method) == {"tcav", "conexp"} and set(df.class_name) == {"zero", "one"}
    assert "significant" in capsys.readouterr().out
    opts = TCAVOptions(repeats=4, random_size=15, classes=("zero", "one"), rcv=False)
    direct = pd.read_parquet(write_table(run_tcav(tmp_path / "s.zarr", opts), tmp_path / "d.parquet", opts))
    pd.testing.assert_frame_equal(df, direct)
    assert open_store(tmp_path / "s.zarr").n_samples == N


# --------------------------------------------------------------------------- on Dask


def _multi_block_store(path):
    """The planted store plus a second checkpoint with three gradient layers: four TCAV tasks."""
    store, data = planted_store(path)
    rng = np.random.default_rng(5)
    store.add_checkpoint("r", "e2", epoch=2)
    store.create_block("r", "e2", "outputs", n_features=3)
    store.write_rows("r", "e2", "outputs", 0, data["logits"][:, ::-1].astype(np.float32).copy())
    store.mark_block_complete("r", "e2", "outputs")
    for i, layer in enumerate(("fc", "fc2", "fc3")):
        Q = np.linalg.qr(rng.standard_normal((F, F)))[0] if i else np.eye(F)  # rotated copies of the planted layer
        store.create_block("r", "e2", layer, n_features=F)
        store.write_rows("r", "e2", layer, 0, (data["X"] @ Q + 0.1 * i).astype(np.float32))
        store.mark_block_complete("r", "e2", layer)
        store.write_extra("r", "e2", layer, GRAD, (data["grads"] @ Q).astype(np.float32))
        set_extra_attrs(store, "r", "e2", layer, GRAD, {"kind": "gradient", "of": "own_class_logit",
                                                        "reduction": {"kind": "none"}, "lift_scale": 1.0,
                                                        "complete": True, "rows_done": N})
    store.mark_checkpoint_complete("r", "e2")
    store.close()
    return path


def test_table_identical_in_process_and_on_one_or_two_dask_workers(tmp_path):
    from distributed import Client, LocalCluster

    from analyze.config import AnalysisConfig

    path = _multi_block_store(tmp_path / "s.zarr")
    opts = TCAVOptions(repeats=8, random_size=20, seed=3)  # Bonferroni over the 12 tests: the default
    seen: list[str] = []
    ref = pd.DataFrame(run_tcav(path, opts, config=AnalysisConfig(scheduler="none"), log=seen.append))
    # four blocks in table order, each with TCAV and RCV rows, then each checkpoint's ConExp
    t = ref[ref.method == "tcav"]
    assert list(dict.fromkeys(zip(t.checkpoint, t.layer))) == [("e1", "fc"), ("e2", "fc"), ("e2", "fc2"),
                                                               ("e2", "fc3")]
    assert (ref.method == "rcv").sum() == 4 * 3 and (ref.method == "conexp").sum() == 2 * 3
    assert np.isfinite(t.score_mean).all() and (t.alpha == 0.05 / len(t)).all()
    assert any("in-process" in m for m in seen)
    # a layer rotated by Q keeps the planted concept: class zero stays significant on every block
    assert t[t.class_name == "zero"].significant.all()

    # one local worker through the CLI (the embedded cluster of `probestore tcav --workers 1`)
    parser = argparse.ArgumentParser()
    tcav_commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "one.parquet"
    args = parser.parse_args(["tcav", str(path), "-o", str(out), "--repeats", "8", "--random-size", "20",
                              "--seed", "3", "--workers", "1"])
    assert args.func(args) == 0
    direct = pd.read_parquet(write_table(ref.to_dict("records"), tmp_path / "ref.parquet", opts))
    pd.testing.assert_frame_equal(pd.read_parquet(out), direct, check_exact=True)

    # two workers on a caller-owned cluster (no BLAS env set: the tasks cap their own threads)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        two = pd.DataFrame(run_tcav(path, opts, client=client))
        assert len(client.scheduler_info()["workers"]) == 2
    pd.testing.assert_frame_equal(two, ref, check_exact=True)


def test_rcv_that_cannot_be_fitted_is_a_failed_row_not_dropped(tmp_path, capsys):
    """A constant concept target gives one ``failed`` RCV row saying why; the others stay ``ok``."""
    store, _ = planted_store(tmp_path / "s.zarr")
    store.add_target("flat", np.ones(N), "continuous")
    store.close()
    rows = run_tcav(tmp_path / "s.zarr", TCAVOptions(repeats=2, random_size=15, conexp=False))
    rcv = pd.DataFrame([r for r in rows if r["method"] == "rcv"])
    flat = rcv[rcv.concept == "flat"]
    assert len(flat) == 1 and flat.iloc[0]["status"] == "failed"
    assert "RCV not fitted" in flat.iloc[0]["message"] and "constant" in flat.iloc[0]["message"]
    assert (rcv[rcv.concept == "stripiness"].get("status", pd.Series(["ok"])).fillna("ok") == "ok").all()
    out = write_table(rows, tmp_path / "t.parquet", TCAVOptions(repeats=2))
    table = pd.read_parquet(out)
    assert set(table.status) == {"ok", "failed"} and (table[table.status == "ok"].message == "").all()
