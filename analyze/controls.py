"""Control tasks (Hewitt & Liang 2019): is a probe reading the layer, or memorizing inputs?

A probe that reaches low error might owe it to its own capacity rather than to the
layer. Hewitt & Liang's control task gives every word *type* a random label: all
occurrences of a type share it, types recur in held-out data, so the task is learnable,
but only by memorizing types. The control probe is the task probe with the *same
settings* (here: the same C) fitted on those labels, and *selectivity* = accuracy(task)
- accuracy(control) is high only when the probe's accuracy comes from the layer.

The types of a store are ``samples/type`` (SCHEMA.md §11): word types for token data,
clusters of the raw inputs for images (:mod:`extract.sample_types`). The control label
of a type is a seeded draw, fixed for every run, checkpoint and layer of an analysis,
that keeps the class counts of the true labels (:func:`control_labels`). A store without
types has no control task: the analysis fails its control rows and says how to add the
types; it never falls back to a per-sample relabeling, whose test accuracy is chance by
construction (no test sample shares anything with a train sample).
"""

from __future__ import annotations

import numpy as np

from probestore.errors import DataError


def control_labels(types: np.ndarray, labels: np.ndarray, n_classes: int, seed: int, *,
                   draw: str = "quota") -> np.ndarray:
    """One seeded random label per type, with (nearly) the class counts of ``labels``.

    Hewitt & Liang draw each type's label independently from the empirical label
    distribution, which keeps the class marginal only in expectation; with a few dozen
    types of unequal sizes the sample counts per class can then drift far from the true
    ones, and a skewed control marginal raises control accuracy by itself (a probe
    predicting the majority class) and confounds selectivity. So the draw is made
    *without replacement of sample mass*: types are visited largest first (ties in a
    seeded random order), and each draws its label with probability proportional to the
    samples its class still has to receive, among the classes that can still take the
    whole type (all classes with room left when none can). Per-class counts then match
    the true counts up to the size of the last types, and each type's label stays a
    random function of the type alone, independent of the input.

    Parameters
    ----------
    types : ndarray of int, shape (n,)
        Type id of every sample (any integers; only equality matters).
    labels : ndarray of int, shape (n,)
        True labels of the same samples, in ``[0, n_classes)``: the class counts to keep.
    n_classes : int
    seed : int
        Seed of ``numpy.random.default_rng``: the same seed and types give the same task.
    draw : {"quota", "empirical"}
        ``"quota"`` (default): the draw without replacement of sample mass above.
        ``"empirical"``: Hewitt & Liang's exact rule, each type's label drawn
        independently from the empirical label distribution (class counts kept in
        expectation only; with a vocabulary of thousands of word types the two agree).

    Returns
    -------
    ndarray of int64, shape (n,)
        Control label of every sample (equal within a type).
    """
    types, labels = np.asarray(types), np.asarray(labels)
    for name, arr in (("types", types), ("labels", labels)):
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise DataError(f"control labels need 1-D integer {name}", where="control_labels",
                            expected="shape (n,), integer dtype", got=f"shape {arr.shape}, dtype {arr.dtype}")
    if types.shape != labels.shape:
        raise DataError("types and labels differ in length", where="control_labels",
                        expected=f"{labels.shape[0]} types", got=types.shape[0])
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError("labels outside the class range", where="control_labels",
                        expected=f"labels in [0, {n_classes})", got=f"[{labels.min()}, {labels.max()}]")
    if draw not in ("quota", "empirical"):
        raise DataError("unknown control-label draw", where="control_labels", expected="'quota' or 'empirical'",
                        got=repr(draw))
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(types, return_inverse=True)
    sizes = np.bincount(inverse)
    if draw == "empirical":
        freq = np.bincount(labels, minlength=n_classes) / max(1, labels.size)
        return rng.choice(n_classes, size=sizes.size, p=freq)[inverse].astype(np.int64)
    order = rng.permutation(sizes.size)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, ties random
    room = np.bincount(labels, minlength=n_classes).astype(np.int64)
    label_of = np.empty(sizes.size, dtype=np.int64)
    for t in order:
        fits = room >= sizes[t]
        weight = np.where(fits, room, 0) if fits.any() else np.maximum(room, 0)
        c = int(rng.choice(n_classes, p=weight / weight.sum()))
        label_of[t] = c
        room[c] -= sizes[t]
    return label_of[inverse]


def selectivity(true_result, control_result) -> dict[str, float]:
    """Accuracy of the true-label probe minus that of the control probe, per split.

    Parameters
    ----------
    true_result, control_result : LogisticResult
        Results of :func:`analyze.solvers.logistic.fit_logistic_block` for the true
        and the control label sets of the same block (the control at the true set's C).

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
