"""scikit-learn estimators over the pure probe solvers, for users holding plain arrays.

The pipeline calls :func:`~analyze.solvers.ridge.fit_rcv_block` and
:func:`~analyze.solvers.logistic.fit_logistic_block` directly, once per block. These
thin wrappers give the same probes the familiar ``fit / predict / score`` interface and
work with ``clone``, ``get_params`` and pipelines.

Validation data: pass ``X_valid, y_valid`` to ``fit`` to select the penalty on them.
Without them, a seeded random ``validation_fraction`` of the rows (``random_state``) is
held out for the selection, and with ``refit=True`` (default) the probe is then refitted
on all rows with the selected penalty, like ``RidgeCV`` / ``LogisticRegressionCV``.
With explicit validation data the probe is fitted on ``X`` only (the block solvers'
convention), so its numbers match the pipeline's.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from analyze.metrics import log_softmax
from analyze.solvers.logistic import fit_logistic_block
from analyze.solvers.ridge import fit_rcv_block
from storage_schema.errors import ConfigError, DataError

DEFAULT_ALPHAS = tuple(np.logspace(-3, 5, 15))
DEFAULT_CS = tuple(np.logspace(-4, 2, 7))


def _holdout(n: int, fraction: float, seed, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit rows, valid rows) split used when no validation data is given."""
    if not 0 < fraction < 1:
        raise ConfigError("validation_fraction must be in (0, 1)", where=where, got=fraction)
    n_valid = int(round(fraction * n))
    if n_valid < 1 or n - n_valid < 2:
        raise DataError("too few rows to hold out a validation split", where=where,
                        expected="enough rows for >= 2 fit rows and >= 1 valid row",
                        got=f"{n} rows, validation_fraction={fraction}",
                        fix="pass X_valid, y_valid explicitly or give more rows")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def _check_predict_X(est, X) -> np.ndarray:
    check_is_fitted(est, "coef_")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != est.n_features_in_:
        raise DataError("wrong feature matrix", where=f"{type(est).__name__}.predict",
                        expected=f"shape (n, {est.n_features_in_})", got=f"shape {X.shape}")
    return X


class RCVProbe(RegressorMixin, BaseEstimator):
    """Ridge probe of one or more concept measures, penalty chosen on validation R².

    Parameters
    ----------
    alphas : sequence of float
        Ridge penalties (``sklearn.linear_model.Ridge`` convention on standardized
        features).
    validation_fraction : float
        Share of the rows held out for selection when no validation data is given.
    random_state : int or None
        Seed of that hold-out.
    refit : bool
        Refit on all rows with the chosen alpha after an internal hold-out.
    chunk_rows : int or None
        Stream the rows in chunks (see :func:`~analyze.solvers.ridge.fit_rcv_block`).

    Attributes
    ----------
    alpha_ : float or ndarray (T,)
    coef_ : ndarray (F,) or (T, F)
        On raw features.
    intercept_ : float or ndarray (T,)
    direction_ : ndarray (F,) or (T, F)
        Unit-norm RCV (``coef_ / ||coef_||``).
    valid_r2_ : float or ndarray (T,)
        Validation R² at the chosen alpha.
    result_ : RidgeResult
        The solver's full output (path, MSPE, ...).
    """

    def __init__(self, alphas=DEFAULT_ALPHAS, validation_fraction=0.2, random_state=0, refit=True,
                 chunk_rows=None):
        self.alphas = alphas
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.refit = refit
        self.chunk_rows = chunk_rows

    def fit(self, X, y, X_valid=None, y_valid=None):
        """Select alpha on validation R² and fit; returns ``self``."""
        X = np.asarray(X)
        y = np.asarray(y, dtype=np.float64)
        single = y.ndim == 1
        internal = X_valid is None
        if internal != (y_valid is None):
            raise ConfigError("give both X_valid and y_valid, or neither", where="RCVProbe.fit")
        if internal:
            fit_rows, valid_rows = _holdout(X.shape[0], self.validation_fraction, self.random_state,
                                            "RCVProbe.fit")
            Xf, yf, Xv, yv = X[fit_rows], y[fit_rows], X[valid_rows], y[valid_rows]
        else:
            Xf, yf, Xv, yv = X, y, np.asarray(X_valid), np.asarray(y_valid, dtype=np.float64)
        res = fit_rcv_block(Xf, yf, Xv, yv, alphas=self.alphas, chunk_rows=self.chunk_rows)
        failed = np.nonzero(res.status != "ok")[0]
        if failed.size:
            t = failed[0]
            raise DataError(f"target {t} cannot be probed: {res.message[t]}", where="RCVProbe.fit",
                            fix="drop or fix that target")
        coef, intercept, direction = res.coef, res.intercept, res.direction
        if internal and self.refit:
            coef, intercept, direction = coef.copy(), intercept.copy(), direction.copy()
            yall = y.reshape(y.shape[0], -1)
            for a in np.unique(res.alpha):
                cols = np.nonzero(res.alpha == a)[0]
                full = fit_rcv_block(X, yall[:, cols], Xv, yv.reshape(yv.shape[0], -1)[:, cols],
                                     alphas=[a], chunk_rows=self.chunk_rows)
                coef[cols], intercept[cols], direction[cols] = full.coef, full.intercept, full.direction
        self.result_ = res
        self.n_features_in_ = X.shape[1]
        self.alphas_ = res.alphas
        pick = (lambda v: v[0]) if single else (lambda v: v)
        self.alpha_ = pick(res.alpha)
        self.coef_ = pick(coef)
        self.intercept_ = pick(intercept)
        self.direction_ = pick(direction)
        self.valid_r2_ = pick(res.r2_valid)
        return self

    def predict(self, X):
        """Linear prediction on raw features."""
        X = _check_predict_X(self, X)
        return X @ np.asarray(self.coef_).T + self.intercept_


