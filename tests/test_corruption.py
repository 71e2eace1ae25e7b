"""Split assignment and label corruption: statistics, determinism, untouched samples."""

from __future__ import annotations

import numpy as np
import pytest

from extract.corruption import corrupt_labels
from extract.splits import SPLIT_CODES, SPLIT_NAMES, assign_splits
from probestore.errors import ConfigError, DataError

FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}


def _labels(n=1000, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


# ---------------------------------------------------------------------------- splits


def test_splits_fractions_per_class_and_determinism():
    labels = _labels(1000)
    codes = assign_splits(labels, FRACTIONS, seed=1)
    assert codes.dtype == np.int8 and set(np.unique(codes)) == {0, 1, 2}
    assert SPLIT_NAMES == ("train", "valid", "test") and SPLIT_CODES["test"] == 2
    for c in range(10):
        members = codes[labels == c]
        for name, frac in FRACTIONS.items():
            # per-class largest-remainder rounding: within one sample of the quota
            assert abs((members == SPLIT_CODES[name]).sum() - frac * len(members)) < 1
    np.testing.assert_array_equal(codes, assign_splits(labels, FRACTIONS, seed=1))
    assert not np.array_equal(codes, assign_splits(labels, FRACTIONS, seed=2))


def test_splits_predefined_test_kept_and_valid_carved_from_train():
    labels = _labels(600, k=5, seed=3)
    predefined = np.where(np.arange(600) < 400, "train", "test")
    codes = assign_splits(labels, {"train": 0.75, "valid": 0.25}, seed=0, predefined=predefined)
    assert np.all(codes[400:] == 2)
    assert set(np.unique(codes[:400])) == {0, 1}
    for c in range(5):
        m = labels[:400] == c
        assert abs((codes[:400][m] == 1).sum() - 0.25 * m.sum()) < 1
    # a given test fraction is accepted but unused when the split is predefined
    same = assign_splits(labels, {"train": 0.6, "valid": 0.2, "test": 0.2}, seed=0,
                         predefined=predefined)
    np.testing.assert_array_equal(codes, same)


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ({"train": 0.7, "valid": 0.2, "test": 0.2}, "sum to 1"),
        ({"train": 1.0, "valid": 0.0, "test": 0.0}, "positive"),
        ({"train": 0.8, "valid": 0.2}, "missing required key 'test'"),
        ({"train": 0.8, "vaild": 0.1, "test": 0.1}, "did you mean 'valid'"),
    ],
)
def test_splits_bad_fractions(fractions, match):
    with pytest.raises(ConfigError, match=match):
        assign_splits(_labels(50), fractions, seed=0)


def test_splits_bad_inputs():
    with pytest.raises(DataError, match="1-D integer"):
        assign_splits(np.zeros(5), FRACTIONS, seed=0)
    with pytest.raises(DataError, match="predefined"):
        assign_splits(_labels(4), FRACTIONS, seed=0, predefined=np.array(["train", "tset"] * 2))


# ------------------------------------------------------------------------- corruption


def _setup(n=1250, k=10):
    labels = _labels(n, k, seed=5)
    splits = assign_splits(labels, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0)
    assert (splits == 0).sum() == 1000
    return labels, splits


def test_uniform_corruption_statistics():
    labels, splits = _setup()
    k = 10
    counts = []
    for seed in range(20):
        train_labels, corrupted = corrupt_labels(labels, splits, 0.5, k, "uniform", seed)
        changed = train_labels != labels
        np.testing.assert_array_equal(corrupted, changed)
        assert not changed[splits != 0].any()
        np.testing.assert_array_equal(train_labels[splits != 0], labels[splits != 0])
        assert train_labels.min() >= 0 and train_labels.max() < k
        counts.append(corrupted.sum())
    # 500 chosen, each kept by chance with p = 1/K: corrupted ~ Binomial(500, 0.9)
    assert max(counts) <= 500
    assert abs(np.mean(counts) - 500 * (k - 1) / k) < 3 * np.sqrt(500 * 0.09 / 20) + 1


def test_shuffle_corruption_preserves_class_counts():
    labels, splits = _setup()
    train_labels, corrupted = corrupt_labels(labels, splits, 0.5, 10, "shuffle", seed=3)
    tr = splits == 0
    np.testing.assert_array_equal(np.bincount(train_labels[tr], minlength=10),
                                  np.bincount(labels[tr], minlength=10))
    np.testing.assert_array_equal(train_labels[~tr], labels[~tr])
    # the 500 chosen samples are a permutation; ~1/K of them land on their own label
    assert 400 <= corrupted.sum() <= 500
    np.testing.assert_array_equal(corrupted, train_labels != labels)


def test_corruption_fraction_edges_and_determinism():
    labels, splits = _setup()
    same, none = corrupt_labels(labels, splits, 0.0, 10, "uniform", seed=0)
    np.testing.assert_array_equal(same, labels)
    assert not none.any() and same.dtype == np.int64
    full_a = corrupt_labels(labels, splits, 1.0, 10, "uniform", seed=7)
    full_b = corrupt_labels(labels, splits, 1.0, 10, "uniform", seed=7)
    np.testing.assert_array_equal(full_a[0], full_b[0])
    assert full_a[1].sum() > 850  # all 1000 train samples chosen, ~900 changed
    other = corrupt_labels(labels, splits, 1.0, 10, "uniform", seed=8)
    assert not np.array_equal(full_a[0], other[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fraction": 1.5}, ConfigError, "out of range"),
        ({"fraction": -0.1}, ConfigError, "out of range"),
        ({"mode": "shufle"}, ConfigError, "did you mean 'shuffle'"),
        ({"n_classes": 3}, DataError, "outside"),
    ],
)
def test_corruption_validation(kwargs, error, match):
    labels = _labels(100, 10)
    splits = np.zeros(100, np.int8)
    args = {"fraction": 0.5, "n_classes": 10, "mode": "uniform", "seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        corrupt_labels(labels, splits, **args)
