"""Label corruption for N-memorizing networks (Zhang et al. 2017; Graziani et al. 2019).

An *N-memorizing* network is trained on data where a fraction N of the training labels
was replaced by noise: it can only fit those samples by memorizing them, which is what
the probes then look for in its layers. Only the *train* split is touched, so that
validation and test accuracy (against true labels) still measure generalization.

Two ways to draw the noise, both seeded:

- ``"uniform"`` (Zhang et al.): each chosen sample gets a class drawn uniformly from
  all ``n_classes`` classes, so about ``1 / n_classes`` of them keep their true label
  by chance, and class counts drift.
- ``"shuffle"`` (the Graziani et al. code): the labels of the chosen subset are
  permuted among themselves, so class counts are preserved exactly; samples whose
  permuted label happens to equal the true one are not corrupted either.

Either way the returned ``corrupted`` mask marks the samples whose training label
differs from the true one (the ones that must be memorized), and it can therefore be
*smaller* than the chosen subset.
"""

from __future__ import annotations

import numpy as np

from probestore.errors import ConfigError, DataError, did_you_mean
from probestore.experiment.runs import CORRUPTION_MODES
from probestore.fields import check_range, check_type

__all__ = ["corrupt_labels"]

_TRAIN = 0  # code of "train" in extract.splits.SPLIT_NAMES


def corrupt_labels(
    labels: np.ndarray,
    splits: np.ndarray,
    fraction: float,
    n_classes: int,
    mode: str = "uniform",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a seeded fraction of the training labels.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (n,)
        True labels in ``[0, n_classes)``.
    splits : numpy.ndarray of int8, shape (n,)
        Split codes from :func:`extract.splits.assign_splits`; only code 0 (train)
        samples can be corrupted.
    fraction : float
        In [0, 1]; ``round(fraction * n_train)`` train samples are chosen.
    n_classes : int
        Number of classes to draw from (``"uniform"``).
    mode : {"uniform", "shuffle"}
    seed : int

    Returns
    -------
    train_labels : numpy.ndarray of int64, shape (n,)
        Labels to train on; equal to ``labels`` outside the train split.
    corrupted : numpy.ndarray of bool, shape (n,)
        ``train_labels != labels``.

    Raises
    ------
    ConfigError
        ``fraction`` outside [0, 1], unknown ``mode``, ``n_classes`` < 2.
    DataError
        Arrays of different lengths, or labels outside ``[0, n_classes)``.
    """
    check_type(fraction, (int, float), where="corruption.fraction")
    check_range(fraction, low=0, high=1, where="corruption.fraction")
    check_type(mode, str, where="corruption.mode")
    if mode not in CORRUPTION_MODES:
        raise ConfigError("unknown corruption mode", where="corruption.mode",
                          expected=" or ".join(map(repr, CORRUPTION_MODES)), got=repr(mode),
                          fix=did_you_mean(mode, CORRUPTION_MODES) or None)
    check_type(n_classes, int, where="corruption.n_classes")
    check_range(n_classes, low=2, where="corruption.n_classes")
    labels = np.asarray(labels)
    splits = np.asarray(splits)
    if labels.ndim != 1 or splits.shape != labels.shape:
        raise DataError("labels and splits must be 1-D arrays of one length",
                        where="corrupt_labels", got=f"labels {labels.shape}, splits {splits.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError("labels outside [0, n_classes)", where="corrupt_labels(labels)",
                        expected=f"0..{n_classes - 1}", got=f"{labels.min()}..{labels.max()}")
    train_labels = labels.astype(np.int64, copy=True)
    train_idx = np.flatnonzero(splits == _TRAIN)
    n_chosen = int(round(fraction * len(train_idx)))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(train_idx, n_chosen, replace=False))
    if mode == "uniform":
        train_labels[chosen] = rng.integers(0, n_classes, n_chosen)
    else:
        train_labels[chosen] = rng.permutation(train_labels[chosen])
    return train_labels, train_labels != labels
