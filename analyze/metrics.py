"""Probe scores, defined once so that every solver, estimator and report agrees.

Definitions (all per split, computed in float64):

- **top-k error**: fraction of samples whose true class is not among the ``k`` highest
  scores. Ties are broken towards the lower class index, the same rule as
  ``np.argmax``, so ``top_k_error(s, y, 1)`` equals ``mean(argmax(s) != y)`` and the
  classifier's ``predict``. Logits and probabilities give the same ranks.
- **cross-entropy**: mean over samples of ``-log softmax(logits)[y]`` (natural log),
  from a numerically stable log-softmax. Each sample's loss is capped at
  ``-log(eps64) ~= 36.04``, the value at which ``sklearn.metrics.log_loss`` clips
  probabilities, so a class the probe never predicts (its logit is ``-inf``) gives a
  finite score equal to scikit-learn's with ``labels=range(K)``.
- **R²** per target column, like ``sklearn.metrics.r2_score`` with
  ``multioutput="raw_values"``: ``1 - SS_res / SS_tot`` with ``SS_tot`` taken about the
  mean of ``y`` *in the split being scored*. A target that is constant in that split
  has no R²: NaN (scikit-learn would return 0 or 1; a probe report should not).
- **MSPE** (Graziani et al.'s mean squared prediction error) per target column: the
  mean of ``(y - yhat)²``, equal to ``sklearn.metrics.mean_squared_error``.

The ``*_from_sums`` helpers score from sufficient statistics so that the streaming ridge
path never needs the rows of a split in memory.
"""

from __future__ import annotations

import numpy as np

from probestore.errors import DataError

#: Per-sample cross-entropy cap: ``-log(float64 eps)``, where scikit-learn clips.
CE_CAP = float(-np.log(np.finfo(np.float64).eps))


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def _check_labels(scores: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    y = np.asarray(y)
    if scores.ndim != 2 or y.ndim != 1 or scores.shape[0] != y.shape[0]:
        raise DataError(
            "scores and labels do not line up",
            where=where,
            expected="scores of shape (n, K) and labels of shape (n,)",
            got=f"scores {scores.shape}, labels {y.shape}",
        )
    if y.size and (y.min() < 0 or y.max() >= scores.shape[1]):
        raise DataError(
            "label outside the score columns",
            where=where,
            expected=f"integer labels in [0, {scores.shape[1]})",
            got=f"labels in [{y.min()}, {y.max()}]",
            fix="map labels to 0..K-1 first",
        )
    return scores, y.astype(np.intp, copy=False)


def top_k_error(proba_or_logits: np.ndarray, y: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is not among the ``k`` best scores.

    Parameters
    ----------
    proba_or_logits : ndarray of shape (n, K)
        Class scores; any monotone transform (logits, probabilities) gives the same result.
    y : ndarray of shape (n,)
        True class indices in ``[0, K)``.
    k : int
        How many top classes count as a hit (1 = ordinary error rate).

    Returns
    -------
    float
        Error in ``[0, 1]``; NaN for an empty split.
    """
    scores, y = _check_labels(proba_or_logits, y, "top_k_error")
    if y.size == 0:
        return float("nan")
    true = np.take_along_axis(scores, y[:, None], axis=1)
    # Rank of the true class with ties going to the lower index (np.argmax's rule).
    cols = np.arange(scores.shape[1])[None, :]
    above = (scores > true) | ((scores == true) & (cols < y[:, None]))
    return float(np.mean(above.sum(axis=1) >= k))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax`` in float64, stable for large and ``-inf`` logits."""
    z = np.asarray(logits, dtype=np.float64)
    zmax = np.max(z, axis=1, keepdims=True)
    zmax = np.where(np.isfinite(zmax), zmax, 0.0)
    shifted = z - zmax
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Mean multinomial log loss of softmax(logits), capped per sample at :data:`CE_CAP`.

    Parameters
    ----------
    logits : ndarray of shape (n, n_classes)
        Unnormalised class scores (``-inf`` allowed for a class the probe excludes).
    y : ndarray of shape (n,)
        True class indices.
    n_classes : int
        K; checked against ``logits`` so that a probe fitted on fewer classes is not
        silently scored as if it had all of them.

    Returns
    -------
    float
        Mean loss in nats, equal to ``sklearn.metrics.log_loss(y, softmax(logits),
        labels=range(K))``; NaN for an empty split.
    """
    logits, y = _check_labels(logits, y, "cross_entropy")
    if logits.shape[1] != n_classes:
        raise DataError(
            "logits have the wrong number of classes",
            where="cross_entropy",
            expected=f"{n_classes} columns",
            got=f"{logits.shape[1]} columns",
        )
    if y.size == 0:
        return float("nan")
    lp = np.take_along_axis(log_softmax(logits), y[:, None], axis=1)[:, 0]
    return float(np.mean(np.minimum(-lp, CE_CAP)))


def r2(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """Coefficient of determination per target column (NaN where ``y`` is constant).

    Parameters
    ----------
    y, yhat : ndarray of shape (n,) or (n, T)
        Observed and predicted targets.

    Returns
    -------
    ndarray of shape (T,)
    """
    y2, yhat2 = _as_2d(y), _as_2d(yhat)
    ss_res = np.sum((y2 - yhat2) ** 2, axis=0)
    ss_tot = np.sum((y2 - y2.mean(axis=0)) ** 2, axis=0)
    return r2_from_sums(ss_res, ss_tot)


def mspe(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """Mean squared prediction error per target column.

    Parameters
    ----------
    y, yhat : ndarray of shape (n,) or (n, T)

    Returns
    -------
    ndarray of shape (T,)
    """
    y2, yhat2 = _as_2d(y), _as_2d(yhat)
    if y2.shape[0] == 0:
        return np.full(y2.shape[1], np.nan)
    return np.mean((y2 - yhat2) ** 2, axis=0)


def r2_from_sums(ss_res: np.ndarray, ss_tot: np.ndarray) -> np.ndarray:
    """``1 - ss_res / ss_tot`` with NaN where ``ss_tot`` is zero (a constant target)."""
    ss_res = np.asarray(ss_res, dtype=np.float64)
    ss_tot = np.asarray(ss_tot, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 - ss_res / ss_tot
    return np.where(ss_tot > 0, out, np.nan)
