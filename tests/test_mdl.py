"""Online-code MDL (Voita & Titov 2020): the codelength against a hand computation with scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from analyze.mdl import MIX, block_ends, online_codelength
from probestore.errors import ConfigError, DataError

TIGHT = {"dtype": np.float64, "tol": 1e-10, "max_iter": 5000}


def problem(n, K, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    X = 1.5 * rng.normal(size=(K, 3))[y] + noise * rng.normal(size=(n, 3))
    return X, y


def by_hand(X, y, K, C, seed, ends):
    """Uniform code for the first block, then sklearn probes on each prefix, mixed with the uniform."""
    order = np.random.default_rng(seed).permutation(len(y))
    X, y = X[order], y[order]
    total = ends[0] * np.log2(K)
    for t, t_next in zip(ends[:-1], ends[1:]):
        present = np.unique(y[:t])
        if present.size == 1:
            p = (y[t:t_next] == present[0]).astype(float)
        else:
            scaler = StandardScaler().fit(X[:t])
            # sklearn fits the present classes only; 2 of them -> binomial, where C_binomial = 2 C
            c = 2 * C if present.size == 2 else C
            clf = LogisticRegression(C=c, tol=1e-12, max_iter=10000).fit(scaler.transform(X[:t]), y[:t])
            P = np.zeros((t_next - t, K))
            P[:, clf.classes_] = clf.predict_proba(scaler.transform(X[t:t_next]))
            p = P[np.arange(t_next - t), y[t:t_next]]
        total += -np.log2((1 - MIX) * p + MIX / K).sum()
    return total


@pytest.mark.parametrize("K,C", [(2, 1.0), (2, 0.05), (3, 0.5)])
def test_codelength_matches_hand_computation(K, C):
    X, y = problem(48, K, seed=K)
    fractions = (0.125, 0.25, 0.5, 1.0)
    res = online_codelength(X, {"y": y}, n_classes=K, C=C, seed=7, fractions=fractions, min_first=4, **TIGHT)["y"]
    np.testing.assert_array_equal(res.block_ends, [6, 12, 24, 48])
    want = by_hand(X, y, K, C, 7, res.block_ends)
    assert res.codelength_bits == pytest.approx(want, rel=1e-6)
    assert res.block_bits.sum() == pytest.approx(res.codelength_bits)
    assert res.block_bits[0] == pytest.approx(6 * np.log2(K))
    assert res.uniform_bits == pytest.approx(48 * np.log2(K))
    assert res.compression == pytest.approx(res.uniform_bits / want, rel=1e-6)


def test_single_class_and_absent_class_portions():
    K = 3
    X, y = problem(40, K, seed=1)
    order = np.random.default_rng(0).permutation(40)
    y[order[:5]] = 1  # the first block holds one class only
    y[order[5:10]] = np.where(y[order[5:10]] == 2, 0, y[order[5:10]])  # class 2 absent from the first 10
    res = online_codelength(X, {"y": y}, n_classes=K, C=1.0, seed=0, fractions=(0.125, 0.25, 0.5, 1.0),
                            min_first=5, **TIGHT)["y"]
    np.testing.assert_array_equal(res.block_ends, [5, 10, 20, 40])
    assert np.isfinite(res.codelength_bits)
    assert res.codelength_bits == pytest.approx(by_hand(X, y, K, 1.0, 0, res.block_ends), rel=1e-6)
    assert res.block_bits.max() <= 20 * np.log2(K / MIX)  # one label costs at most log2(K / mix)


def test_structure_compresses_and_random_labels_do_not():
    X, y = problem(2000, 4, seed=3, noise=0.5)
    rand = np.random.default_rng(9).integers(0, 4, 2000)
    res = online_codelength(X.astype(np.float32), {"true": y, "random": rand}, n_classes=4, C=1.0)
    assert res["true"].compression > 2.0
    assert 0.8 < res["random"].compression < 1.02
    again = online_codelength(X.astype(np.float32), {"true": y}, n_classes=4, C=1.0)
    assert again["true"].codelength_bits == res["true"].codelength_bits  # seeded: identical
    other = online_codelength(X.astype(np.float32), {"true": y}, n_classes=4, C=1.0, seed=1)
    assert other["true"].codelength_bits != res["true"].codelength_bits


def test_block_ends_and_bad_inputs():
    np.testing.assert_array_equal(block_ends(10000)[:3], [10, 20, 40])
    assert block_ends(10000)[-1] == 10000
    assert block_ends(30)[0] == 10 and block_ends(5)[0] == 4
    with pytest.raises(ConfigError, match="fractions"):
        block_ends(100, (0.5, 0.25, 1.0))
    with pytest.raises(DataError, match="too small"):
        block_ends(1)
    X, y = problem(30, 2)
    with pytest.raises(DataError, match="labels"):
        online_codelength(X, {"y": y + 5}, n_classes=2)
    with pytest.raises(ConfigError, match="C must be"):
        online_codelength(X, {"y": y}, n_classes=2, C=0.0)


# ---------------------------------------------------------------------------- in the engine


def test_engine_rows_match_the_function_and_streaming(tmp_path):
    from analyze.config import AnalysisConfig
    from analyze.engine import run_analysis
    from analyze.results import read_table
    from storage_schema.store import open_store
    from tests.helpers.stores import make_store

    path = make_store(tmp_path / "s.zarr", n=200, epochs=(0, 3), layers=(("l1", 6), ("l2", 9)))
    cfg = AnalysisConfig(scheduler="none", Cs=(0.1, 1.0), probes=("classifier", "mdl"), mdl_C=0.5,
                         results=str(tmp_path / "r.parquet"))
    df = read_table(run_analysis(path, cfg, progress=False, log=lambda m: None).results)
    mdl = df[df["probe"] == "mdl"]
    # 2 runs x 2 checkpoints x 2 layers; the corrupted run also on its training labels
    assert len(mdl) == 8 + 4 and set(mdl["target"]) == {"true_labels", "train_labels"}
    assert (mdl["status"] == "ok").all() and (mdl["hyperparameter_value"] == 0.5).all()
    assert df.loc[df["probe"] == "classifier", "mdl_codelength_bits"].isna().all()
    with open_store(path) as s:
        train = s.split_indices("train")
        X = s.read_layer("noisy", "epoch_0003", "l2")[train]
        y, y_run = s.labels()[train], s.train_labels("noisy")[train]
    want = online_codelength(X, {"true_labels": y, "train_labels": y_run}, n_classes=4, C=0.5, seed=0)
    for target, r in want.items():
        row = mdl[(mdl["run"] == "noisy") & (mdl["checkpoint"] == "epoch_0003") & (mdl["layer"] == "l2")
                  & (mdl["target"] == target)].iloc[0]
        assert row["mdl_codelength_bits"] == pytest.approx(r.codelength_bits, rel=1e-9)
        assert row["mdl_uniform_bits"] == pytest.approx(train.size * 2.0)
        assert row["mdl_compression"] == pytest.approx(r.compression, rel=1e-9)
    streamed = cfg.replace(max_block_bytes=2000, results=str(tmp_path / "s.parquet"))
    df2 = read_table(run_analysis(path, streamed, progress=False, log=lambda m: None).results)
    cols = ["probe_id", "mdl_codelength_bits", "mdl_compression"]
    pd.testing.assert_frame_equal(df2.loc[df2["probe"] == "mdl", cols].reset_index(drop=True),
                                  mdl[cols].reset_index(drop=True))


def test_config_keys():
    from analyze.config import AnalysisConfig

    default = AnalysisConfig()
    assert "mdl" not in default.probes  # opt-in
    assert set(default.probe_settings()) == {"Cs", "alphas", "control_seed", "max_iter", "tol"}  # old tables resume
    cfg = AnalysisConfig.from_dict({"probes": ["mdl", "classifier"], "mdl_C": 2, "mdl_seed": 3})
    assert cfg.probes == ("classifier", "mdl") and cfg.mdl_C == 2.0
    assert cfg.probe_settings()["mdl_C"] == 2.0 and cfg.probe_settings()["mdl_seed"] == 3
    with pytest.raises(ConfigError, match="mdl_C must be positive"):
        AnalysisConfig.from_dict({"mdl_C": 0})
    with pytest.raises(ConfigError, match="did you mean 'mdl_seed'"):
        AnalysisConfig.from_dict({"mdl_sed": 1})