class ClassifierProbe(ClassifierMixin, BaseEstimator):
    """Multinomial linear classifier probe, C chosen on validation cross-entropy.

    Same objective as ``LogisticRegression(C)`` on standardized features (see
    :mod:`analyze.solvers.logistic`); with two classes ``coef_`` has two rows (the
    symmetric softmax), not scikit-learn's one.

    Parameters
    ----------
    Cs : sequence of float
    max_iter, tol, dtype
        Solver settings of :func:`~analyze.solvers.logistic.fit_logistic_block`.
    validation_fraction, random_state, refit
        As in :class:`RCVProbe`.

    Attributes
    ----------
    C_ : float
    coef_ : ndarray (K, F)
    intercept_ : ndarray (K,)
        ``-inf`` for a class seen only in the validation labels.
    classes_ : ndarray (K,)
        Sorted labels of ``y`` and ``y_valid``.
    n_iter_ : int
    status_ : str
    result_ : LogisticResult
    """

    def __init__(self, Cs=DEFAULT_CS, max_iter=500, tol=1e-6, dtype="float32", validation_fraction=0.2,
                 random_state=0, refit=True):
        self.Cs = Cs
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.refit = refit

    def fit(self, X, y, X_valid=None, y_valid=None):
        """Select C on validation cross-entropy and fit; returns ``self``."""
        X = np.asarray(X)
        y = np.asarray(y)
        internal = X_valid is None
        if internal != (y_valid is None):
            raise ConfigError("give both X_valid and y_valid, or neither", where="ClassifierProbe.fit")
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise DataError("labels do not line up with features", where="ClassifierProbe.fit",
                            expected=f"shape ({X.shape[0]},)", got=f"shape {y.shape}")
        yv_raw = y if internal else np.asarray(y_valid)
        self.classes_ = np.unique(np.concatenate([y, yv_raw]))
        codes = np.searchsorted(self.classes_, y)
        if internal:
            fit_rows, valid_rows = _holdout(X.shape[0], self.validation_fraction, self.random_state,
                                            "ClassifierProbe.fit")
            Xf, yf, Xv, yv = X[fit_rows], codes[fit_rows], X[valid_rows], codes[valid_rows]
        else:
            Xf, yf, Xv, yv = X, codes, np.asarray(X_valid), np.searchsorted(self.classes_, yv_raw)
        if self.classes_.size < 2:
            raise DataError("a single class in the labels: no classifier to fit",
                            where="ClassifierProbe.fit", got=f"class {self.classes_[0]!r}")
        K = self.classes_.size
        kw = dict(n_classes=K, max_iter=self.max_iter, tol=self.tol, dtype=np.dtype(self.dtype))
        res = fit_logistic_block(Xf, Xv, None, {"y": (yf, yv, None)}, self.Cs, **kw)["y"]
        if not res.ok:
            raise DataError(f"cannot fit the probe: {res.message}", where="ClassifierProbe.fit")
        final = res
        if internal and self.refit:
            final = fit_logistic_block(X, Xv, None, {"y": (codes, yv, None)}, [res.C],
                                       warm_start={"y": res}, **kw)["y"]
        self.result_ = res
        self.n_features_in_ = X.shape[1]
        self.C_ = res.C
        self.coef_ = final.coef
        self.intercept_ = final.intercept
        self.n_iter_ = final.n_iter
        self.status_ = final.status
        return self

    def decision_function(self, X):
        """Class logits on raw features, shape (n, K)."""
        X = _check_predict_X(self, X)
        return X @ self.coef_.T + self.intercept_

    def predict_proba(self, X):
        """Softmax of the logits, shape (n, K) in ``classes_`` order."""
        return np.exp(log_softmax(self.decision_function(X)))

    def predict(self, X):
        """Most probable class label."""
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
