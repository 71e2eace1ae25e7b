"""scikit-learn-style probe estimators: behaviour, sklearn interoperability, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from analyze.estimators import ClassifierProbe, RCVProbe
from analyze.solvers.ridge import fit_rcv_block
from probestore.errors import DataError

ALPHAS = np.logspace(-3, 5, 15)


def regression_data(n=300, F=12, T=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)) * rng.uniform(0.5, 3, F) + 2
    Y = X @ rng.normal(size=(F, T)) + rng.normal(size=(n, T)) * [0.5, 3.0, 10.0][:T]
    return X, Y


def test_rcv_probe_with_validation_data_equals_block_solver():
    X, Y = regression_data()
    probe = RCVProbe(alphas=ALPHAS).fit(X[:200], Y[:200, 0], X_valid=X[200:], y_valid=Y[200:, 0])
    res = fit_rcv_block(X[:200], Y[:200, 0], X[200:], Y[200:, 0], alphas=ALPHAS)
    assert probe.alpha_ == res.alpha[0] and np.ndim(probe.alpha_) == 0
    np.testing.assert_allclose(probe.coef_, res.coef[0])
    assert probe.coef_.shape == (12,) and np.ndim(probe.intercept_) == 0
    np.testing.assert_allclose(probe.predict(X[200:]), X[200:] @ res.coef[0] + res.intercept[0])
    assert probe.score(X[200:], Y[200:, 0]) == pytest.approx(res.r2_valid[0])
    assert np.linalg.norm(probe.direction_) == pytest.approx(1.0)


def test_rcv_probe_internal_split_refits_on_all_rows():
    X, Y = regression_data(T=1)
    y = Y[:, 0]
    probe = RCVProbe(alphas=ALPHAS, random_state=3).fit(X, y)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=probe.alpha_)).fit(X, y)
    np.testing.assert_allclose(probe.predict(X), ref.predict(X), rtol=1e-9)
    again = RCVProbe(alphas=ALPHAS, random_state=3).fit(X, y)
    assert again.alpha_ == probe.alpha_  # the hold-out is seeded
    no_refit = RCVProbe(alphas=ALPHAS, random_state=3, refit=False).fit(X, y)
    assert not np.allclose(no_refit.coef_, probe.coef_)


def test_rcv_probe_multi_target():
    X, Y = regression_data(T=3)
    probe = RCVProbe(alphas=ALPHAS).fit(X, Y)
    assert probe.alpha_.shape == (3,) and probe.coef_.shape == (3, 12) and probe.intercept_.shape == (3,)
    np.testing.assert_allclose(np.linalg.norm(probe.direction_, axis=1), 1.0)
    assert probe.predict(X).shape == (300, 3)
    assert probe.score(X, Y) == pytest.approx(r2_score(Y, probe.predict(X)))
    for t in range(3):  # each refitted target equals its own pipeline
        ref = make_pipeline(StandardScaler(), Ridge(alpha=probe.alpha_[t])).fit(X, Y[:, t])
        np.testing.assert_allclose(probe.predict(X)[:, t], ref.predict(X), rtol=1e-9)
    chunked = RCVProbe(alphas=ALPHAS, chunk_rows=64).fit(X, Y)
    np.testing.assert_allclose(chunked.coef_, probe.coef_, rtol=1e-8)


def test_clone_and_params():
    probe = RCVProbe(alphas=(0.1, 1.0), random_state=5)
    twin = clone(probe)
    assert twin.get_params() == probe.get_params() and twin is not probe
    assert twin.set_params(refit=False).refit is False
    clf = clone(ClassifierProbe(Cs=(1.0,), tol=1e-5))
    assert clf.get_params()["tol"] == 1e-5 and clf.get_params()["Cs"] == (1.0,)
    X, Y = regression_data(T=1)
    fitted = clone(RCVProbe()).fit(X, Y[:, 0])
    assert not hasattr(clone(fitted), "coef_")


def test_classifier_probe_on_digits_with_string_labels():
    X, y = load_digits(return_X_y=True)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    labels = names[y]
    Xtr, ytr, Xte, yte = X[:900], labels[:900], X[900:1300], labels[900:1300]
    probe = ClassifierProbe(Cs=(0.01, 0.1, 1.0)).fit(Xtr, ytr)
    assert set(probe.classes_) == set(names) and probe.coef_.shape == (10, 64)
    proba = probe.predict_proba(Xte)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert probe.score(Xte, yte) > 0.9
    assert np.mean(probe.predict(Xte) == probe.classes_[np.argmax(proba, axis=1)]) == 1.0
    sc = StandardScaler().fit(Xtr)
    ref = LogisticRegression(C=probe.C_, tol=1e-8, max_iter=5000).fit(sc.transform(Xtr), ytr)
    assert np.mean(ref.predict(sc.transform(Xte)) == probe.predict(Xte)) > 0.99
    assert probe.status_ == "converged"
    again = clone(probe).fit(Xtr, ytr, X_valid=Xte, y_valid=yte)
    assert again.C_ in (0.01, 0.1, 1.0)


def test_estimators_raise_clear_errors():
    """probestore's one-line errors, which are also the ValueErrors scikit-learn users catch."""
    X, Y = regression_data(T=1)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(DataError, match="Input X contains NaN; in RCVProbe.fit; expected .*; fix: drop or impute"):
        RCVProbe().fit(Xn, Y[:, 0])
    with pytest.raises(ValueError, match="constant in the train split"):
        RCVProbe().fit(X, np.ones(300))
    with pytest.raises(DataError, match="only one class"):
        ClassifierProbe().fit(X, np.zeros(300, dtype=int))
    with pytest.raises(ValueError, match="Input X contains NaN; in ClassifierProbe.fit"):
        ClassifierProbe().fit(Xn, (Y[:, 0] > 0).astype(int))
    probe = RCVProbe().fit(X, Y[:, 0])
    with pytest.raises(DataError, match="X has 3 features, but RCVProbe is expecting 12 features as input; in "
                                        "RCVProbe.predict; expected a finite numeric 2-D array with 12 features"):
        probe.predict(X[:, :3])
    for exc in (pytest.raises(DataError), pytest.raises(ValueError)):
        with exc as info:
            ClassifierProbe().fit(X, Y[:, 0])  # a continuous target
        assert str(info.value).startswith("Unknown label type: continuous") and "\n" not in str(info.value)


def test_analyze_never_imports_torch():
    code = ("import sys, analyze.estimators, analyze.solvers, analyze.metrics, analyze.controls; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
