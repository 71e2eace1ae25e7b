"""Minimum description length of the labels given a layer: the online code (Voita & Titov 2020).

Probe accuracy does not say how *easily* a layer gives the labels: a big enough probe
fits anything (Hewitt & Liang's control tasks). The description length does: it is
the number of bits needed to transmit the train labels to a receiver who already has
the features, when both sides use the probe as the code. The online (prequential)
code sends the labels in blocks of increasing size:

- the train split is put in a seeded random order, and cut at the fractions
  :data:`FRACTIONS` of ``n_train`` (the first block holds at least ``min_first``
  samples, so that the first probe sees more than a couple of labels);
- the first block of ``t_1`` labels is sent with the uniform code, ``t_1 · log2 K``;
- every later block ``i+1`` is sent with the probe trained on blocks ``1..i``:
  ``Σ -log2 p(y | x)`` over its samples;
- codelength = the sum; the uniform codelength is ``n_train · log2 K`` and
  ``compression = uniform / online`` (> 1: the layer makes the labels cheaper).

The probe is the multinomial logistic regression of the classifier probe
(:func:`analyze.solvers.logistic.fit_logistic_block`: standardized with the statistics
of the portion it is trained on, L2 with a *fixed* ``C``: no validation split is spent
on choosing it, and one ``C`` keeps codelengths of different layers comparable). The
label sets of a block (true labels, and the training labels of a corrupted run) share
every solve; the portions are solved one after the other (each is a different design
matrix, and they grow geometrically, so the whole code costs about two fits on the
full train split).

Token rows (SCHEMA.md §12) are transmitted *by sequence*: with ``groups`` (each row's
sequence id) the seeded order is an order of sequences, a sequence's rows stay
together, and every block boundary is moved forward to the next sequence boundary. A
block then never holds tokens of a sentence that an earlier block already taught the
probe, which would make the labels look cheaper than they are.

Probabilities are mixed with the uniform distribution, ``(1 - ε) p + ε / K`` with
``ε = MIX`` (1e-3): a probe trained on a portion where a class is absent gives that
class probability 0 (its optimum), and one label of that class would otherwise cost
infinitely many bits. The mixture costs at most ``-log2(1 - ε) ≈ 0.0014`` bits per
label and bounds any label's cost by ``log2(K / ε)``. A portion with a single class
predicts that class with probability 1 (then mixed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from probestore.errors import ConfigError, DataError

#: Block boundaries as fractions of the train split (Voita & Titov's choice).
FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
#: Weight of the uniform distribution mixed into the probe's probabilities.
MIX = 1e-3
#: Fewest samples in the first block.
MIN_FIRST = 10


@dataclass(frozen=True)
class MDLResult:
    """Online codelength of one label set.

    Attributes
    ----------
    codelength_bits, uniform_bits, compression : float
    block_ends : ndarray of int
        Cumulative block boundaries ``t_1 < t_2 < ... = n_train``.
    block_bits : ndarray of float
        Bits of each block (the first with the uniform code).
    """

    codelength_bits: float
    uniform_bits: float
    compression: float
    block_ends: np.ndarray
    block_bits: np.ndarray


def block_ends(n_train: int, fractions: Sequence[float] = FRACTIONS, min_first: int = MIN_FIRST) -> np.ndarray:
    """Cumulative block boundaries for ``n_train`` samples (strictly increasing, last = n_train).

    Raises
    ------
    ConfigError
        Fractions not increasing in (0, 1] and ending at 1.
    DataError
        ``n_train < 2``: nothing to transmit with a probe.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size == 0 or np.any(np.diff(f) <= 0) or f[0] <= 0 or f[-1] != 1.0:
        raise ConfigError("MDL block fractions must increase in (0, 1] and end at 1", where="mdl fractions",
                          expected="e.g. (0.001, 0.002, ..., 0.5, 1.0)", got=repr(tuple(fractions)))
    if n_train < 2:
        raise DataError("the train split is too small for an online code", where="mdl",
                        expected="at least 2 train samples", got=f"{n_train}")
    first = min(max(int(min_first), 1), n_train - 1)
    ends = np.maximum(np.round(f * n_train).astype(np.int64), first)
    ends[-1] = n_train
    return np.unique(ends)


def _probabilities(X, coef, intercept) -> np.ndarray:
    Z = np.asarray(X, dtype=np.float64) @ np.asarray(coef, dtype=np.float64).T + intercept
    Z -= Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def _bits(P: np.ndarray, y: np.ndarray, K: int, mix: float) -> float:
    p = (1.0 - mix) * P[np.arange(y.size), y] + mix / K
    return float(-np.log2(p).sum())


