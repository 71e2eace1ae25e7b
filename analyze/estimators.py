"""scikit-learn estimators over the pure probe solvers, for users holding plain arrays.

The pipeline calls :func:`~analyze.solvers.ridge.fit_rcv_block` and
:func:`~analyze.solvers.logistic.fit_logistic_block` directly, once per block. These
thin wrappers give the same probes the familiar ``fit / predict / score`` interface and
pass scikit-learn's own conformance suite (``parametrize_with_checks``,
``tests/test_sklearn_conformance.py``), so ``clone``, ``Pipeline``, ``GridSearchCV``,
``cross_val_score`` and pickling work.

Penalty selection: with the default ``Cs=None`` / ``alphas=None`` the probe selects
its penalty from the default grid (``DEFAULT_CS`` / ``DEFAULT_ALPHAS``) on validation
data; pass a grid to search another one. Pass ``C=`` / ``alpha=`` instead to switch the
selection off and fit that one penalty on all of ``X``: this is what an outer search
such as ``GridSearchCV(ClassifierProbe(), {"C": [...]})`` needs (a grid *and* a fixed
value is refused, so neither is silently ignored).

Validation data: pass ``X_valid, y_valid`` to ``fit`` to select the penalty on them.
Without them, a seeded random ``validation_fraction`` of the rows (``random_state``;
stratified by class for the classifier) is held out for the selection, and with
``refit=True`` (default) the probe is then refitted on all rows with the selected
penalty, like ``RidgeCV`` / ``LogisticRegressionCV``. With explicit validation data the
probe is fitted on ``X`` only (the block solvers' convention), so its numbers match the
pipeline's. When the validation rows cannot select a penalty (too few rows to hold any
out, or a concept measure constant on them) the probe takes the middle of the grid and
warns with :class:`SelectionFallbackWarning`.

Input: validated with scikit-learn's ``validate_data`` (finite, numeric, 2-D, at least
two rows, ``n_features_in_`` / ``feature_names_in_`` checked in ``predict``); its
complaints are re-raised as probestore's one-line :class:`~probestore.errors.DataError`
(a ``ValueError``) or :class:`~probestore.errors.DataTypeError` (also a ``TypeError``).
Sparse ``X``: :class:`RCVProbe` accepts it and streams it in dense row chunks into the
F×F Gram statistics (memory ``O(F²)``, refused above ``MAX_SPARSE_GRAM_BYTES``);
:class:`ClassifierProbe` refuses it with a ``TypeError`` (its solver standardizes, i.e.
densifies, the features: call ``X.toarray()`` when that fits in memory).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from analyze.metrics import log_softmax
from analyze.solvers.grids import DEFAULT_ALPHAS, DEFAULT_CS, check_alphas, check_Cs
from analyze.solvers.logistic import fit_logistic_block
from analyze.solvers.ridge import fit_rcv_block
from analyze.solvers.standardize import is_constant_feature
from probestore.errors import ConfigError, DataError, DataTypeError

#: Largest F×F float64 Gram a sparse ``X`` may need in :class:`RCVProbe` (2 GiB: F ≈ 16,000).
MAX_SPARSE_GRAM_BYTES = 2 << 30
_SPARSE_CHUNK_ROWS = 4096
_X_SPEC = "a finite numeric 2-D array (n_samples >= 2, n_features >= 1)"


class SelectionFallbackWarning(UserWarning):
    """The validation rows could not select a penalty; the middle of the grid was used."""


# --------------------------------------------------------------------------- input checks


def _data_error(exc: Exception, where: str, expected: str) -> DataError:
    """scikit-learn's complaint about the input as probestore's one-line error.

    The first line of scikit-learn's message is kept verbatim (it names the input and what
    is wrong with it, and scikit-learn's checks match on it); a ``TypeError`` stays a
    ``TypeError``.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    what = (lines[0] if lines else type(exc).__name__).rstrip(".:")
    low = what.lower()
    advice = [line for line in lines if line.startswith("Reshape your data")]
    if advice:
        fix = advice[0].rstrip(".")
    elif "sparse" in low:
        fix = "densify it with X.toarray() if it fits in memory"
    elif "nan" in low or "infinity" in low:
        fix = "drop or impute the non-finite values (check the extraction of this layer)"
    elif "label type" in low:
        fix = "pass class labels (integers or strings) to a classifier, or use RCVProbe for a continuous target"
    elif "features, but" in low or "feature names" in low:
        fix = "pass the same features, in the same order, as to fit"
    else:
        fix = "pass X of shape (n_samples, n_features) and one y entry per row"
    cls = DataTypeError if isinstance(exc, TypeError) else DataError
    return cls(what, where=where, expected=expected, fix=fix)


