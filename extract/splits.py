"""Train / valid / test assignment, stratified by class and fixed by a seed.

The split is decided once, before training, and stored as one ``int8`` code per sample:
the network is trained on ``train`` (with possibly corrupted labels), the probes are fit
on ``train`` activations and selected on ``valid``, and ``test`` is touched only for the
final numbers. Stratifying keeps every class present in every split even for the small
subsets probing is often run on.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from probestore.errors import ConfigError, DataError
from probestore.fields import check_keys, check_range, check_type

__all__ = ["SPLIT_NAMES", "SPLIT_CODES", "assign_splits"]

SPLIT_NAMES = ("train", "valid", "test")
#: name -> int8 code stored per sample.
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}


def _check_fractions(fractions: Mapping[str, float], need_test: bool) -> dict[str, float]:
    where = "splits.fractions"
    required = SPLIT_NAMES if need_test else ("train", "valid")
    check_keys(fractions, SPLIT_NAMES, where=where, required=required)
    out = {}
    for name in required:
        value = check_type(fractions[name], (int, float), where=f"{where}.{name}")
        if not value > 0:
            raise ConfigError("every split needs a positive fraction", where=f"{where}.{name}",
                              expected="a value in (0, 1)", got=value)
        out[name] = float(check_range(value, high=1, where=f"{where}.{name}"))
    if need_test or "test" in fractions:
        total = sum(float(fractions[k]) for k in fractions)
        if abs(total - 1.0) > 1e-6:
            raise ConfigError("split fractions must sum to 1", where=where, expected=1.0,
                              got=f"{total:g} from {dict(fractions)}",
                              fix="rescale the fractions")
    return out


def _allocate(n: int, fractions: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n``, closest to ``n * fractions`` (largest remainder)."""
    # rounded so that equal ratios written differently (0.75 vs 0.6/0.8) agree exactly
    quota = np.round(n * fractions / fractions.sum(), 9)
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def assign_splits(
    labels: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
    predefined: np.ndarray | None = None,
) -> np.ndarray:
    """Assign each sample to train (0), valid (1) or test (2).

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (n,)
        True class labels (stratification key).
    fractions : mapping
        ``{"train": ..., "valid": ..., "test": ...}``, each > 0, summing to 1.
    seed : int
        Same labels, fractions and seed give the same codes on every machine.
    predefined : numpy.ndarray of str, optional
        ``"train"`` / ``"test"`` (or ``"valid"``) per sample, e.g. from the MNIST file a
        sample came from. Predefined test (and valid) samples keep their split; valid is
        carved out of the predefined train samples with the share
        ``valid / (train + valid)``, so ``fractions["test"]`` is unused and may be
        omitted.

    Returns
    -------
    numpy.ndarray of int8, shape (n,)
        Codes indexing :data:`SPLIT_NAMES`.

    Raises
    ------
    ConfigError
        Unknown / missing / non-positive fractions, or a sum other than 1.
    DataError
        Labels not a 1-D integer array, or ``predefined`` with the wrong length or
        values.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError("labels must be a 1-D integer array", where="assign_splits(labels)",
                        got=f"{labels.dtype} {labels.shape}")
    frac = _check_fractions(fractions, need_test=predefined is None)
    rng = np.random.default_rng(seed)
    codes = np.empty(len(labels), np.int8)
    if predefined is None:
        pool = np.ones(len(labels), bool)
        weights = np.array([frac[k] for k in SPLIT_NAMES])
        targets = np.array([0, 1, 2], np.int8)
    else:
        predefined = np.asarray(predefined).astype(str)
        bad = sorted(set(np.unique(predefined)) - set(SPLIT_NAMES))
        if predefined.shape != labels.shape or bad:
            raise DataError("predefined split does not fit the labels",
                            where="assign_splits(predefined)",
                            expected=f"one of {SPLIT_NAMES} per sample ({len(labels)})",
                            got=f"shape {predefined.shape}, unknown values {bad}")
        pool = predefined == "train"
        codes[~pool] = np.array([SPLIT_CODES[s] for s in predefined[~pool]], np.int8)
        weights = np.array([frac["train"], frac["valid"]])
        targets = np.array([0, 1], np.int8)
    for c in np.unique(labels[pool]):
        members = rng.permutation(np.flatnonzero(pool & (labels == c)))
        counts = _allocate(len(members), weights)
        codes[members] = np.repeat(targets, counts)
    return codes
