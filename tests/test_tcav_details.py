"""TCAV details of issue 11 §6: held-out CAV accuracy, counterexamples without the concept's
own examples, Bonferroni on by default, RCV sensitivities scaled by lift_scale, table version."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression

from analyze import tcav as tcav_mod
from analyze import tcav_commands
from analyze.tcav import TCAVOptions, fit_cavs, holdout_masks, run_tcav, write_table
from probestore.errors import ConfigError
from storage_schema.concept_sets import add_concept_set, set_extra_attrs
from storage_schema.store import open_store
from tests.helpers.tcav import GRAD, N, planted_store


def test_holdout_is_stratified_seeded_and_keyed_by_problem():
    masks = np.zeros((2, 90), bool)
    masks[0, :60] = masks[1, 30:] = True
    y = np.zeros((2, 90))
    y[0, :15] = y[1, 30:60] = 1
    held = holdout_masks(masks, y, 1 / 3, [[0, 1, 7, 1], [0, 2, 1]])
    assert not (held & ~masks).any()
    assert (held[0] & (y[0] > 0)).sum() == 5 and (held[0] & (y[0] == 0) & masks[0]).sum() == 15
    assert (held[1] & (y[1] > 0)).sum() == 10 and (held[1] & (y[1] == 0) & masks[1]).sum() == 10
    again = holdout_masks(masks[::-1], y[::-1], 1 / 3, [[0, 2, 1], [0, 1, 7, 1]])[::-1]
    np.testing.assert_array_equal(held, again)           # same key -> same rows, whatever the position
    assert not np.array_equal(holdout_masks(masks, y, 1 / 3, [[1, 1, 7, 1], [0, 2, 1]])[0], held[0])
    tiny = np.zeros((1, 3), bool)
    tiny[0] = True
    assert holdout_masks(tiny, np.array([[1.0, 0, 0]]), 1 / 3, [[0]]).sum() == 1  # a lone positive stays in


def test_heldout_accuracy_is_sklearn_fitted_on_the_rest():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((80, 4)) + np.repeat([[1.2, 0, 0, 0], [0, 0, 0, 0]], 40, axis=0)
    masks = np.ones((1, 80), bool)
    y = (np.arange(80) < 40)[None].astype(float)
    held = holdout_masks(masks, y, 1 / 3, [[5]])
    fit = fit_cavs(X, masks, y, C=0.5, holdout=held)
    mean = X.mean(0)
    scale = np.sqrt(((X - mean) ** 2).mean())
    tr, te = ~held[0], held[0]
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit((X[tr] - mean) / scale, y[0, tr])
    np.testing.assert_allclose(fit.coef[0], ref.coef_[0] / scale, rtol=1e-4, atol=1e-6)
    assert fit.heldout_accuracy[0] == pytest.approx(ref.score((X[te] - mean) / scale, y[0, te]))
    assert fit.train_accuracy[0] == pytest.approx(ref.score((X[tr] - mean) / scale, y[0, tr]))
    assert fit.heldout_accuracy[0] < fit.train_accuracy[0]   # the overlap makes held-out honest
    with pytest.raises(ConfigError, match="holdout"):
        TCAVOptions(holdout=0.7)


def test_table_reports_heldout_accuracy_under_a_versioned_schema(tmp_path):
    store, _ = planted_store(tmp_path / "s.zarr")
    store.close()
    opts = TCAVOptions(repeats=3, random_size=20, seed=2, conexp=False)
    rows = run_tcav(tmp_path / "s.zarr", opts)
    t = pd.DataFrame([r for r in rows if r["method"] == "tcav"])
    assert "cav_accuracy" not in t and t.cav_heldout_accuracy.between(0.5, 1).all()
    assert (t.cav_train_accuracy >= t.cav_heldout_accuracy - 0.2).all()
    path = write_table(rows, tmp_path / "t.parquet", opts)
    meta = pq.read_schema(path).metadata
    assert json.loads(meta[b"probestore.table"]) == {"name": "tcav", "version": tcav_mod.TABLE_VERSION} and \
        tcav_mod.TABLE_VERSION == "2.1"
    assert "cav_heldout_accuracy" in pd.read_parquet(path).columns


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_random_sets_never_count_the_concept_examples_as_counterexamples(tmp_path, suffix, monkeypatch):
    store, data = planted_store(tmp_path / f"s{suffix}")
    concept = np.flatnonzero(data["striped"])[:30]
    add_concept_set(store, "banded", kind="dataset", sample_ids=store.sample_ids()[concept], rows=concept)
    others = np.flatnonzero(~data["striped"])
    overlap = []
    for i in range(4):  # stored random sets, each with some of banded's own examples
        own = concept[i * 3:(i + 1) * 3 + i]           # 3, 4, 5, 6 concept examples
        rr = np.sort(np.concatenate([own, np.random.default_rng(i).choice(others, 20, replace=False)]))
        add_concept_set(store, f"random_{i}", kind="dataset", sample_ids=store.sample_ids()[rr], rows=rr,
                        role="random", source="hand-made", seed=i)
        overlap.append(len(own))
    store.close()
    seen = {}
    real = tcav_mod.fit_cavs

    def spy(X, masks, y, **kw):
        seen.update(X=X, masks=masks, y=y)
        return real(X, masks, y, **kw)

    monkeypatch.setattr(tcav_mod, "fit_cavs", spy)
    rows = run_tcav(tmp_path / f"s{suffix}", TCAVOptions(concepts=("banded",), repeats=3, rcv=False, conexp=False))
    t = pd.DataFrame(rows)
    assert (t.n_random_excluded == sum(overlap[1:4])).all()   # random_1..3 are the counterexample sets
    # No concept-problem counterexample row holds a feature vector of a concept example.
    with open_store(tmp_path / f"s{suffix}") as s:
        concept_x = s.read_layer("r", "e1", "fc", concept).astype(np.float64)
    X, masks, y = seen["X"], seen["masks"], seen["y"]
    for p in range(3):
        neg = X[masks[p] & (y[p] < 0.5)]
        assert len(neg) == 20
        assert not (np.abs(neg[:, None, :] - concept_x[None]).sum(-1) == 0).any()
    # the null problems (random_0 vs random_r) keep their sets whole
    assert masks[3].sum() == overlap[0] + 20 + overlap[1] + 20


def test_bonferroni_is_on_by_default_in_the_options_the_cli_and_the_table(tmp_path):
    assert TCAVOptions().bonferroni is True
    parser = argparse.ArgumentParser()
    tcav_commands.register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["tcav", "s.zarr"]).bonferroni is True
    assert parser.parse_args(["tcav", "s.zarr", "--no-bonferroni"]).bonferroni is False
    store, _ = planted_store(tmp_path / "s.zarr")
    store.close()
    default = pd.DataFrame(run_tcav(tmp_path / "s.zarr", TCAVOptions(repeats=3, random_size=20, rcv=False)))
    t = default[default.method == "tcav"]
    assert len(t) == 3 and np.allclose(t.alpha, 0.05 / 3)
    off = pd.DataFrame(run_tcav(tmp_path / "s.zarr", TCAVOptions(repeats=3, random_size=20, rcv=False,
                                                                 bonferroni=False)))
    assert np.allclose(off[off.method == "tcav"].alpha, 0.05)


@pytest.mark.parametrize("reduction, scale", [
    ({"kind": "gap", "source_shape": [6, 3, 3]}, 9.0),
    ({"kind": "project", "params": {"k": 6, "seed": 0}, "source_shape": [4, 8, 3], "n_features": 6}, 6 / 96),
    ({"kind": "random", "params": {"k": 6, "seed": 0}, "source_shape": [96]}, 1.0),
])
def test_rcv_sensitivity_is_scaled_by_the_reductions_lift_scale(tmp_path, reduction, scale):
    """The derivative is per unit move of the reduced features; a stale recorded 1 is not used."""
    store, _ = planted_store(tmp_path / "s.zarr")
    store.close()
    opts = TCAVOptions(concepts=(), conexp=False)
    plain = pd.DataFrame(run_tcav(tmp_path / "s.zarr", opts)).set_index("class_name")
    with open_store(tmp_path / "s.zarr", "a") as s:
        set_extra_attrs(s, "r", "e1", "fc", GRAD, {"kind": "gradient", "of": "own_class_logit",
                                                   "reduction": reduction, "lift_scale": 1.0,
                                                   "complete": True, "rows_done": N})
    scaled = pd.DataFrame(run_tcav(tmp_path / "s.zarr", opts)).set_index("class_name")
    assert (plain.lift_scale == 1.0).all() and (scaled.lift_scale == scale).all()
    np.testing.assert_allclose(scaled.score_mean, scale * plain.score_mean, rtol=1e-12)
    np.testing.assert_array_equal(scaled.sign_fraction, plain.sign_fraction)
