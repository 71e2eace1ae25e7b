"""Regression Concept Vectors: a whole ridge path for many targets from one factorization.

Graziani et al. regress a continuous concept measure (a colour fraction, a GLCM
statistic, an area) on a layer's activations; the probe's held-out R² and MSPE say how
linearly the layer encodes the concept, and its unit-norm coefficient vector is the RCV
direction. One block (run, checkpoint, layer) has many concepts and a grid of penalties,
so every target and every alpha share a single eigendecomposition:

- ``n_train > F`` ("gram"): ``Xs^T Xs = Q diag(lam) Q^T`` (F×F);
- ``F >= n_train`` ("kernel"): ``Xs Xs^T = U diag(lam) U^T`` (n×n), in memory only;
- streaming ("gram-streaming"): the F×F Gram assembled from row chunks
  (:mod:`.standardize`), valid/test scored from their own sufficient statistics.

The model equals ``make_pipeline(StandardScaler(), Ridge(alpha))``: features
standardized with the TRAIN mean and population std (constant features -> 0), the
target centered on its train mean (unpenalized intercept), penalty ``alpha * ||w||²``
on the standardized coefficients. The coefficient reported is mapped back to raw
features (``coef``, ``intercept``); ``direction = coef / ||coef||``.

Selection: per target, the alpha with the largest valid R²; exact ties go to the larger
alpha (the simpler model). Everything is float64 whatever the input dtype: a float32
Gram loses the small eigenvalues that decide the weakly regularized end of the path.

Failure policy: NaN/Inf features or an empty train/valid split raise
:class:`DataError` (the whole block is unusable). A
target with NaN/Inf in any split, or constant in train or valid, fails *alone*: its
``status`` is ``"failed"`` with a ``message``, its numbers are NaN, and the other
targets are fitted normally. If no target is usable, :class:`DataError` is raised.
A layer whose features are all constant on train is a result, not an error: the probe
predicts the train mean (valid R² <= 0) and its ``direction`` is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analyze.metrics import r2_from_sums
from analyze.solvers.grids import DEFAULT_ALPHAS, check_alphas
from analyze.solvers.standardize import (
    SplitStats,
    Standardizer,
    is_constant_feature,
    stats_from_arrays,
)
from probestore.errors import ConfigError, DataError

_SPLITS = ("train", "valid", "test")
_ROW_BLOCK = 8192  # rows scored at once: bounds the (rows, alphas, targets) prediction array


@dataclass
class RidgeResult:
    """Per-target outcome of a ridge path; arrays have one entry (or row) per target.

    Attributes
    ----------
    alphas : ndarray (A,)
        The grid, sorted ascending (the order of ``path`` rows).
    alpha, alpha_index : ndarray (T,)
        Chosen penalty and its index in ``alphas`` (NaN / -1 for failed targets).
    r2_train, r2_valid, r2_test, mspe_train, mspe_valid, mspe_test : ndarray (T,)
        Scores at the chosen alpha (test NaN when no test split was given).
    coef : ndarray (T, F)
        Coefficients on the raw (unstandardized) features.
    intercept : ndarray (T,)
    direction : ndarray (T, F)
        ``coef / ||coef||``: the RCV.
    path : dict of ndarray (A, T)
        ``r2_train``, ``r2_valid``, ``mspe_train``, ``mspe_valid`` for every alpha.
    status : ndarray of str (T,)
        ``"ok"`` or ``"failed"``.
    message : list of str (T,)
        Why a target failed (``""`` when ok).
    method : str
        ``"gram"``, ``"kernel"`` or ``"gram-streaming"``.
    n_train, n_valid, n_test : int
    """

    alphas: np.ndarray
    alpha: np.ndarray
    alpha_index: np.ndarray
    r2_train: np.ndarray
    r2_valid: np.ndarray
    r2_test: np.ndarray
    mspe_train: np.ndarray
    mspe_valid: np.ndarray
    mspe_test: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    direction: np.ndarray
    path: dict[str, np.ndarray]
    status: np.ndarray
    message: list[str]
    method: str
    n_train: int
    n_valid: int
    n_test: int

    def records(self, target_names: Sequence[str] | None = None) -> list[dict]:
        """One flat dict of scalars per target (for a results table)."""
        T = self.alpha.shape[0]
        names = list(target_names) if target_names is not None else [str(t) for t in range(T)]
        if len(names) != T:
            raise ConfigError("wrong number of target names", where="RidgeResult.records",
                              expected=T, got=len(names))
        keys = ("alpha", "r2_train", "r2_valid", "r2_test", "mspe_train", "mspe_valid", "mspe_test")
        return [
            {"target": names[t], "status": str(self.status[t]), "message": self.message[t],
             **{k: float(getattr(self, k)[t]) for k in keys}, "method": self.method}
            for t in range(T)
        ]


# --------------------------------------------------------------------------- validation


def _check_split(X, Y, name: str, n_features: int | None, n_targets: int | None):
    if X is None or Y is None:
        if name == "test" and X is None and Y is None:
            return None, None
        raise DataError(f"{name} split given without its partner array", where=f"{name} split",
                        expected="both X and Y, or neither (test only)",
                        got=f"X {'None' if X is None else 'given'}, Y {'None' if Y is None else 'given'}")
    if len(X.shape) != 2:
        raise DataError("features must be 2-D", where=f"X_{name}", expected="(n_samples, n_features)",
                        got=f"shape {tuple(X.shape)}", fix="flatten spatial dimensions first")
    if len(Y.shape) not in (1, 2) or Y.shape[0] != X.shape[0]:
        raise DataError("targets do not line up with features", where=f"Y_{name}",
                        expected=f"shape ({X.shape[0]},) or ({X.shape[0]}, T)", got=f"shape {tuple(Y.shape)}")
    if X.shape[0] == 0:
        raise DataError(f"the {name} split is empty", where=f"{name} split",
                        expected="at least one row", got="0 rows",
                        fix="check the split assignment of this dataset")
    if n_features is not None and X.shape[1] != n_features:
        raise DataError("splits have different feature counts", where=f"X_{name}",
                        expected=f"{n_features} features (as train)", got=X.shape[1])
    T = 1 if len(Y.shape) == 1 else Y.shape[1]
    if n_targets is not None and T != n_targets:
        raise DataError("splits have different target counts", where=f"Y_{name}",
                        expected=f"{n_targets} targets (as train)", got=T)
    return X, Y


def _check_split_stats(train: SplitStats, valid: SplitStats, test: SplitStats | None) -> dict:
    """The splits' statistics by name, refusing an empty split or one of another width."""
    stats = {"train": train, "valid": valid, "test": test}
    for name, s in stats.items():
        if s is not None and s.n == 0:
            raise DataError(f"the {name} split is empty", where=f"{name} split",
                            expected="at least one row", got="0 rows")
        if s is not None and (s.n_features != train.n_features or s.n_targets != train.n_targets):
            raise DataError("splits have different widths", where=f"{name} split",
                            expected=f"{train.n_features} features, {train.n_targets} targets",
                            got=f"{s.n_features} features, {s.n_targets} targets")
    return stats


