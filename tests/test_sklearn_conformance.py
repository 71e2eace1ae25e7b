"""The probes are scikit-learn estimators by scikit-learn's own conformance suite, and by the
round trips users rely on (clone, params, Pipeline, GridSearchCV, pickling), matching
scikit-learn's LogisticRegression / Ridge on the same data."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from analyze.estimators import (
    DEFAULT_ALPHAS,
    DEFAULT_CS,
    ClassifierProbe,
    RCVProbe,
    SelectionFallbackWarning,
    _stratified_holdout,
)
from probestore.errors import ConfigError, DataError, DataTypeError

# Every check passes: no expected_failed_checks are needed (the default probes select
# their penalty on an internal hold-out; the C= / alpha= ones are the outer-search form).
PROBES = [ClassifierProbe(), ClassifierProbe(C=1.0), RCVProbe(), RCVProbe(alpha=1.0)]


@parametrize_with_checks(PROBES)
def test_sklearn_check_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionFallbackWarning)  # the checks' tiny random targets
        check(estimator)


def _digits(n=600, classes=10):
    X, y = load_digits(n_class=classes, return_X_y=True)
    return X[:n], y[:n]


def _regression(n=200, F=8, T=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)) * rng.uniform(0.5, 3, F) + 1
    return X, X @ rng.normal(size=(F, T)) + rng.normal(size=(n, T))


# --------------------------------------------------------------------------- against scikit-learn


def test_fixed_C_equals_logistic_regression_multiclass_and_binary():
    X, y = _digits()
    probe = ClassifierProbe(C=0.05, dtype="float64", tol=1e-8, max_iter=2000).fit(X, y)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, tol=1e-10, max_iter=5000)).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(X), atol=2e-5)
    assert probe.decision_function(X).shape == (600, 10) and probe.selected_ is False and probe.C_ == 0.05
    yb = np.where(y % 2 == 0, "even", "odd")
    binary = ClassifierProbe(C=0.05, dtype="float64", tol=1e-8, max_iter=2000).fit(X, yb)
    # the symmetric softmax at C is scikit-learn's binomial model at 2C (analyze.solvers.logistic)
    ref_b = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, tol=1e-10, max_iter=5000)).fit(X, yb)
    d = binary.decision_function(X)
    assert d.shape == (600,) and list(binary.classes_) == ["even", "odd"]
    np.testing.assert_allclose(d, ref_b.decision_function(X), atol=1e-4)
    assert np.array_equal(binary.predict(X), binary.classes_[(d > 0).astype(int)])
    np.testing.assert_allclose(binary.predict_proba(X)[:, 1], 1 / (1 + np.exp(-d)), rtol=1e-9)


def test_fixed_alpha_equals_ridge():
    X, Y = _regression()
    probe = RCVProbe(alpha=3.0).fit(X, Y)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(X, Y)
    np.testing.assert_allclose(probe.predict(X), ref.predict(X), rtol=1e-9)
    assert probe.alpha_.tolist() == [3.0, 3.0] and not probe.selected_.any() and np.isnan(probe.valid_r2_).all()


def test_sparse_ridge_equals_dense_and_logistic_refuses_sparse():
    X, Y = _regression(n=300)
    X[np.abs(X) < 1] = 0
    for chunk_rows in (None, 64):
        dense = RCVProbe(chunk_rows=chunk_rows).fit(X, Y)
        sparse = RCVProbe(chunk_rows=chunk_rows).fit(sp.csr_matrix(X), Y)
        assert sparse.alpha_.tolist() == dense.alpha_.tolist()
        np.testing.assert_allclose(sparse.coef_, dense.coef_, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(sparse.predict(sp.csc_array(X)), dense.predict(X), rtol=1e-8)
    with pytest.raises(DataTypeError, match="Sparse data was passed for X.*fix: densify it with X.toarray()") as info:
        ClassifierProbe().fit(sp.csr_matrix(X), (Y[:, 0] > 0).astype(int))
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- round trips


def test_grid_search_over_C_matches_logistic_regression():
    X, y = _digits(n=300, classes=5)
    cv = KFold(3, shuffle=True, random_state=0)
    Cs = [0.003, 0.03, 0.3]
    ours = GridSearchCV(ClassifierProbe(dtype="float64", tol=1e-8), {"C": Cs}, cv=cv, scoring="neg_log_loss").fit(X, y)
    ref = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(tol=1e-7, max_iter=5000)),
                       {"logisticregression__C": Cs}, cv=cv, scoring="neg_log_loss").fit(X, y)
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"], rtol=1e-3)
    assert ours.best_params_["C"] == ref.best_params_["logisticregression__C"]
    best = ours.best_estimator_
    assert best.C_ == ours.best_params_["C"] and best.selected_ is False


def test_grid_search_over_alpha_matches_ridge_and_cross_val_score():
    X, Y = _regression()
    y = Y[:, 0]
    alphas = [0.1, 10.0, 1000.0]
    ours = GridSearchCV(RCVProbe(), {"alpha": alphas}, cv=4).fit(X, y)
    ref = GridSearchCV(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": alphas}, cv=4).fit(X, y)
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"], rtol=1e-9)
    scores = cross_val_score(make_pipeline(StandardScaler(), RCVProbe(alphas=(0.1, 10.0))), X, y, cv=3)
    assert scores.shape == (3,) and (scores > 0.5).all()


def test_a_grid_and_a_fixed_value_are_refused():
    X, Y = _regression()
    with pytest.raises(ConfigError, match="both alphas and alpha are set.*fix: set alphas=None"):
        RCVProbe(alphas=(1.0, 10.0), alpha=1.0).fit(X, Y)
    with pytest.raises(ValueError, match="both Cs and C are set"):
        ClassifierProbe(Cs=(1.0,), C=1.0).fit(X, (Y[:, 0] > 0).astype(int))
    with pytest.raises(ValueError, match="C must be a finite number > 0"):
        ClassifierProbe(C=-1.0).fit(X, (Y[:, 0] > 0).astype(int))


def test_clone_params_pipeline_and_pickle():
    X, y = _digits(n=400)
    probe = ClassifierProbe(Cs=(0.01, 0.1), random_state=3)
    twin = clone(probe)
    assert twin.get_params() == probe.get_params() and twin.get_params()["C"] is None
    assert twin.set_params(Cs=None, C=0.5).get_params()["C"] == 0.5
    with pytest.raises(NotFittedError):
        twin.predict(X)
    pipe = make_pipeline(StandardScaler(), probe).fit(X, y)
    fitted = pipe[-1]
    assert fitted.C_ in (0.01, 0.1) and fitted.selected_ is True
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.predict_proba(X), pipe.predict_proba(X))
    np.testing.assert_array_equal(again[-1].coef_, fitted.coef_)
    rcv = RCVProbe(alphas=(0.1, 1.0)).fit(*_regression())
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(rcv)).predict(X[:, :8]), rcv.predict(X[:, :8]))
    err = pickle.loads(pickle.dumps(DataError("bad", where="w", got=1)))
    assert isinstance(err, ValueError) and str(err) == "bad; in w; got 1"


# --------------------------------------------------------------------------- fallbacks


def test_rcv_falls_back_to_the_middle_of_the_grid_where_valid_cannot_select():
    X, Y = _regression(T=2)
    Yv = Y[150:].copy()
    Yv[:, 1] = 4.0  # target 1 is constant on the validation rows: R² undefined there
    with pytest.warns(SelectionFallbackWarning, match=r"target\(s\) \[1\] constant on the validation rows.*"
                                                      r"using alpha=10, the middle of the grid"):
        probe = RCVProbe().fit(X[:150], Y[:150], X_valid=X[150:], y_valid=Yv)
    assert _middle_default() == 10.0 and probe.alpha_[1] == 10.0 and probe.selected_.tolist() == [True, False]
    assert np.isnan(probe.valid_r2_[1]) and np.isfinite(probe.valid_r2_[0])
    ref = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(X[:150], Y[:150, 1])
    np.testing.assert_allclose(probe.predict(X)[:, 1], ref.predict(X), rtol=1e-9)
    selected = RCVProbe().fit(X[:150], Y[:150, 0], X_valid=X[150:], y_valid=Y[150:, 0])
    assert probe.alpha_[0] == selected.alpha_ and np.allclose(probe.coef_[0], selected.coef_)
    with pytest.warns(SelectionFallbackWarning, match="3 rows are too few to hold out"):
        tiny = RCVProbe(validation_fraction=0.1).fit(X[:3], Y[:3, 0])
    assert tiny.alpha_ == 10.0 and not tiny.selected_


def _middle_default() -> float:
    return float(np.sort(DEFAULT_ALPHAS)[(len(DEFAULT_ALPHAS) - 1) // 2])


def test_classifier_hold_out_is_stratified_and_falls_back_without_one():
    codes = np.repeat([0, 1, 2, 3], [2, 3, 40, 1])
    fit, valid = _stratified_holdout(codes, 0.2, 0)
    assert set(codes[valid]) == {0, 1, 2} and set(codes[fit]) == {0, 1, 2, 3}
    assert np.intersect1d(fit, valid).size == 0 and fit.size + valid.size == codes.size
    X = np.arange(8.0).reshape(4, 2) ** 2
    with pytest.warns(SelectionFallbackWarning, match="every class has a single row.*using C=0.1"):
        probe = ClassifierProbe().fit(X, ["a", "b", "c", "d"])
    assert probe.C_ == float(np.sort(DEFAULT_CS)[3]) == 0.1 and probe.selected_ is False