def _validated(est, where: str, X, y="no_validation", *, reset: bool, **kw):
    """``sklearn.utils.validation.validate_data`` with probestore's errors: fit (``reset``)
    needs two rows, later calls the fitted number of features."""
    expected = _X_SPEC if reset else f"a finite numeric 2-D array with {est.n_features_in_} features"
    try:
        return validate_data(est, X, y, reset=reset, ensure_min_samples=2 if reset else 1, **kw)
    except (TypeError, ValueError) as exc:
        raise _data_error(exc, where, expected) from exc


def _check_valid_pair(X_valid, y_valid, where: str) -> bool:
    """True when validation data are given; both or neither."""
    if (X_valid is None) != (y_valid is None):
        raise ConfigError("give both X_valid and y_valid, or neither", where=where,
                          got=f"X_valid {'None' if X_valid is None else 'given'}, "
                              f"y_valid {'None' if y_valid is None else 'given'}")
    return X_valid is not None


def _one_of(grid, value, names: tuple[str, str], where: str, default) -> tuple[np.ndarray | None, float | None]:
    """(selection grid, None) or (None, fixed value): a grid and a fixed value are exclusive."""
    grid_name, value_name = names
    if grid is not None and value is not None:
        raise ConfigError(f"both {grid_name} and {value_name} are set", where=where,
                          expected=f"{grid_name} (selected on validation data) or {value_name} (fixed), not both",
                          got=f"{grid_name}={grid!r}, {value_name}={value!r}",
                          fix=f"set {grid_name}=None to fit one {value_name} (e.g. inside GridSearchCV), "
                              f"or {value_name}=None to select it")
    if value is None:
        return np.asarray(default if grid is None else grid, dtype=np.float64), None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not (np.isfinite(value) and value > 0):
        raise ConfigError(f"{value_name} must be a finite number > 0", where=where, got=repr(value))
    return None, float(value)