def _finite_features_and_target_moments(Xs: dict, Ys: dict) -> tuple[dict, dict[str, SplitStats | None]]:
    """Refuse non-finite features; the targets' moments per split (cheap) for screening.

    Returns the features as arrays and, per split, :class:`SplitStats` of the targets
    only (no feature columns), which :func:`_screen_targets` uses to drop constant or
    NaN targets before any factorization.
    """
    arrays: dict = {}
    st: dict[str, SplitStats | None] = {}
    for name in _SPLITS:
        X = Xs[name]
        if X is None:
            arrays[name], st[name] = None, None
            continue
        X = np.asarray(X)
        if not np.isfinite(X).all():
            rows, cols = np.nonzero(~np.isfinite(X))
            raise DataError("features contain NaN or Inf", where=f"X_{name}",
                            expected="finite activations",
                            got=f"{rows.size} non-finite values (first at row {rows[0]}, feature {cols[0]})",
                            fix="check the extraction of this layer (overflow, NaN weights in the checkpoint)")
        arrays[name] = X
        st[name] = stats_from_arrays(np.zeros((X.shape[0], 0)), Ys[name], where=name)
    return arrays, st


def _screen_targets(stats: dict[str, SplitStats | None]) -> tuple[np.ndarray, list[str]]:
    """Which targets can be fitted, and why the others cannot."""
    train = stats["train"]
    assert train is not None, "callers always pass train statistics"
    T = train.n_targets
    ok = np.ones(T, dtype=bool)
    msg = [""] * T
    for name in _SPLITS:
        s = stats[name]
        if s is None:
            continue
        for t in np.nonzero(s.y_nonfinite)[0]:
            if ok[t]:
                ok[t] = False
                msg[t] = f"target has {int(s.y_nonfinite[t])} NaN/Inf values in the {name} split"
    for name in ("train", "valid"):
        s = stats[name]
        assert s is not None, "callers always pass train and valid statistics"
        var = s.cyy / s.n
        const = is_constant_feature(var, s.mean_y, s.n)
        for t in np.nonzero(const & ok)[0]:
            ok[t] = False
            why = "nothing to regress" if name == "train" else "valid R² is undefined, alpha cannot be selected"
            msg[t] = f"target is constant in the {name} split (value {s.mean_y[t]:.6g}): {why}"
    return ok, msg


