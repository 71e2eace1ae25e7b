"""Train-split standardization and the streaming sufficient statistics of one split.

Probes are fitted on standardized features (zero mean, unit variance on the TRAIN
split), so that one penalty value means the same thing for every layer and the
coefficients of features with different units are comparable. Valid and test rows are
transformed with the train statistics: using their own would leak information.

:class:`Standardizer` matches ``sklearn.preprocessing.StandardScaler``: population
standard deviation (``ddof=0``), statistics accumulated in float64, and near-constant
features (variance within the rounding error of a two-pass computation, scikit-learn's
``_is_constant_feature`` rule) get scale 1, so a constant feature becomes 0.

:class:`GramAccumulator` reads one split in row chunks and keeps only centered moments
(``n``, feature and target means, ``Xc^T Xc``, ``Xc^T Yc`` and the per-target ``Yc^T Yc``
diagonal) in float64: ridge then runs on blocks larger than memory with peak memory
``O(F² + F·T)`` plus one chunk. Each chunk is centered on its own mean (two-pass) and
merged with Chan, Golub & LeVeque's pairwise update, which keeps a constant feature's
variance exactly 0 and avoids the cancellation of ``sum(x²) - n·mean²``.
:func:`merge_stats` is the same update, for engines that reduce chunk statistics in a tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probestore.errors import DataError

_EPS64 = np.finfo(np.float64).eps
#: Rows per chunk of the float64 temporaries of :meth:`Standardizer.fit` / ``transform``:
#: at paper scale (50,000 × 1,000) a whole-split float64 copy is 400 MB a time.
_ROWS = 4096


def is_constant_feature(var: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
    """True where a variance is indistinguishable from 0 (scikit-learn's bound).

    Parameters
    ----------
    var, mean : ndarray of shape (F,)
        Population variance and mean, float64.
    n : int
        Number of rows they were computed from.

    Returns
    -------
    ndarray of bool, shape (F,)
    """
    bound = n * _EPS64 * var + (n * mean * _EPS64) ** 2
    return var <= bound


@dataclass(frozen=True)
class Standardizer:
    """Train-split mean and scale; ``transform`` maps any split into that space.

    Attributes
    ----------
    mean : ndarray of shape (F,)
        Train mean (float64).
    scale : ndarray of shape (F,)
        Train population standard deviation, 1 where the feature is constant.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        """Statistics of ``X`` (the train split) in float64, two-pass."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0:
            raise DataError(
                "cannot standardize an empty or non-2-D train split",
                where="Standardizer.fit",
                expected="an array of shape (n >= 1, F)",
                got=f"shape {X.shape}",
            )
        mean = X.mean(axis=0, dtype=np.float64)
        if X.dtype == np.float64 or X.shape[0] <= _ROWS:
            var = np.mean((X.astype(np.float64, copy=False) - mean) ** 2, axis=0)
        else:  # float64 temporaries one row chunk at a time, not two copies of the split
            ssq = np.zeros(X.shape[1])
            for start in range(0, X.shape[0], _ROWS):
                ssq += ((X[start:start + _ROWS].astype(np.float64) - mean) ** 2).sum(axis=0)
            var = ssq / X.shape[0]
        return cls.from_moments(mean, var, X.shape[0])

    @classmethod
    def from_moments(cls, mean: np.ndarray, var: np.ndarray, n: int) -> Standardizer:
        """Build from a mean and population variance (e.g. from :class:`SplitStats`)."""
        mean = np.asarray(mean, dtype=np.float64)
        var = np.maximum(np.asarray(var, dtype=np.float64), 0.0)
        scale = np.sqrt(var)
        scale[is_constant_feature(var, mean, n)] = 1.0
        return cls(mean=mean, scale=scale)

    @classmethod
    def from_stats(cls, stats: SplitStats) -> Standardizer:
        """Build from the streaming statistics of the train split."""
        return cls.from_moments(stats.mean_x, np.diag(stats.cxx) / stats.n, stats.n)

    @property
    def constant(self) -> np.ndarray:
        """Boolean mask of the features treated as constant (scale set to 1)."""
        return self.scale == 1.0

    def transform(self, X: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
        """``(X - mean) / scale`` as ``dtype`` (default: float64)."""
        dtype = np.float64 if dtype is None else dtype
        X = np.asarray(X)
        out = np.empty(X.shape, dtype=dtype)
        for start in range(0, X.shape[0], _ROWS):  # the float64 temporary is one row chunk
            out[start:start + _ROWS] = (np.asarray(X[start:start + _ROWS], dtype=np.float64) - self.mean) / self.scale
        return out

    def coef_to_original(
        self, coef_std: np.ndarray, intercept_std: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map ``(coef, intercept)`` fitted on standardized features back to raw features.

        Parameters
        ----------
        coef_std : ndarray of shape (..., F)
        intercept_std : ndarray of shape (...)

        Returns
        -------
        coef, intercept
            Such that ``X @ coef.T + intercept`` equals the standardized-space prediction.
        """
        coef = np.asarray(coef_std, dtype=np.float64) / self.scale
        intercept = np.asarray(intercept_std, dtype=np.float64) - coef @ self.mean
        return coef, intercept

    def coef_to_standardized(
        self, coef: np.ndarray, intercept: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`coef_to_original` (used to warm-start from a previous block)."""
        coef = np.asarray(coef, dtype=np.float64)
        intercept_std = np.asarray(intercept, dtype=np.float64) + coef @ self.mean
        return coef * self.scale, intercept_std


@dataclass(frozen=True)
class SplitStats:
    """Centered second moments of one split: everything ridge needs from its rows.

    Attributes
    ----------
    n : int
        Rows.
    mean_x : ndarray (F,)
    mean_y : ndarray (T,)
    cxx : ndarray (F, F)
        ``sum_i (x_i - mean_x)(x_i - mean_x)^T``.
    cxy : ndarray (F, T)
        ``sum_i (x_i - mean_x)(y_i - mean_y)^T``.
    cyy : ndarray (T,)
        ``sum_i (y_i - mean_y)²`` per target (the diagonal only: targets are scored
        one by one, their cross-products are never needed).
    y_nonfinite : ndarray of int (T,)
        Rows whose target is NaN/Inf; those targets' other fields are meaningless.
    """

    n: int
    mean_x: np.ndarray
    mean_y: np.ndarray
    cxx: np.ndarray
    cxy: np.ndarray
    cyy: np.ndarray
    y_nonfinite: np.ndarray

    @property
    def n_features(self) -> int:
        return self.mean_x.shape[0]

    @property
    def n_targets(self) -> int:
        return self.mean_y.shape[0]


def chunk_stats(X: np.ndarray, Y: np.ndarray, *, where: str = "chunk") -> SplitStats:
    """Centered moments of one in-memory chunk (two-pass, float64).

    Parameters
    ----------
    X : ndarray (n, F)
        Features; NaN/Inf raise :class:`DataError` (a feature problem fails the block).
    Y : ndarray (n, T)
        Targets; NaN/Inf are counted per target in ``y_nonfinite`` instead (only that
        target fails).
    where : str
        Named in error messages (e.g. ``"valid rows 370:407"``).
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise DataError(
            "features and targets do not line up",
            where=where,
            expected="X (n, F) and Y (n, T) with the same n",
            got=f"X {X.shape}, Y {Y.shape}",
        )
    bad_x = ~np.isfinite(X)
    if bad_x.any():
        rows, cols = np.nonzero(bad_x)
        raise DataError(
            "features contain NaN or Inf",
            where=where,
            expected="finite activations",
            got=f"{bad_x.sum()} non-finite values (first at row {rows[0]}, feature {cols[0]})",
            fix="check the extraction of this layer (overflow, NaN weights in the checkpoint)",
        )
    bad_y = ~np.isfinite(Y)
    y_nonfinite = bad_y.sum(axis=0)
    Y = np.where(bad_y, 0.0, Y)
    n = X.shape[0]
    if n == 0:
        F, T = X.shape[1], Y.shape[1]
        return SplitStats(0, np.zeros(F), np.zeros(T), np.zeros((F, F)), np.zeros((F, T)),
                          np.zeros(T), y_nonfinite)
    mean_x = X.mean(axis=0)
    mean_y = Y.mean(axis=0)
    Xc = X - mean_x
    Yc = Y - mean_y
    return SplitStats(
        n=n,
        mean_x=mean_x,
        mean_y=mean_y,
        cxx=Xc.T @ Xc,
        cxy=Xc.T @ Yc,
        cyy=np.einsum("ij,ij->j", Yc, Yc),
        y_nonfinite=y_nonfinite,
    )


def merge_stats(a: SplitStats, b: SplitStats) -> SplitStats:
    """Statistics of the concatenation of two disjoint row sets (Chan et al. 1979).

    Associative and exact in exact arithmetic, so chunks may be merged in any tree.
    """
    if a.n == 0:
        return SplitStats(b.n, b.mean_x, b.mean_y, b.cxx, b.cxy, b.cyy,
                          a.y_nonfinite + b.y_nonfinite)
    if b.n == 0:
        return SplitStats(a.n, a.mean_x, a.mean_y, a.cxx, a.cxy, a.cyy,
                          a.y_nonfinite + b.y_nonfinite)
    n = a.n + b.n
    dx = b.mean_x - a.mean_x
    dy = b.mean_y - a.mean_y
    w = a.n * b.n / n
    return SplitStats(
        n=n,
        mean_x=a.mean_x + dx * (b.n / n),
        mean_y=a.mean_y + dy * (b.n / n),
        cxx=a.cxx + b.cxx + w * np.outer(dx, dx),
        cxy=a.cxy + b.cxy + w * np.outer(dx, dy),
        cyy=a.cyy + b.cyy + w * dy * dy,
        y_nonfinite=a.y_nonfinite + b.y_nonfinite,
    )


class GramAccumulator:
    """Accumulate :class:`SplitStats` of one split over row chunks.

    Peak memory is ``O(F² + F·T)`` float64 for the moments plus one chunk (cast to
    float64), whatever the number of rows.

    Parameters
    ----------
    n_features, n_targets : int

    Examples
    --------
    >>> acc = GramAccumulator(3, 2)
    >>> for start in range(0, 100, 37):
    ...     acc.update(X[start:start + 37], Y[start:start + 37])   # doctest: +SKIP
    >>> stats = acc.stats()                                       # doctest: +SKIP
    """

    def __init__(self, n_features: int, n_targets: int) -> None:
        self.n_features = int(n_features)
        self.n_targets = int(n_targets)
        F, T = self.n_features, self.n_targets
        self._stats = SplitStats(0, np.zeros(F), np.zeros(T), np.zeros((F, F)),
                                 np.zeros((F, T)), np.zeros(T), np.zeros(T, dtype=np.int64))

    def update(self, X: np.ndarray, Y: np.ndarray, *, where: str = "chunk") -> GramAccumulator:
        """Add the rows of one chunk; returns ``self`` for chaining."""
        Y = np.asarray(Y)
        if Y.ndim == 1:
            Y = Y[:, None]
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features or Y.shape[1] != self.n_targets:
            raise DataError(
                "chunk has the wrong width",
                where=where,
                expected=f"X (n, {self.n_features}) and Y (n, {self.n_targets})",
                got=f"X {X.shape}, Y {Y.shape}",
            )
        self._stats = merge_stats(self._stats, chunk_stats(X, Y, where=where))
        return self

    def stats(self) -> SplitStats:
        """The statistics of every row added so far."""
        return self._stats


def stats_from_arrays(
    X, Y, *, chunk_rows: int | None = None, where: str = "split"
) -> SplitStats:
    """Sufficient statistics of a split, reading ``chunk_rows`` rows at a time.

    ``X`` and ``Y`` may be anything sliceable by rows (numpy, memmap, zarr, h5py).
    """
    n = X.shape[0]
    step = n if not chunk_rows else int(chunk_rows)
    T = 1 if len(Y.shape) == 1 else Y.shape[1]
    acc = GramAccumulator(X.shape[1], T)
    for start in range(0, max(n, 1), max(step, 1)):
        stop = min(start + step, n)
        acc.update(X[start:stop], Y[start:stop], where=f"{where} rows {start}:{stop}")
    return acc.stats()