def _middle(grid: np.ndarray) -> float:
    """The fallback penalty when validation cannot choose: the middle of the sorted grid."""
    return float(grid[(grid.size - 1) // 2])


def _holdout(n: int, fraction: float, seed) -> tuple[np.ndarray, np.ndarray] | None:
    """Seeded (fit rows, valid rows), or None when ``n`` is too small to hold rows out."""
    n_valid = int(round(fraction * n))
    if n_valid < 1 or n - n_valid < 2:
        return None
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def _stratified_holdout(codes: np.ndarray, fraction: float, seed) -> tuple[np.ndarray, np.ndarray] | None:
    """Like :func:`_holdout`, per class, so that the fit rows keep every class and the
    validation rows hold every class with at least two members (a validation split that
    lacks classes selects C on the wrong problem). None when no row can be held out."""
    rng = np.random.default_rng(seed)
    valid = []
    for c in np.unique(codes):
        rows = rng.permutation(np.nonzero(codes == c)[0])
        if rows.size >= 2:
            valid.append(rows[:min(rows.size - 1, max(1, int(round(fraction * rows.size))))])
    if not valid:
        return None
    held = np.sort(np.concatenate(valid))
    return np.setdiff1d(np.arange(codes.size), held), held


def _check_fraction(fraction, where: str) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError("validation_fraction must be in (0, 1)", where=where, got=repr(fraction))


def _warn_fallback(why: str, value: float, name: str, grid_name: str) -> None:
    warnings.warn(f"{why}: {name} cannot be selected on validation data; using {name}={value:g}, the middle "
                  f"of the grid (pass X_valid, y_valid, or a fixed {name}= with {grid_name}=None)",
                  SelectionFallbackWarning, stacklevel=3)


# --------------------------------------------------------------------------- ridge


class _DenseRows:
    """Row slices of a sparse matrix as dense arrays: the streaming ridge statistics read
    ``X[start:stop]`` chunk by chunk, so only one dense chunk exists at a time."""

    def __init__(self, X):
        self._X = sp.csr_array(X)
        self.shape = X.shape
        self.dtype = X.dtype

    def __getitem__(self, rows):
        return self._X[rows].toarray()


def _dense_rows(X):
    return _DenseRows(X) if sp.issparse(X) else X


def _ridge(X, Y, Xv, Yv, alphas, chunk_rows):
    if chunk_rows is None and (sp.issparse(X) or sp.issparse(Xv)):
        chunk_rows = _SPARSE_CHUNK_ROWS  # sparse input is streamed in dense row chunks
    return fit_rcv_block(_dense_rows(X), Y, _dense_rows(Xv), Yv, alphas=alphas, chunk_rows=chunk_rows)


def _ridge_fixed(X, Y, alpha: float, chunk_rows):
    """Ridge at one alpha on all given rows. Nothing is selected, so the rows double as the
    solver's validation split (its validation scores are then training scores: dropped)."""
    return _ridge(X, Y, X, Y, [alpha], chunk_rows)


def _constant(Y: np.ndarray) -> np.ndarray:
    """Per target: finite and constant (the solver's test), so R² on these rows is undefined."""
    mean = Y.mean(axis=0)
    return is_constant_feature(Y.var(axis=0), mean, Y.shape[0]) & np.isfinite(mean)


def _first_failure(res, where: str) -> None:
    failed = np.nonzero(res.status != "ok")[0]
    if failed.size:
        t = failed[0]
        raise DataError(f"target {t} cannot be probed: {res.message[t]}", where=where,
                        fix="drop or fix that target")


class RCVProbe(RegressorMixin, BaseEstimator):
    """Ridge probe of one or more concept measures, penalty chosen on validation R².

    Parameters
    ----------
    alphas : sequence of float or None
        Ridge penalties to select from (``sklearn.linear_model.Ridge`` convention on
        standardized features); None: ``DEFAULT_ALPHAS`` unless ``alpha`` is set.
    alpha : float or None
        A fixed penalty: no selection, fitted on all of ``X`` (set it, with ``alphas``
        None, when an outer search such as ``GridSearchCV`` chooses alpha).
    validation_fraction : float
        Share of the rows held out for selection when no validation data is given.
    random_state : int or None
        Seed of that hold-out.
    refit : bool
        Refit on all rows with the chosen alpha after an internal hold-out.
    chunk_rows : int or None
        Stream the rows in chunks (see :func:`~analyze.solvers.ridge.fit_rcv_block`);
        sparse ``X`` is always streamed (4096 rows by default).

    Attributes
    ----------
    alpha_ : float or ndarray (T,)
    coef_ : ndarray (F,) or (T, F)
        On raw features.
    intercept_ : float or ndarray (T,)
    direction_ : ndarray (F,) or (T, F)
        Unit-norm RCV (``coef_ / ||coef_||``).
    valid_r2_ : float or ndarray (T,)
        Validation R² at the chosen alpha (NaN where alpha was not selected on validation rows).
    selected_ : bool or ndarray (T,)
        Whether alpha was selected on validation rows (False: fixed ``alpha`` or fallback).
    result_ : RidgeResult
        The solver's output (path, MSPE, ...) of the selection, or of the fixed-alpha fit.
    n_features_in_ : int
    """

    def __init__(self, alphas=None, validation_fraction=0.2, random_state=0, refit=True, chunk_rows=None,
                 alpha=None):
        self.alphas = alphas
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.refit = refit
        self.chunk_rows = chunk_rows
        self.alpha = alpha

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y, X_valid=None, y_valid=None):
        """Select alpha on validation R² (or use the fixed ``alpha``) and fit; returns ``self``."""
        where = "RCVProbe.fit"
        kw = dict(accept_sparse="csr", dtype=(np.float64, np.float32), y_numeric=True,
                  multi_output=True)
        X, y = _validated(self, where, X, y, reset=True, **kw)
        grid, fixed = _one_of(self.alphas, self.alpha, ("alphas", "alpha"), where, DEFAULT_ALPHAS)
        _check_fraction(self.validation_fraction, where)
        self._check_sparse_size(X)
        single = y.ndim == 1
        Y = y.reshape(y.shape[0], -1)
        explicit = _check_valid_pair(X_valid, y_valid, where)
        if explicit:
            Xv, yv = _validated(self, f"{where} (X_valid, y_valid)", X_valid, y_valid, reset=False, **kw)
            if yv.reshape(yv.shape[0], -1).shape[1] != Y.shape[1]:
                raise DataError("y_valid has another number of targets than y", where=where,
                                expected=f"{Y.shape[1]} target(s)", got=f"shape {yv.shape}")
        if fixed is not None:
            res = _ridge_fixed(X, Y, fixed, self.chunk_rows)
            _first_failure(res, where)
            alpha = np.full(Y.shape[1], fixed)
            coef, intercept, direction = res.coef, res.intercept, res.direction
            r2 = np.full(Y.shape[1], np.nan)
            selected = np.zeros(Y.shape[1], dtype=bool)
        else:
            res, alpha, coef, intercept, direction, r2, selected = self._select(
                X, Y, (Xv, yv.reshape(yv.shape[0], -1)) if explicit else None, check_alphas(grid), where)
        self.result_ = res
        self.alphas_ = None if grid is None else np.unique(grid)
        pick = (lambda v: v[0]) if single else (lambda v: v)
        self.alpha_ = pick(alpha)
        self.coef_ = pick(coef)
        self.intercept_ = pick(intercept)
        self.direction_ = pick(direction)
        self.valid_r2_ = pick(r2)
        self.selected_ = pick(selected)
        return self

    def _check_sparse_size(self, X) -> None:
        need = 8 * X.shape[1] ** 2
        if sp.issparse(X) and need > MAX_SPARSE_GRAM_BYTES:
            raise DataError("sparse X too wide for the ridge probe's F×F Gram statistics", where="RCVProbe.fit",
                            expected=f"at most {MAX_SPARSE_GRAM_BYTES / 2**30:g} GiB of Gram",
                            got=f"{X.shape[1]} features ({need / 2**30:.1f} GiB)",
                            fix="reduce the features first (e.g. sklearn TruncatedSVD or a random projection)")

    def _select(self, X, Y, valid, grid: np.ndarray, where: str):
        """Selection on validation rows, per target; the middle of the grid where it cannot."""
        T, F = Y.shape[1], X.shape[1]
        middle = _middle(grid)
        split = None if valid is not None else _holdout(X.shape[0], self.validation_fraction, self.random_state)
        if valid is not None:
            Xf, Yf, (Xv, Yv) = X, Y, valid
        elif split is not None:
            Xf, Yf, Xv, Yv = X[split[0]], Y[split[0]], X[split[1]], Y[split[1]]
        else:
            Xf, Yf, Xv, Yv = X, Y, None, None
            _warn_fallback(f"{X.shape[0]} rows are too few to hold out a validation split", middle, "alpha", "alphas")
        cannot = np.ones(T, dtype=bool)
        if Yv is not None:
            cannot = _constant(Yv) & ~_constant(Yf)  # constant on the fit rows too: the solver says why
            if cannot.any():
                _warn_fallback(f"target(s) {np.nonzero(cannot)[0].tolist()} constant on the validation rows",
                               middle, "alpha", "alphas")
        alpha, r2, intercept = np.full(T, middle), np.full(T, np.nan), np.full(T, np.nan)
        coef, direction = np.full((T, F), np.nan), np.full((T, F), np.nan)
        res = None
        if not cannot.all():
            sel = ~cannot
            res = _ridge(Xf, Yf[:, sel], Xv, Yv[:, sel], grid, self.chunk_rows)
            _first_failure(res, where)
            alpha[sel], r2[sel] = res.alpha, res.r2_valid
            coef[sel], intercept[sel], direction[sel] = res.coef, res.intercept, res.direction
        refit_all = split is not None and self.refit  # internal hold-out: refit on every row
        redo = np.ones(T, dtype=bool) if refit_all else cannot
        for a in np.unique(alpha[redo]):
            cols = np.nonzero(redo & (alpha == a))[0]
            full = _ridge_fixed(X if refit_all else Xf, (Y if refit_all else Yf)[:, cols], float(a),
                                self.chunk_rows)
            _first_failure(full, where)
            coef[cols], intercept[cols], direction[cols] = full.coef, full.intercept, full.direction
            res = full if res is None else res
        return res, alpha, coef, intercept, direction, r2, ~cannot

    def predict(self, X):
        """Linear prediction on raw features."""
        check_is_fitted(self)
        X = _validated(self, "RCVProbe.predict", X, reset=False, accept_sparse="csr",
                       dtype=(np.float64, np.float32))
        return np.asarray(X @ np.asarray(self.coef_).T, dtype=np.float64) + self.intercept_


# --------------------------------------------------------------------------- classifier


class ClassifierProbe(ClassifierMixin, BaseEstimator):
    """Multinomial linear classifier probe, C chosen on validation cross-entropy.

    Same objective as ``LogisticRegression(C)`` on standardized features (see
    :mod:`analyze.solvers.logistic`); with two classes ``coef_`` has two rows (the
    symmetric softmax), not scikit-learn's one, while ``decision_function`` follows
    scikit-learn: shape (n,), the logit of ``classes_[1]`` minus that of ``classes_[0]``.

    Parameters
    ----------
    Cs : sequence of float or None
        Inverse regularization strengths to select from; None: ``DEFAULT_CS`` unless
        ``C`` is set.
    C : float or None
        A fixed C: no selection, fitted on all of ``X`` (set it, with ``Cs`` None, when an
        outer search such as ``GridSearchCV`` chooses C).
    max_iter, tol, dtype
        Solver settings of :func:`~analyze.solvers.logistic.fit_logistic_block`.
    validation_fraction, random_state, refit
        As in :class:`RCVProbe`; the internal hold-out is stratified by class.

    Attributes
    ----------
    C_ : float
    selected_ : bool
        Whether C was selected on validation rows (False: fixed ``C`` or fallback).
    coef_ : ndarray (K, F)
    intercept_ : ndarray (K,)
        ``-inf`` for a class seen only in the validation labels.
    classes_ : ndarray (K,)
        Sorted labels of ``y`` and ``y_valid``.
    n_iter_ : int
    status_ : str
    result_ : LogisticResult
    n_features_in_ : int
    """

    def __init__(self, Cs=None, max_iter=500, tol=1e-6, dtype="float32", validation_fraction=0.2,
                 random_state=0, refit=True, C=None):
        self.Cs = Cs
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.refit = refit
        self.C = C

    def fit(self, X, y, X_valid=None, y_valid=None):
        """Select C on validation cross-entropy (or use the fixed ``C``) and fit; returns ``self``."""
        where = "ClassifierProbe.fit"
        kw = dict(accept_sparse=False, dtype=(np.float64, np.float32))
        X, y = _validated(self, where, X, y, reset=True, **kw)
        explicit = _check_valid_pair(X_valid, y_valid, where)
        yv_raw = None
        if explicit:
            X_valid, yv_raw = _validated(self, f"{where} (X_valid, y_valid)", X_valid, y_valid, reset=False, **kw)
        try:
            check_classification_targets(y if yv_raw is None else np.concatenate([y, yv_raw]))
        except ValueError as exc:
            raise _data_error(exc, where, "class labels (integers or strings)") from exc
        grid, fixed = _one_of(self.Cs, self.C, ("Cs", "C"), where, DEFAULT_CS)
        _check_fraction(self.validation_fraction, where)
        self.classes_ = np.unique(y if yv_raw is None else np.concatenate([y, yv_raw]))
        if self.classes_.size < 2:
            raise DataError("only one class in the labels: a classifier needs at least 2 classes",
                            where=where, got=f"1 class ({self.classes_[0].tolist()!r})", fix="give rows of other classes")
        codes = np.searchsorted(self.classes_, y)
        K = self.classes_.size
        solve = dict(n_classes=K, max_iter=self.max_iter, tol=self.tol, dtype=np.dtype(self.dtype))

        def fit_at(Xa, ya, Xb, yb, Cs, warm=None):
            res = fit_logistic_block(Xa, Xb, None, {"y": (ya, yb, None)}, Cs, warm_start=warm, **solve)["y"]
            if not res.ok:
                raise DataError(f"cannot fit the probe: {res.message}", where=where)
            return res

        self.selected_ = False
        if fixed is not None:  # no selection; the valid scores are on X_valid when given, else on X
            Xb, yb = (X_valid, np.searchsorted(self.classes_, yv_raw)) if explicit else (X, codes)
            res = final = fit_at(X, codes, Xb, yb, [fixed])
        elif explicit:
            res = final = fit_at(X, codes, X_valid, np.searchsorted(self.classes_, yv_raw), check_Cs(grid))
            self.selected_ = True
        else:
            split = _stratified_holdout(codes, self.validation_fraction, self.random_state)
            if split is None:
                middle = _middle(check_Cs(grid))
                _warn_fallback("every class has a single row, none can be held out", middle, "C", "Cs")
                res = final = fit_at(X, codes, X, codes, [middle])
            else:
                f, v = split
                res = final = fit_at(X[f], codes[f], X[v], codes[v], check_Cs(grid))
                self.selected_ = True
                if self.refit:
                    final = fit_at(X, codes, X[v], codes[v], [res.C], warm={"y": res})
        self.result_ = res
        self.C_ = res.C
        self.coef_ = final.coef
        self.intercept_ = final.intercept
        self.n_iter_ = final.n_iter
        self.status_ = final.status
        return self

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = _validated(self, f"{type(self).__name__}.predict", X, reset=False, accept_sparse=False,
                       dtype=(np.float64, np.float32))
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X):
        """Class logits on raw features: shape (n, K), or (n,) for two classes (the
        log-odds of ``classes_[1]``, scikit-learn's convention)."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X):
        """Softmax of the logits, shape (n, K) in ``classes_`` order."""
        return np.exp(log_softmax(self._logits(X)))

    def predict_log_proba(self, X):
        """Log-softmax of the logits, shape (n, K)."""
        return log_softmax(self._logits(X))

    def predict(self, X):
        """Most probable class label."""
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]
