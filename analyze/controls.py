"""Control tasks (Hewitt & Liang 2019): is a probe reading the layer, or memorizing labels?

A probe that reaches low error might owe it to its own capacity rather than to the
layer. The control task keeps everything but the meaning of the labels: each sample
gets a random label, drawn so that class frequencies are unchanged (a seeded
permutation of the true labels over all samples). The control probe is the same
classifier fitted on those labels; *selectivity* = accuracy(true) - accuracy(control)
is high only when the layer, not the probe, carries the class information.
"""

from __future__ import annotations

import numpy as np

from storage_schema.errors import DataError


def control_labels(y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Seeded random relabeling with the class counts of ``y``.

    Parameters
    ----------
    y : ndarray of int, shape (n,)
        True labels of *all* samples (every split), in ``[0, n_classes)``; permuting
        across splits keeps the per-split counts right in expectation and the overall
        counts exactly.
    n_classes : int
        K, used to validate ``y``.
    seed : int
        Seed of ``numpy.random.default_rng``: the same seed gives the same control task,
        so checkpoints and layers of one run are probed against the same labels.

    Returns
    -------
    ndarray of int, shape (n,)
        ``y`` permuted: same multiset of labels, assigned at random to samples.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError("control labels need a 1-D integer label array", where="control_labels",
                        expected="shape (n,), integer dtype", got=f"shape {y.shape}, dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError("labels outside the class range", where="control_labels",
                        expected=f"labels in [0, {n_classes})", got=f"[{y.min()}, {y.max()}]")
    return np.random.default_rng(seed).permutation(y)


def selectivity(true_result, control_result) -> dict[str, float]:
    """Accuracy of the true-label probe minus that of the control probe, per split.

    Parameters
    ----------
    true_result, control_result : LogisticResult
        Results of :func:`analyze.solvers.logistic.fit_logistic_block` for the true
        and the control label sets of the same block.

    Returns
    -------
    dict
        ``{"train": ..., "valid": ..., "test": ...}``; NaN where a split is missing or a
        probe failed. ``accuracy = 1 - error_<split>``, so selectivity is
        ``error_control - error_true``.
    """
    return {
        split: float(getattr(control_result, f"error_{split}") - getattr(true_result, f"error_{split}"))
        for split in ("train", "valid", "test")
    }