def _raise_if_nothing_left(ok: np.ndarray, msg: list[str]) -> None:
    if not ok.any():
        reasons = sorted(set(msg))
        raise DataError(
            "no target can be fitted",
            where="ridge targets",
            expected="at least one finite, non-constant target",
            got="; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else ""),
            fix="drop or fix these concept measures",
        )


# --------------------------------------------------------------------------- core maths


@dataclass
class _Factor:
    """``w(alpha) = basis @ (h / (lam + alpha))`` in standardized space, for every target."""

    basis: np.ndarray  # (F, r)
    lam: np.ndarray  # (r,)
    h: np.ndarray  # (r, T)
    energy: np.ndarray  # (r, T): z_k² with z = Q^T Xs^T yc (train RSS path)
    yy: np.ndarray  # (T,) centered train sum of squares
    ybar: np.ndarray  # (T,)

    def coef_eig(self, alpha_per: np.ndarray) -> np.ndarray:
        """Eigen-coordinates (r, M, T) for alphas (M,) or per-target alphas (M, T)."""
        a = alpha_per if alpha_per.ndim == 2 else alpha_per[:, None]
        return self.h[:, None, :] / (self.lam[:, None, None] + a[None, :, :])

    def train_rss_path(self, alphas: np.ndarray) -> np.ndarray:
        lam = self.lam[:, None]
        shrink = (lam + 2 * alphas[None, :]) / (lam + alphas[None, :]) ** 2  # (r, A)
        return np.maximum(self.yy[None, :] - shrink.T @ self.energy, 0.0)  # (A, T)


def _factor_gram(G: np.ndarray, XtY: np.ndarray, yy: np.ndarray, ybar: np.ndarray) -> _Factor:
    lam, Q = np.linalg.eigh(G)
    lam = np.maximum(lam, 0.0)
    z = Q.T @ XtY
    return _Factor(basis=Q, lam=lam, h=z, energy=z**2, yy=yy, ybar=ybar)


def _factor_kernel(Xs: np.ndarray, Yc: np.ndarray, yy: np.ndarray, ybar: np.ndarray) -> _Factor:
    lam, U = np.linalg.eigh(Xs @ Xs.T)
    lam = np.maximum(lam, 0.0)
    c = U.T @ Yc
    return _Factor(basis=Xs.T @ U, lam=lam, h=c, energy=c**2 * lam[:, None], yy=yy, ybar=ybar)


def _rss_arrays(Xs: np.ndarray, Y: np.ndarray, fac: _Factor, coef_eig: np.ndarray) -> np.ndarray:
    """Residual sum of squares (M, T) of every coefficient set on an in-memory split."""
    r, M, T = coef_eig.shape
    flat = coef_eig.reshape(r, M * T)
    W = fac.basis @ flat if M * T <= r else None  # cheaper to go to feature space first
    rss = np.zeros((M, T))
    for start in range(0, Xs.shape[0], _ROW_BLOCK):
        rows = Xs[start:start + _ROW_BLOCK]
        lin = rows @ W if W is not None else (rows @ fac.basis) @ flat
        pred = lin.reshape(-1, M, T) + fac.ybar
        rss += np.sum((Y[start:start + _ROW_BLOCK, None, :] - pred) ** 2, axis=0)
    return rss