def online_codelength(
    X_train,
    label_sets: Mapping[str, np.ndarray],
    *,
    n_classes: int,
    C: float = 1.0,
    seed: int = 0,
    fractions: Sequence[float] = FRACTIONS,
    min_first: int = MIN_FIRST,
    mix: float = MIX,
    groups=None,
    **solver_options,
) -> dict[str, MDLResult]:
    """Online-code MDL of every label set of one block.

    Parameters
    ----------
    X_train : array (n_train, F)
        The block's train split (float32 is fine).
    label_sets : mapping name -> int array (n_train,)
        Labels in ``[0, n_classes)``; all share the sample order and the solves.
    n_classes : int
        K of the uniform code.
    C : float
        scikit-learn's inverse L2 strength of the probe, fixed for every portion.
    seed : int
        Seed of the transmission order (the same for every block and label set, so
        layers and checkpoints are compared on the same blocks).
    fractions, min_first, mix
        See the module docstring.
    groups : int array (n_train,), optional
        Sequence id of each row (token rows): blocks are cut between sequences only.
    **solver_options
        ``max_iter``, ``tol``, ``dtype`` of :func:`~analyze.solvers.logistic.fit_logistic_block`.

    Returns
    -------
    dict name -> MDLResult

    Raises
    ------
    DataError, ConfigError
        Bad features or labels, too few samples, bad fractions / C / mix.
    """
    from analyze.solvers.logistic import fit_logistic_block

    if not (isinstance(n_classes, (int, np.integer)) and n_classes >= 2):
        raise ConfigError("n_classes must be an integer >= 2", where="online_codelength", got=repr(n_classes))
    if not (np.isfinite(C) and C > 0) or not (0 < mix < 1):
        raise ConfigError("C must be > 0 and mix in (0, 1)", where="online_codelength", got=f"C={C}, mix={mix}")
    X = np.asarray(X_train)
    if X.ndim != 2:
        raise DataError("features must be 2-D", where="online_codelength X_train", got=f"shape {X.shape}")
    n, K = X.shape[0], int(n_classes)
    labels = {}
    for name, y in label_sets.items():
        y = np.asarray(y)
        if y.shape != (n,) or y.dtype.kind not in "iu" or (n and (y.min() < 0 or y.max() >= K)):
            raise DataError("labels do not fit the features", where=f"online_codelength labels {name!r}",
                            expected=f"{n} integers in [0, {K})", got=f"shape {y.shape}, dtype {y.dtype}")
        labels[name] = y.astype(np.intp)
    ends = block_ends(n, fractions, min_first)
    if groups is None:
        order = np.random.default_rng(seed).permutation(n)
    else:
        order, ends = _group_blocks(np.asarray(groups), ends, seed)
    Xo = X[order]
    Yo = {k: v[order] for k, v in labels.items()}
    bits = {k: [ends[0] * np.log2(K)] for k in labels}
    for t, t_next in zip(ends[:-1], ends[1:]):
        X_fit, X_next = Xo[:t], Xo[t:t_next]
        fit_sets = {}
        for name, y in Yo.items():
            present = np.unique(y[:t])
            if present.size == 1:  # nothing to fit: predict the only class seen
                P = np.zeros((t_next - t, K))
                P[:, present[0]] = 1.0
                bits[name].append(_bits(P, y[t:t_next], K, mix))
            else:
                fit_sets[name] = (y[:t], y[t:t_next], None)
        if fit_sets:
            res = fit_logistic_block(X_fit, X_next, None, fit_sets, [float(C)], n_classes=K, **solver_options)
            for name, r in res.items():
                if r.status == "failed":
                    raise DataError("an MDL portion could not be fitted", where=f"labels {name!r}, first {t} samples",
                                    got=r.message)
                bits[name].append(_bits(_probabilities(X_next, r.coef, r.intercept), Yo[name][t:t_next], K, mix))
    uniform = n * np.log2(K)
    out = {}
    for name in label_sets:
        b = np.asarray(bits[name], dtype=np.float64)
        total = float(b.sum())
        out[name] = MDLResult(codelength_bits=total, uniform_bits=float(uniform),
                              compression=float(uniform / total) if total > 0 else float("inf"),
                              block_ends=ends, block_bits=b)
    return out


def _group_blocks(groups: np.ndarray, ends: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded order of whole groups (rows of a group together) and the block ends moved
    forward to the next group boundary (SCHEMA.md §12: tokens of one sentence never
    straddle two blocks)."""
    n = ends[-1]
    if groups.shape != (n,):
        raise DataError("groups do not fit the features", where="online_codelength groups",
                        expected=f"one sequence id per train row ({n})", got=f"shape {groups.shape}")
    ids, inverse = np.unique(groups, return_inverse=True)
    if ids.size < 2:
        raise DataError("the train split holds a single sequence: an online code needs two", where="mdl",
                        expected="train rows from at least 2 sequences", got=f"{n} rows of 1 sequence")
    rank = np.empty(ids.size, dtype=np.int64)
    rank[np.random.default_rng(seed).permutation(ids.size)] = np.arange(ids.size)
    order = np.argsort(rank[inverse], kind="stable")
    boundaries = np.flatnonzero(np.diff(rank[inverse][order])) + 1  # first row of each later group
    boundaries = np.append(boundaries, n)
    snapped = boundaries[np.searchsorted(boundaries, ends, side="left")]
    return order, np.unique(snapped)