def _rss_stats(s: SplitStats, std: Standardizer, fac: _Factor, coef_eig: np.ndarray) -> np.ndarray:
    """Residual sum of squares (M, T) from a split's centered moments only."""
    inv = 1.0 / std.scale
    Q = fac.basis
    d = Q.T @ ((s.mean_x - std.mean) * inv)  # (r,)
    Gv = Q.T @ (s.cxx * inv[:, None] * inv[None, :]) @ Q  # (r, r)
    hv = Q.T @ (s.cxy * inv[:, None])  # (r, T)
    r, M, T = coef_eig.shape
    offset = (s.mean_y - fac.ybar)[None, :] - np.einsum("r,rmt->mt", d, coef_eig)
    cross = np.einsum("rmt,rt->mt", coef_eig, hv)
    quad = np.einsum("rmt,rmt->mt", coef_eig, (Gv @ coef_eig.reshape(r, M * T)).reshape(r, M, T))
    return np.maximum(s.n * offset**2 + s.cyy[None, :] - 2 * cross + quad, 0.0)


def _select(r2_valid_path: np.ndarray) -> np.ndarray:
    """Index of the max valid R² per target; exact ties go to the larger alpha."""
    A = r2_valid_path.shape[0]
    return A - 1 - np.argmax(r2_valid_path[::-1], axis=0)


def _assemble(
    alphas, fac, std, ok, msg, rss_path_valid, n, chosen_scores, method, T_all, F
) -> RidgeResult:
    """Scatter the results of the usable targets back into full-width arrays."""
    A = alphas.size
    nan_t = np.full(T_all, np.nan)
    out = {k: nan_t.copy() for k in ("alpha", *(f"{m}_{s}" for m in ("r2", "mspe") for s in _SPLITS))}
    alpha_index = np.full(T_all, -1)
    coef = np.full((T_all, F), np.nan)
    direction = np.full((T_all, F), np.nan)
    intercept = nan_t.copy()
    path = {k: np.full((A, T_all), np.nan) for k in ("r2_train", "r2_valid", "mspe_train", "mspe_valid")}

    idx = chosen_scores["index"]
    alpha_index[ok] = idx
    out["alpha"][ok] = alphas[idx]
    for key, val in chosen_scores.items():
        if key in out:
            out[key][ok] = val
    w_std = np.einsum("fr,rt->tf", fac.basis, fac.coef_eig(alphas[idx][None, :])[:, 0, :])
    c, b = std.coef_to_original(w_std, fac.ybar)
    coef[ok], intercept[ok] = c, b
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        direction[ok] = np.where(norms > 0, c / norms, np.nan)
    path["r2_train"][:, ok] = r2_from_sums(chosen_scores["rss_train_path"], fac.yy[None, :])
    path["mspe_train"][:, ok] = chosen_scores["rss_train_path"] / n["train"]
    path["r2_valid"][:, ok] = chosen_scores["r2_valid_path"]
    path["mspe_valid"][:, ok] = rss_path_valid / n["valid"]
    status = np.where(ok, "ok", "failed")
    return RidgeResult(
        alphas=alphas, alpha=out["alpha"], alpha_index=alpha_index,
        r2_train=out["r2_train"], r2_valid=out["r2_valid"], r2_test=out["r2_test"],
        mspe_train=out["mspe_train"], mspe_valid=out["mspe_valid"], mspe_test=out["mspe_test"],
        coef=coef, intercept=intercept, direction=direction, path=path, status=status,
        message=msg, method=method, n_train=n["train"], n_valid=n["valid"], n_test=n["test"],
    )


# --------------------------------------------------------------------------- public API


def fit_ridge_path(
    train: SplitStats,
    valid: SplitStats,
    alphas: Sequence[float],
    test: SplitStats | None = None,
) -> RidgeResult:
    """Ridge path for every target from the sufficient statistics of each split.

    This is the streaming form: the statistics come from
    :class:`~analyze.solvers.standardize.GramAccumulator` (or
    :func:`~analyze.solvers.standardize.merge_stats` over a Dask reduction), so no split
    needs to fit in memory. Peak memory ``O(F² + F·T·A)``; the train Gram is
    eigendecomposed once (``O(F³)``).

    Parameters
    ----------
    train, valid : SplitStats
        Statistics of the train and validation rows (see module doc for failures).
    alphas : sequence of float
        Penalties (> 0), same meaning as ``sklearn.linear_model.Ridge(alpha)`` on
        standardized features.
    test : SplitStats, optional
        Held-out rows scored at the chosen alpha.

    Returns
    -------
    RidgeResult
    """
    grid = check_alphas(alphas)
    stats = _check_split_stats(train, valid, test)
    std = Standardizer.from_stats(train)
    ok, msg = _screen_targets(stats)
    _raise_if_nothing_left(ok, msg)
    inv = 1.0 / std.scale
    G = train.cxx * inv[:, None] * inv[None, :]
    fac = _factor_gram(G, train.cxy[:, ok] * inv[:, None], train.cyy[ok], train.mean_y[ok])
    sub = {k: _subset_targets(s, ok) for k, s in stats.items()}
    n = {k: (0 if s is None else s.n) for k, s in stats.items()}

    def rss(split, coef_eig):
        return _rss_stats(sub[split], std, fac, coef_eig)

    return _solve(grid, fac, std, ok, msg, n, rss, sub, "gram-streaming", train.n_features)


def _subset_targets(s: SplitStats | None, ok: np.ndarray) -> SplitStats | None:
    if s is None:
        return None
    return SplitStats(s.n, s.mean_x, s.mean_y[ok], s.cxx, s.cxy[:, ok], s.cyy[ok], s.y_nonfinite[ok])


def _solve(alphas, fac, std, ok, msg, n, rss, sub, method, F) -> RidgeResult:
    """Score the whole path on valid, select, then score the chosen alphas everywhere."""
    rss_valid = rss("valid", fac.coef_eig(alphas))  # (A, T)
    r2_valid_path = r2_from_sums(rss_valid, sub["valid"].cyy[None, :])
    idx = _select(r2_valid_path)
    chosen = fac.coef_eig(alphas[idx][None, :])  # (r, 1, T)
    scores = {"index": idx, "r2_valid_path": r2_valid_path,
              "rss_train_path": fac.train_rss_path(alphas)}
    for split in _SPLITS:
        if sub[split] is None:
            continue
        res = rss(split, chosen)[0]
        scores[f"r2_{split}"] = r2_from_sums(res, sub[split].cyy)
        scores[f"mspe_{split}"] = res / n[split]
    return _assemble(alphas, fac, std, ok, msg, rss_valid, n, scores, method, ok.size, F)


def fit_rcv_block(
    X_train, Y_train, X_valid, Y_valid, X_test=None, Y_test=None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    chunk_rows: int | None = None,
) -> RidgeResult:
    """Fit, select and score ridge probes for every target of one block.

    Parameters
    ----------
    X_train, X_valid, X_test : array-like (n_split, F)
        Features (float32 or float64; numpy, or with ``chunk_rows`` anything sliceable
        by rows such as zarr / h5py arrays). ``X_test`` may be None.
    Y_train, Y_valid, Y_test : array-like (n_split,) or (n_split, T)
        Targets (concept measures).
    alphas : sequence of float
        Ridge penalties, ``sklearn.linear_model.Ridge`` convention on standardized
        features.
    chunk_rows : int, optional
        If given, read every split ``chunk_rows`` rows at a time and fit from
        sufficient statistics (:func:`fit_ridge_path`): memory ``O(F² + F·T·A)`` plus
        one chunk. Otherwise the arrays are used directly (float64 copies of each split).

    Returns
    -------
    RidgeResult
        Per-target chosen alpha, R²/MSPE on each split, raw-feature ``coef`` and
        ``intercept``, unit-norm ``direction``, per-target ``status``/``message``.

    Raises
    ------
    DataError
        NaN/Inf features, an empty split, or no usable target.
    ConfigError
        An invalid alpha grid.
    """
    X_train, Y_train = _check_split(X_train, Y_train, "train", None, None)
    F = X_train.shape[1]
    T = 1 if len(Y_train.shape) == 1 else Y_train.shape[1]
    X_valid, Y_valid = _check_split(X_valid, Y_valid, "valid", F, T)
    X_test, Y_test = _check_split(X_test, Y_test, "test", F, T)
    if chunk_rows is not None:
        if int(chunk_rows) < 1:
            raise ConfigError("chunk_rows must be positive", where="chunk_rows",
                              expected="an integer >= 1 or None", got=chunk_rows)
        st = {name: (None if X is None else stats_from_arrays(X, Y, chunk_rows=chunk_rows, where=name))
              for name, X, Y in zip(_SPLITS, (X_train, X_valid, X_test), (Y_train, Y_valid, Y_test))}
        st_train, st_valid = st["train"], st["valid"]
        assert st_train is not None and st_valid is not None, "_check_split requires train and valid"
        return fit_ridge_path(st_train, st_valid, alphas, st["test"])

    grid = check_alphas(alphas)
    Xs_raw = {"train": X_train, "valid": X_valid, "test": X_test}
    Ys_raw = {"train": Y_train, "valid": Y_valid, "test": Y_test}
    Xs_raw, st = _finite_features_and_target_moments(Xs_raw, Ys_raw)
    std = Standardizer.fit(X_train)
    ok, msg = _screen_targets(st)
    _raise_if_nothing_left(ok, msg)

    Xs = {k: (None if v is None else std.transform(v)) for k, v in Xs_raw.items()}
    Ys = {k: (None if v is None else np.asarray(v, dtype=np.float64).reshape(v.shape[0], -1)[:, ok])
          for k, v in Ys_raw.items()}
    X_tr, Y_tr = Xs["train"], Ys["train"]
    assert X_tr is not None and Y_tr is not None, "_check_split requires the train split"
    ybar = Y_tr.mean(axis=0)
    Yc = Y_tr - ybar
    yy = np.einsum("ij,ij->j", Yc, Yc)
    n_train = X_tr.shape[0]
    if n_train > F:
        fac = _factor_gram(X_tr.T @ X_tr, X_tr.T @ Yc, yy, ybar)
        method = "gram"
    else:
        fac = _factor_kernel(X_tr, Yc, yy, ybar)
        method = "kernel"
    sub = {k: (None if s is None else _subset_targets(s, ok)) for k, s in st.items()}
    n = {k: (0 if v is None else v.shape[0]) for k, v in Xs.items()}

    def rss(split, coef_eig):
        return _rss_arrays(Xs[split], Ys[split], fac, coef_eig)

    return _solve(grid, fac, std, ok, msg, n, rss, sub, method, F)


# --------------------------------------------------------------------------- ordinary least squares
#
# Graziani et al. fit their RCVs by ordinary least squares (``maragraziani/rcvtool``,
# ``rcv.py``: ``statsmodels.OLS`` on ``add_constant(acts)``, R² and MSE on a held-out
# 30%). OLS has no penalty to select, so ``valid`` is just another held-out split here.
# When F >= n_train the least-squares solution is not unique; we return the
# minimum-norm one (numpy's ``lstsq``, scikit-learn's ``LinearRegression``): the
# pseudo-inverse of the *centered raw* features, so the intercept is not part of the norm
# (statsmodels' ``pinv`` of ``[1, X]`` puts it in; see docs/science.md §5).

#: Streamed OLS refuses a standardized train Gram whose condition number exceeds this:
#: its eigenvalues are then too inaccurate (relative error ~eps·cond) to give the
#: exact least-squares solution, which only an SVD of the rows can.
OLS_GRAM_MAX_COND = 1e10


def _ols_rcond(n: int, F: int) -> float:
    """numpy ``lstsq``'s default cut-off: singular values below ``eps·max(n, F)·s_max`` are 0."""
    return float(np.finfo(np.float64).eps * max(n, F))


def _ols_result(coef, intercept, ok, msg, scores, n, method, T_all, F) -> RidgeResult:
    """A :class:`RidgeResult` with no penalty: ``alphas = [0]``, every target at index 0."""
    nan_t = np.full(T_all, np.nan)
    out = {f"{m}_{s}": nan_t.copy() for m in ("r2", "mspe") for s in _SPLITS}
    for key, val in scores.items():
        out[key][ok] = val
    full_coef = np.full((T_all, F), np.nan)
    full_coef[ok] = coef
    full_b = nan_t.copy()
    full_b[ok] = intercept
    direction = np.full((T_all, F), np.nan)
    norms = np.linalg.norm(coef, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        direction[ok] = np.where(norms > 0, coef / norms, np.nan)
    alpha = np.where(ok, 0.0, np.nan)
    path = {"r2_train": out["r2_train"][None, :].copy(), "r2_valid": out["r2_valid"][None, :].copy(),
            "mspe_train": out["mspe_train"][None, :].copy(), "mspe_valid": out["mspe_valid"][None, :].copy()}
    return RidgeResult(
        alphas=np.zeros(1), alpha=alpha, alpha_index=np.where(ok, 0, -1),
        r2_train=out["r2_train"], r2_valid=out["r2_valid"], r2_test=out["r2_test"],
        mspe_train=out["mspe_train"], mspe_valid=out["mspe_valid"], mspe_test=out["mspe_test"],
        coef=full_coef, intercept=full_b, direction=direction, path=path,
        status=np.where(ok, "ok", "failed"), message=msg, method=method,
        n_train=n["train"], n_valid=n["valid"], n_test=n["test"],
    )


def _rank_note(rank: int, n_train: int, F: int) -> str:
    """Row message of a rank-deficient fit (empty when the solution is unique)."""
    if rank >= F:
        return ""
    why = f"F = {F} >= n_train = {n_train}" if F >= n_train else "collinear or constant features"
    return (f"minimum-norm least squares: rank {rank} < {F} features ({why}); "
            "the solution is not unique and the train fit may interpolate")


def fit_ols_block(X_train, Y_train, X_valid, Y_valid, X_test=None, Y_test=None) -> RidgeResult:
    """Ordinary least-squares RCVs (with intercept) of every target of one block.

    The authors' RCV (Graziani et al. 2019, ``rcvtool``): no penalty, so nothing is
    selected on valid; R² and MSPE are reported on every split exactly as for the ridge
    RCVs. Solved by one SVD of the centered raw train features (float64), shared by every
    target: ``coef = V diag(1/s) Uᵀ (y - ȳ)`` over the singular values above numpy's
    ``lstsq`` cut-off, ``intercept = ȳ - x̄·coef``. That equals
    ``sklearn.linear_model.LinearRegression()`` when F < n_train, and is the
    minimum-norm solution (``numpy.linalg.lstsq`` on centered data) when F >= n_train or
    features are collinear; constant features get coefficient 0.

    Parameters
    ----------
    X_train, X_valid, X_test : array-like (n_split, F)
    Y_train, Y_valid, Y_test : array-like (n_split,) or (n_split, T)
        As :func:`fit_rcv_block`; ``X_test`` may be None.

    Returns
    -------
    RidgeResult
        ``alphas = [0]`` and ``alpha = 0`` (no penalty); ``method = "ols-svd"``; the
        message of every target notes a rank-deficient (minimum-norm) solution.

    Raises
    ------
    DataError
        NaN/Inf features, an empty split, or no usable target.
    """
    X_train, Y_train = _check_split(X_train, Y_train, "train", None, None)
    F = X_train.shape[1]
    T = 1 if len(Y_train.shape) == 1 else Y_train.shape[1]
    X_valid, Y_valid = _check_split(X_valid, Y_valid, "valid", F, T)
    X_test, Y_test = _check_split(X_test, Y_test, "test", F, T)
    Xs = {"train": X_train, "valid": X_valid, "test": X_test}
    Ys_raw = {"train": Y_train, "valid": Y_valid, "test": Y_test}
    Xs, st = _finite_features_and_target_moments(Xs, Ys_raw)
    ok, msg = _screen_targets(st)
    _raise_if_nothing_left(ok, msg)
    Ys = {k: (None if v is None else np.asarray(v, dtype=np.float64).reshape(v.shape[0], -1)[:, ok])
          for k, v in Ys_raw.items()}
    Xc = np.array(Xs["train"], dtype=np.float64)  # one float64 copy, centred in place
    Ytr = Ys["train"]
    assert Ytr is not None, "_check_split requires the train split"
    x_mean = Xc.mean(axis=0)
    ybar = Ytr.mean(axis=0)
    Xc -= x_mean
    # Constant features are exactly 0 once centered (not rounding noise the SVD would spread).
    const = is_constant_feature(np.mean(Xc**2, axis=0), x_mean, Xc.shape[0])
    Xc[:, const] = 0.0
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    keep = s > _ols_rcond(*Xc.shape) * (s[0] if s.size else 0.0)
    rank = int(keep.sum())
    coef = (Vt[keep].T @ ((U[:, keep].T @ (Ytr - ybar)) / s[keep][:, None])).T  # (T_ok, F)
    coef[:, const] = 0.0
    del U, Xc
    intercept = ybar - coef @ x_mean
    scores, n = {}, {}
    for name in _SPLITS:
        X, Y = Xs[name], Ys[name]
        n[name] = 0 if X is None else X.shape[0]
        if X is None or Y is None:
            continue
        rss = np.zeros(Y.shape[1])
        for start in range(0, X.shape[0], _ROW_BLOCK):
            rows = np.asarray(X[start:start + _ROW_BLOCK], dtype=np.float64)
            rss += np.sum((Y[start:start + _ROW_BLOCK] - (rows @ coef.T + intercept)) ** 2, axis=0)
        yc = Y - Y.mean(axis=0)
        scores[f"r2_{name}"] = r2_from_sums(rss, np.einsum("ij,ij->j", yc, yc))
        scores[f"mspe_{name}"] = rss / n[name]
    note = _rank_note(rank, n["train"], F)
    msg = [m if not good else note for m, good in zip(msg, ok)]
    return _ols_result(coef, intercept, ok, msg, scores, n, "ols-svd", ok.size, F)


def fit_ols_stats(train: SplitStats, valid: SplitStats, test: SplitStats | None = None) -> RidgeResult:
    """Ordinary least squares from the sufficient statistics of each split (streamed blocks).

    The normal equations in the train-standardized space, ``G w = Xsᵀ yc`` with ``G``
    eigendecomposed once for every target. A Gram squares the condition number of the
    rows, so this is exact only when ``G`` is well conditioned: the least-squares
    solution is then unique and equal to :func:`fit_ols_block`'s. When the standardized
    Gram of the non-constant features has a condition number above
    :data:`OLS_GRAM_MAX_COND` (always when F >= n_train: the rank is at most
    n_train - 1) no statistic of the rows can give the minimum-norm solution, so the
    block is refused rather than answered approximately.

    Raises
    ------
    DataError
        An empty split, no usable target, or an ill-conditioned Gram (the message says
        how to read the block in memory instead).
    """
    stats = _check_split_stats(train, valid, test)
    F = train.n_features
    std = Standardizer.from_stats(train)
    ok, msg = _screen_targets(stats)
    _raise_if_nothing_left(ok, msg)
    live = ~is_constant_feature(np.diag(train.cxx) / train.n, train.mean_x, train.n)
    inv = 1.0 / std.scale
    G = (train.cxx * inv[:, None] * inv[None, :])[np.ix_(live, live)]
    lam, Q = np.linalg.eigh(G) if G.size else (np.ones(0), np.zeros((0, 0)))
    cond = float(lam[-1] / lam[0]) if lam.size and lam[0] > 0 else float("inf")
    if lam.size and cond > OLS_GRAM_MAX_COND:
        rank_bound = min(int(live.sum()), train.n - 1)
        raise DataError(
            "ordinary least squares cannot be solved exactly from streamed statistics",
            where="rcv_ols (streamed block)",
            expected=f"a standardized train Gram with condition number <= {OLS_GRAM_MAX_COND:g}",
            got=f"condition number {cond:.3g} ({int(live.sum())} non-constant features, "
                f"{train.n} train rows, rank <= {rank_bound})",
            fix="let the block be read whole (raise --max-block-bytes above its size), so OLS uses "
                "the SVD of its rows, or use the ridge RCV (probe 'rcv')")
    w_std = np.zeros((F, int(ok.sum())))
    if lam.size:
        w_std[live] = Q @ ((Q.T @ (train.cxy[live][:, ok] * inv[live, None])) / lam[:, None])
    coef, intercept = std.coef_to_original(w_std.T, train.mean_y[ok])
    scores, n = {}, {}
    for name, s in stats.items():
        n[name] = 0 if s is None else s.n
        if s is None:
            continue
        sub = _subset_targets(s, ok)
        assert sub is not None
        # RSS from centered moments: n·(offset)² + cyy - 2 wᵀcxy + wᵀ cxx w (raw space).
        offset = sub.mean_y - (sub.mean_x @ coef.T + intercept)
        quad = np.einsum("tf,tf->t", coef @ sub.cxx, coef)
        cross = np.einsum("ft,tf->t", sub.cxy, coef)
        rss = np.maximum(sub.n * offset**2 + sub.cyy - 2 * cross + quad, 0.0)
        scores[f"r2_{name}"] = r2_from_sums(rss, sub.cyy)
        scores[f"mspe_{name}"] = rss / sub.n
    note = "" if live.all() else f"{F - int(live.sum())} constant feature(s) get coefficient 0"
    msg = [m if not good else note for m, good in zip(msg, ok)]
    return _ols_result(coef, intercept, ok, msg, scores, n, "ols-gram-streaming", ok.size, F)
