"""Concept sensitivity from the store: TCAV with its statistical test, RCV sensitivity, ConExp.

Everything here reads stored arrays only; the network is never needed.

* **CAV** (Kim et al. 2018): an L2 logistic classifier separating a concept's examples
  from a random counterexample set in one layer's feature space; the CAV is the unit
  normal of its decision boundary (in raw-feature coordinates), pointing to the concept.
  As in Kim et al.'s reference code (``tcav/cav.py``), a seeded stratified third of each
  problem's examples is held out of its fit; ``cav_heldout_accuracy`` is the accuracy
  there (``cav_train_accuracy`` on the fitted two thirds). A random set never
  counts a concept's own examples as counterexamples: they are dropped from that
  problem (``n_random_excluded``).
* **TCAV score** of (class ``k``, concept, layer, checkpoint): the fraction of class
  ``k``'s samples (test split by default) whose directional derivative
  ``⟨grad_own_logit, cav⟩`` is positive. ``grad_own_logit`` is the gradient of the own
  class logit reduced by the feature reduction (:mod:`extract.gradients`), so that
  derivative is exact for the lifted direction (SCHEMA.md §6).
* **Statistical test**: ``R`` CAVs of the concept against ``R`` different random sets
  (``random_1..R``) and ``R`` random-vs-random CAVs (``random_0`` vs ``random_i``); a
  two-sided Welch-free t-test (``scipy.stats.ttest_ind``, equal variances, as Kim et al.)
  of the concept's R scores against the random ones, with Cohen's d and significance at
  ``alpha``, Bonferroni-corrected over every test in the table by default
  (``bonferroni=False`` / ``--no-bonferroni`` turns it off).
* **RCV sensitivity** (Graziani et al.): the derivative along the unit RCV direction of a
  continuous concept (ridge, :func:`analyze.solvers.ridge.fit_rcv_block`): per class, the
  mean derivative and the fraction of samples where it is positive. The mean is
  ``lift_scale · ⟨grad_own_logit, v⟩`` (SCHEMA.md §6.1): logit per unit move of the
  reduced features, comparable across layers of different H·W and reductions.
* **ConExp**: ``E[score_k | concept] - E[score_k | no concept]`` for binary concept targets,
  from the stored logits (or softmax probabilities) only.

Batching: every CAV of one (run, checkpoint, layer) — concepts × R plus the R null CAVs —
is fitted in one call of :func:`fit_cavs`: batched Newton steps, each problem in the span
of its own examples. The shared probe solver (:mod:`analyze.solvers.logistic`) fits many
label sets on *one* sample set; CAVs need a different, small sample subset per problem,
which is what makes the row-span Newton form cheap here.

Execution: one task per (run, checkpoint, layer) with stored gradients
(:func:`tcav_block_task`: read the gradients and the examples, fit that layer's CAVs
and RCVs, score), run by the executors of :mod:`analyze.cluster` like ``probestore
analyze`` and ``probestore similarity``: in this process, on an embedded local Dask
cluster (127.0.0.1) or on an existing scheduler. A task opens the store from its path,
so workers need only see the store. ConExp stays in the calling process: it reads one
logits array per checkpoint and fits nothing, less work than shipping a task.

Determinism: random sets are drawn from ``numpy.random.default_rng([seed, r])`` (or
are the stored ``random`` concept sets), so they depend on the seed only, the same for
every layer (scores of two layers are compared against the same counterexamples);
a task fits its CAVs by a fixed sequence of batched numpy operations under a fixed
BLAS thread count (``threads``, set inside the task with threadpoolctl); finished
tasks are put back into one fixed order (run, checkpoint, layer) before the
Bonferroni correction and significance are computed over the whole table. The same
store, options and seed therefore give bit-identical tables in-process and on any
number of workers, whatever order the tasks finish in.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from analyze.tables import TCAV
from probestore.errors import ConfigError, DataError
from probestore.selectors import check_matched, select
from storage_schema.layout import GRAD_ARRAY

__all__ = ["TCAVOptions", "CAVFit", "fit_cavs", "tcav_scores", "tcav_test", "conexp",
           "rcv_sensitivity", "draw_random_sets", "TCAVBlock", "TCAVPlan", "tcav_block_task", "run_tcav",
           "write_table"]

SCORES = ("logit", "prob")


@dataclass(frozen=True)
class TCAVOptions:
    """What to compute.

    Attributes
    ----------
    concepts : tuple of str or None
        Concept sets (``[concepts.sets]``, role concept) and/or binary targets; None: all.
    repeats : int
        ``R``: CAVs per concept, each against its own random set (>= 2 for the t-test).
    random_size : int
        Examples per drawn random set.
    split : str
        Samples whose TCAV / RCV / ConExp scores are reported.
    alpha : float
        Significance level (family-wise, over every TCAV test of the table, when
        ``bonferroni``).
    bonferroni : bool
        Divide ``alpha`` by the number of TCAV tests in the table (default on: a table
        holds concepts × classes × layers × checkpoints tests, and the report's
        "significant" marks rely on the correction).
    holdout : float
        Fraction of each CAV problem's examples (per side, seeded, stratified) held out
        from its fit and used for ``cav_heldout_accuracy`` (Kim et al.'s reference code
        holds out a third, ``tcav/cav.py``).
    C : float
        Inverse L2 strength of the CAV classifiers (scikit-learn's ``C``).
    seed : int
    classes, layers, runs, checkpoints : tuple of str or None
        Restrict (class names; exact names). None: all.
    rcv : bool
        Add RCV sensitivity for continuous targets (``rcv_targets``, None = all).
    conexp : bool
        Add ConExp for binary targets.
    conexp_score : {"logit", "prob"}
    threads : int
        BLAS threads. The batched products are small: one thread is fastest on a busy
        machine (more threads spin-wait against other processes), and a fixed count
        keeps the floats identical from run to run.
    """

    concepts: tuple[str, ...] | None = None
    repeats: int = 50
    random_size: int = 50
    split: str = "test"
    alpha: float = 0.05
    bonferroni: bool = True
    holdout: float = 1 / 3
    C: float = 1.0
    seed: int = 0
    classes: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    runs: tuple[str, ...] | None = None
    checkpoints: tuple[str, ...] | None = None
    rcv: bool = True
    rcv_targets: tuple[str, ...] | None = None
    conexp: bool = True
    conexp_score: str = "logit"
    threads: int = 1

    def __post_init__(self) -> None:
        where = "tcav options"
        if not isinstance(self.repeats, int) or self.repeats < 2:
            raise ConfigError("repeats must be an integer >= 2 (the t-test needs two scores per group)",
                              where=f"{where}.repeats", got=repr(self.repeats), fix="e.g. --repeats 50")
        if not isinstance(self.random_size, int) or self.random_size < 2:
            raise ConfigError("random_size must be an integer >= 2", where=f"{where}.random_size",
                              got=repr(self.random_size))
        if not 0 < self.alpha < 1:
            raise ConfigError("alpha must be in (0, 1)", where=f"{where}.alpha", got=self.alpha)
        if not self.C > 0:
            raise ConfigError("C must be > 0", where=f"{where}.C", got=self.C)
        if not 0 < self.holdout < 0.5:
            raise ConfigError("holdout must be in (0, 0.5)", where=f"{where}.holdout", got=self.holdout,
                              fix="e.g. --holdout 0.33 (a third of each CAV's examples, as Kim et al.)")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError("threads must be an integer >= 1", where=f"{where}.threads", got=repr(self.threads))
        if self.conexp_score not in SCORES:
            raise ConfigError("unknown ConExp score", where=f"{where}.conexp_score", expected=SCORES,
                              got=repr(self.conexp_score))


# --------------------------------------------------------------------------- pure maths


@dataclass
class CAVFit:
    """``P`` CAVs fitted together.

    Attributes
    ----------
    directions : ndarray (P, F)
        Unit normals in raw-feature coordinates, pointing to the positive (concept) side.
    coef, intercept : ndarray (P, F), (P,)
        The decision functions on raw features: ``x @ coef[p] + intercept[p]``.
    train_accuracy : ndarray (P,)
        Accuracy of each classifier on the examples it was fitted on.
    heldout_accuracy : ndarray (P,)
        Accuracy on the problem's held-out examples (``holdout``); NaN without any.
    converged : bool
    """

    directions: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    train_accuracy: np.ndarray
    heldout_accuracy: np.ndarray
    converged: bool


def fit_cavs(X: np.ndarray, masks: np.ndarray, y: np.ndarray, *, C: float = 1.0,
             holdout: np.ndarray | None = None,
             tol: float = 1e-9, max_iter: int = 100, max_bytes: int = 2**27) -> CAVFit:
    """Fit ``P`` L2 logistic classifiers on row subsets of one matrix, in one call.

    Problem ``p`` is scikit-learn's ``LogisticRegression(C=C)`` on the rows
    ``masks[p]`` of ``X`` with labels ``y[p]`` (1 = concept), on features centred with
    the mean of all rows of ``X`` and divided by one scalar, their RMS spread (shared by
    every problem, so that all CAVs of a layer live in one coordinate system). The
    scaling is isotropic on purpose: the L2 penalty then treats every direction alike,
    so the CAV rotates with the features (a per-feature standardization would not), and
    one ``C`` means the same on every layer.

    How: each problem's rows are gathered into a padded batch ``[P, m, F]``. The L2
    optimum lies in the span of a problem's own rows (the loss gradient is ``Xᵀ r``), so
    each problem is solved exactly in that span, of dimension ``k = min(m, F)``, by
    batched Newton steps with a per-problem backtracking line search: one batched QR,
    then per iteration one ``[P, m, k]`` product and one batched ``(k+1)²`` solve. CAV
    sets are small (tens to hundreds of examples), so ``k`` stays small whatever the
    layer width. Problems are processed in groups of at most ``max_bytes`` of batch.

    Parameters
    ----------
    X : ndarray (n, F)
        Union of every example used by any problem.
    masks : ndarray of bool (P, n)
    y : ndarray of {0, 1} (P, n)
        Labels (ignored outside the mask).
    C : float
    holdout : ndarray of bool (P, n), optional
        Rows of each problem's mask left out of its fit and scored afterwards
        (:func:`holdout_masks`); the features' centring and scale still use every row.
    tol : float
        Stop a problem when ``max |gradient|`` of ``mean loss + ||w||² / (2 C n_p)`` is
        below ``tol``.
    max_iter : int
        Newton iterations.
    max_bytes : int
        Memory bound of one group's gathered batch.

    Returns
    -------
    CAVFit

    Raises
    ------
    DataError
        Non-finite features, a problem without both classes.
    """
    X = np.asarray(X, dtype=np.float64)
    all_rows = np.asarray(masks, dtype=bool)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or all_rows.ndim != 2 or all_rows.shape != y.shape or all_rows.shape[1] != X.shape[0]:
        raise DataError("CAV inputs do not align", where="fit_cavs",
                        expected="X (n, F), masks and y (P, n)", got=f"{X.shape}, {all_rows.shape}, {y.shape}")
    held = np.zeros_like(all_rows) if holdout is None else np.asarray(holdout, dtype=bool)
    if held.shape != all_rows.shape:
        raise DataError("CAV holdout does not align with the masks", where="fit_cavs",
                        expected=f"shape {all_rows.shape}", got=f"shape {held.shape}")
    held = held & all_rows
    masks = all_rows & ~held
    if not np.isfinite(X).all():
        raise DataError("non-finite features", where="fit_cavs")
    pos = (masks & (y > 0.5)).sum(1)
    neg = (masks & (y <= 0.5)).sum(1)
    if (pos == 0).any() or (neg == 0).any():
        raise DataError("a CAV problem lacks concept or counterexamples", where="fit_cavs",
                        got=f"positives {pos.min()}, negatives {neg.min()}")
    P, F = masks.shape[0], X.shape[1]
    mean = X.mean(0)
    # One scalar for every feature (the RMS spread): per-feature scaling would tilt the
    # boundary normal by 1/scale² and make the CAV depend on the units of each unit.
    scale = float(np.sqrt(((X - mean) ** 2).mean()))
    scale = scale if scale > 0 else 1.0
    Xs = (X - mean) / scale
    m = int(masks.sum(1).max())
    group = max(1, int(max_bytes // max(1, 8 * m * F)))
    W = np.zeros((P, F))
    b = np.zeros(P)
    converged = True
    for lo in range(0, P, group):
        hi = min(P, lo + group)
        Wg, bg, ok = _newton_group(Xs, masks[lo:hi], y[lo:hi], m, C, tol, max_iter)
        W[lo:hi], b[lo:hi] = Wg, bg
        converged &= ok
    coef = W / scale
    intercept = b - coef @ mean
    norms = np.linalg.norm(coef, axis=1, keepdims=True)
    directions = np.divide(coef, norms, out=np.zeros_like(coef), where=norms > 0)
    right = ((X @ coef.T + intercept) > 0) == (y.T > 0.5)       # (n, P)
    acc = (right & masks.T).sum(0) / masks.sum(1)
    n_held = held.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        held_acc = np.where(n_held > 0, (right & held.T).sum(0) / n_held, np.nan)
    return CAVFit(directions, coef, intercept, acc, held_acc, bool(converged))


def holdout_masks(masks: np.ndarray, y: np.ndarray, fraction: float, keys: Sequence) -> np.ndarray:
    """Seeded, stratified held-out rows of each CAV problem (Kim et al.'s held-out third).

    Problem ``p`` holds out ``round(fraction · m)`` of its ``m`` positives and of its
    negatives (at least 1 of a side with 2 or more examples, never its last one), drawn
    from ``numpy.random.default_rng(keys[p])``. The keys name the problem (seed, concept,
    repeat), not its position, so a CAV holds out the same examples on every layer and
    whichever other concepts are in the run.

    Returns
    -------
    ndarray of bool (P, n)
    """
    masks = np.asarray(masks, dtype=bool)
    pos = masks & (np.asarray(y) > 0.5)
    out = np.zeros_like(masks)
    for p, key in enumerate(keys):
        rng = np.random.default_rng(key)
        for side in (pos[p], masks[p] & ~pos[p]):
            rows = np.flatnonzero(side)
            k = min(len(rows) - 1, max(1, int(round(fraction * len(rows))))) if len(rows) >= 2 else 0
            if k:
                out[p, rng.choice(rows, size=k, replace=False)] = True
    return out


def _newton_group(Xs, masks, y, m, C, tol, max_iter):
    """Batched Newton for one group of problems, in each problem's row span."""
    P, F = masks.shape[0], Xs.shape[1]
    Xb = np.zeros((P, m, F))
    Yb = np.zeros((P, m))
    Mb = np.zeros((P, m))
    for p in range(P):
        rows = np.flatnonzero(masks[p])
        Xb[p, :len(rows)] = Xs[rows]
        Yb[p, :len(rows)] = y[p, rows]
        Mb[p, :len(rows)] = 1.0
    n_p = Mb.sum(1)
    lam = 1.0 / (C * n_p)                      # scaled objective: mean loss + lam/2 ||w||²
    if F <= m:
        Q = None
        Z = Xb                                 # (P, m, F): the primal problem is small already
    else:
        Q = np.linalg.qr(Xb.transpose(0, 2, 1))[0]      # (P, F, m): spans each problem's rows
        Z = Xb @ Q                             # (P, m, m)
    k = Z.shape[2]
    theta = np.zeros((P, k + 1))               # (a, b): w = Vtᵀ a
    Zb = np.concatenate([Z, Mb[:, :, None]], axis=2)     # intercept column (0 on padding)
    ZbT = Zb.transpose(0, 2, 1)
    reg = np.ones(k + 1)
    reg[-1] = 0.0                              # the intercept is not penalized

    def objective(th):
        z = np.matmul(Zb, th[:, :, None])[:, :, 0]
        loss = ((np.logaddexp(0.0, z) - Yb * z) * Mb).sum(1) / n_p
        return loss + 0.5 * lam * ((th * reg) ** 2).sum(1), z

    f, z = objective(theta)
    active = np.ones(P, bool)
    for _ in range(max_iter):
        prob = 0.5 * (1.0 + np.tanh(0.5 * z))
        r = (prob - Yb) * Mb / n_p[:, None]
        g = np.matmul(ZbT, r[:, :, None])[:, :, 0] + lam[:, None] * theta * reg
        active = np.abs(g).max(1) > tol
        if not active.any():
            break
        s = prob * (1.0 - prob) * Mb / n_p[:, None]
        H = np.matmul(ZbT * s[:, None, :], Zb) + lam[:, None, None] * np.diag(reg)[None]
        H[:, -1, -1] += 1e-12                  # all-equal scores: keep the system solvable
        step = np.linalg.solve(H, g[:, :, None])[:, :, 0]
        step[~active] = 0.0
        slope = (g * step).sum(1)
        t = np.ones(P)
        for _ls in range(40):                  # per-problem backtracking (Armijo)
            f_new, z_new = objective(theta - t[:, None] * step)
            bad = active & (f_new > f - 1e-4 * t * slope)
            if not bad.any():
                break
            t = np.where(bad, 0.5 * t, t)
        theta = theta - t[:, None] * step
        f, z = objective(theta)
    W = theta[:, :k] if Q is None else np.einsum("pk,pfk->pf", theta[:, :k], Q)
    return W, theta[:, k], not active.any()


def tcav_scores(grads: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Fraction of samples with a positive directional derivative, per direction.

    Parameters
    ----------
    grads : ndarray (m, F)
        Reduced own-class gradients of one class's samples.
    directions : ndarray (P, F)

    Returns
    -------
    ndarray (P,)
        NaN when ``m == 0``.
    """
    grads = np.asarray(grads, dtype=np.float64)
    if len(grads) == 0:
        return np.full(len(directions), np.nan)
    return ((grads @ np.asarray(directions, dtype=np.float64).T) > 0).mean(0)


def tcav_test(concept_scores: np.ndarray, random_scores: np.ndarray) -> dict[str, float]:
    """Two-sided t-test of concept TCAV scores against random-vs-random ones (Kim et al.).

    Returns
    -------
    dict
        ``mean``, ``std`` (ddof=1) of both groups, ``t``, ``p_value``
        (``scipy.stats.ttest_ind``, equal variances) and ``cohen_d``
        (mean difference over the pooled standard deviation; 0 when both groups are
        constant and equal, ±inf when constant and different). ``p_value`` is 1 when
        both groups are the same constant (no evidence of any difference).
    """
    from scipy.stats import ttest_ind

    a = np.asarray(concept_scores, dtype=np.float64)
    b = np.asarray(random_scores, dtype=np.float64)
    na, nb = len(a), len(b)
    va, vb = a.var(ddof=1), b.var(ddof=1)
    pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    diff = a.mean() - b.mean()
    if pooled > 0:
        d = diff / pooled
        with warnings.catch_warnings():  # one constant group (all scores 1.0) is legitimate
            warnings.simplefilter("ignore", RuntimeWarning)
            t, p = ttest_ind(a, b)
        t, p = float(t), float(p)
    else:
        d = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
        t = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
        p = 1.0 if diff == 0 else 0.0
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)), "random_mean": float(b.mean()),
            "random_std": float(b.std(ddof=1)), "t": t, "p_value": p, "cohen_d": float(d)}


def conexp(scores: np.ndarray, concept: np.ndarray) -> np.ndarray:
    """ConExp per class: mean score with the concept minus mean score without.

    Parameters
    ----------
    scores : ndarray (m, K)
        Logits or probabilities of the evaluated samples.
    concept : ndarray of bool (m,)

    Returns
    -------
    ndarray (K,)
        NaN when either group is empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    concept = np.asarray(concept, dtype=bool)
    if concept.all() or not concept.any():
        return np.full(scores.shape[1], np.nan)
    return scores[concept].mean(0) - scores[~concept].mean(0)


def rcv_sensitivity(grads: np.ndarray, direction: np.ndarray) -> tuple[float, float]:
    """Mean derivative along a unit RCV direction and the fraction of positive ones."""
    if len(grads) == 0 or not np.isfinite(direction).all():
        return float("nan"), float("nan")
    d = np.asarray(grads, dtype=np.float64) @ np.asarray(direction, dtype=np.float64)
    return float(d.mean()), float((d > 0).mean())


def draw_random_sets(pool: np.ndarray, n_sets: int, size: int, seed: int) -> list[np.ndarray]:
    """``n_sets`` seeded random subsets (sorted rows) of ``pool``; set ``r`` uses stream ``[seed, r]``.

    Each set depends only on ``(seed, r, pool, size)``: asking for more repeats keeps the
    first sets unchanged.
    """
    pool = np.asarray(pool, dtype=np.int64)
    if size > len(pool):
        raise ConfigError("random sets larger than the pool of candidate samples", where="tcav random_size",
                          expected=f"<= {len(pool)}", got=size, fix="lower --random-size")
    return [np.sort(np.random.default_rng([seed, r]).choice(pool, size=size, replace=False))
            for r in range(n_sets)]


# --------------------------------------------------------------------------- store side


def _select(store, names: Sequence[str], wanted: Sequence[str] | None, what: str, option: str) -> list[str]:
    """``--concepts`` / ``--classes`` / ``--runs`` / ... of ``probestore tcav``: the one selector."""
    return select(names, wanted, what=what, where=f"tcav of {store.path} ({option})",
                  hint=f"`probestore inspect {store.path}` lists them")


@dataclass
class _Concept:
    name: str
    source: str               # "set" or "target"
    rows: np.ndarray | None   # dataset rows (None: external set)


def _concepts(store, opts: TCAVOptions) -> list[_Concept]:
    from storage_schema.concept_sets import concept_set_rows, concept_sets

    sets = concept_sets(store, role="concept")
    binary = [t for t in store.target_names() if store.target_info(t).kind == "binary"]
    names = _select(store, sets + [b for b in binary if b not in sets], opts.concepts,
                    "concept (concept set or binary target)", "--concepts")
    out = []
    for name in names:
        if name in sets:
            out.append(_Concept(name, "set", concept_set_rows(store, name)))
        else:
            rows = np.flatnonzero(store.read_target(name))
            if len(rows) < 2:  # a binary target with no examples cannot define a direction
                if opts.concepts is not None:
                    raise ConfigError(f"binary target {name!r} has {len(rows)} positive sample(s)",
                                      where="tcav --concepts", expected="at least 2 concept examples",
                                      fix="add example images for the concept, or leave it out")
                continue
            out.append(_Concept(name, "target", rows))
    return out


def _concept_features(store, run, ckpt, layer, c: _Concept) -> np.ndarray:
    from storage_schema.concept_sets import read_concept_features

    if c.source == "set":
        return read_concept_features(store, run, ckpt, c.name, layer)
    return store.read_layer(run, ckpt, layer, c.rows)


def _has_grad(store, run, ckpt, layer) -> bool:
    from storage_schema.concept_sets import extra_complete

    return extra_complete(store, run, ckpt, layer, GRAD_ARRAY)


@dataclass(frozen=True)
class TCAVBlock:
    """One Dask task: the CAVs, TCAV scores and RCV sensitivities of one stored layer.

    Attributes
    ----------
    run, checkpoint, layer : str
    epoch : int or None
        Copied into the rows.
    """

    run: str
    checkpoint: str
    epoch: int | None
    layer: str

    @property
    def name(self) -> str:
        """Readable part of the task's Dask key."""
        return f"tcav-{self.run}-{self.checkpoint}-{self.layer}"


@dataclass(frozen=True)
class TCAVPlan:
    """What every block task shares (sent with each task; a few small arrays).

    Attributes
    ----------
    opts : TCAVOptions
    class_names : tuple of str
        Every class of the dataset (rows name classes by index).
    class_rows : dict
        Selected class index -> its evaluated rows (``opts.split``), in class order.
    concepts : tuple of _Concept
    pool : ndarray
        Train rows that random sets are drawn from (concept examples excluded).
    stored_random : dict
        Stored ``random`` sets -> rows (None for an external set), sorted by name.
    rcv_targets : tuple of str
    """

    opts: TCAVOptions
    class_names: tuple[str, ...]
    class_rows: dict[int, np.ndarray]
    concepts: tuple[_Concept, ...]
    pool: np.ndarray
    stored_random: dict[str, np.ndarray | None]
    rcv_targets: tuple[str, ...]


def tcav_block_task(store_path: str, block: TCAVBlock, plan: TCAVPlan) -> list[dict]:
    """TCAV and RCV rows of one (run, checkpoint, layer); runs in-process or on a Dask worker.

    Opens the store itself (workers share nothing but the path) and caps BLAS at
    ``plan.opts.threads`` threads, so its floats do not depend on the worker's
    environment. Everything random in it is seeded by ``plan.opts.seed`` alone.
    """
    from threadpoolctl import threadpool_limits

    from storage_schema.store import open_store

    run, ckpt, layer = block.run, block.checkpoint, block.layer
    base = {"run": run, "checkpoint": ckpt, "epoch": block.epoch}
    with threadpool_limits(limits=plan.opts.threads, user_api="blas"), open_store(store_path, "r") as store:
        grads = store.read_extra(run, ckpt, layer, GRAD_ARRAY)
        g_cls = {k: grads[rows] for k, rows in plan.class_rows.items()}
        rows: list[dict] = []
        if plan.concepts:
            rows += _tcav_block(store, run, ckpt, layer, list(plan.concepts), g_cls, list(plan.class_names),
                                plan.pool, plan.stored_random, plan.opts, base)
        if plan.rcv_targets:
            scale = _lift_scale(store, run, ckpt, layer)
            rows += _rcv_block(store, run, ckpt, layer, list(plan.rcv_targets), g_cls, list(plan.class_names),
                               base, scale)
    return rows


def run_tcav(store_path: str | Path, opts: TCAVOptions, *, config=None, client=None, log=None) -> list[dict]:
    """Every TCAV / RCV / ConExp row of a store, in a fixed order.

    One task per (run, checkpoint, layer) with stored gradients
    (:func:`tcav_block_task`), run like ``probestore analyze`` runs its blocks: in this
    process, on an embedded local Dask cluster or on an existing one. ConExp stays in
    this process: it reads one logits array per checkpoint and fits nothing.

    Parameters
    ----------
    store_path : str or Path
        The store (every Dask worker must see it at this path).
    opts : TCAVOptions
    config : ExecutionSettings, optional
        Where the tasks run (``scheduler``, ``n_workers``, ``host``, ...). None: in this
        process. A local cluster gets ``opts.threads`` BLAS threads per worker unless
        ``threads_per_worker`` says otherwise; each task caps its BLAS at
        ``opts.threads`` either way, so the table is the same in every mode.
    client : distributed.Client, optional
        Run on this client's cluster (the caller owns it); overrides the scheduler.
    log : callable, optional
        Progress lines (none by default). ``probestore tcav`` passes a
        :class:`probestore.progress.Log` labelled ``tcav``: a bar on a terminal, else one
        timestamped line per block with rate and ETA.

    Returns
    -------
    list of dict
        Tidy rows (``method`` = ``tcav``, ``rcv`` or ``conexp``); see :func:`write_table`.

    Raises
    ------
    ConfigError
        Unknown names, no layer with stored gradients (for TCAV / RCV), workers that
        cannot see the store.
    """
    from threadpoolctl import threadpool_limits

    from analyze.cluster import check_store_visible, open_executor
    from analyze.config import ExecutionSettings
    from probestore.progress import Progress

    quiet = log is None
    log = log or (lambda _msg: None)
    config = config if config is not None else ExecutionSettings(scheduler="none")
    if config.threads_per_worker is None:
        config = config.replace(threads_per_worker=opts.threads)
    store_path = str(Path(store_path).resolve())
    with threadpool_limits(limits=opts.threads, user_api="blas"):
        plan, layout, conexp_rows = _plan(store_path, opts)
    blocks = [b for _key, bs in layout for b in bs]
    done: dict[TCAVBlock, list[dict]] = {}
    if blocks:
        with open_executor(config, len(blocks), client=client, log=log) as (executor, _):
            check_store_visible(executor, store_path)
            with Progress(len(blocks), unit="block", log=log, enabled=not quiet) as bar:
                for task in executor.map_unordered(tcav_block_task, store_path, blocks, plan):
                    if task.error is not None:
                        raise task.error
                    done[task.item] = task.value
                    bar.update(1, f"{task.item.run}/{task.item.checkpoint}/{task.item.layer}")
    # The fixed order of the table: run, checkpoint, then its layers' rows, then its ConExp.
    rows: list[dict] = []
    for key, bs in layout:
        for b in bs:
            rows += done[b]
        rows += conexp_rows.get(key, [])
    tests = [r for r in rows if r["method"] == "tcav"]
    alpha = opts.alpha / max(1, len(tests)) if opts.bonferroni else opts.alpha
    for r in tests:
        r["alpha"] = alpha
        r["significant"] = bool(r["p_value"] < alpha)
    return rows


def _plan(store_path: str, opts: TCAVOptions):
    """Check every name, list the blocks, compute ConExp: everything but the CAVs.

    Returns ``(plan, layout, conexp_rows)``: ``layout`` lists ``((run, checkpoint),
    [TCAVBlock...])`` in table order; ``conexp_rows`` maps ``(run, checkpoint)`` to its rows.
    """
    from storage_schema.concept_sets import concept_set_rows, concept_sets
    from storage_schema.store import open_store

    with open_store(store_path, "r") as store:
        if store.has_sequences():
            # CAV held-out rows and random counterexample sets are drawn by row: tokens of one
            # sentence would sit on both sides of a CAV's held-out split (SCHEMA.md §12.2).
            raise ConfigError("TCAV is not defined on token or word rows", where=str(store_path),
                              expected="a store with one row per input (dataset.unit absent or 'sequence')",
                              got=f"{store.unit} rows of {store.n_sequences} sequences",
                              fix="extract a sequence-level reduction (cls, mean, last) into another store "
                                  "for TCAV; classifier, control, RCV and MDL probes work on token rows")
        class_names = list(store.dataset.class_names)
        labels = store.labels()
        eval_rows = store.split_indices(opts.split)
        classes = _select(store, class_names, opts.classes, "class", "--classes")
        class_ids = [class_names.index(c) for c in classes]
        concepts = _concepts(store, opts)
        runs = _select(store, store.runs(), opts.runs, "run", "--runs")
        train_rows = store.split_indices("train")
        excluded = np.unique(np.concatenate([c.rows for c in concepts if c.rows is not None] or [np.zeros(0, int)]))
        pool = np.setdiff1d(train_rows, excluded)
        stored_random = {s: concept_set_rows(store, s) for s in concept_sets(store, role="random")}
        binary = [t for t in store.target_names() if store.target_info(t).kind == "binary"]
        continuous = [t for t in store.target_names() if store.target_info(t).kind == "continuous"]
        rcv_targets = _select(store, continuous, opts.rcv_targets, "continuous target", "--rcv-targets") \
            if opts.rcv else []
        ckpts_of = {run: [c.name for c in store.checkpoints(run)] for run in runs}
        if opts.checkpoints is not None:
            _select(store, sorted({c for cs in ckpts_of.values() for c in cs}), opts.checkpoints, "checkpoint",
                    "--checkpoints")
        layout: list[tuple[tuple[str, str], list[TCAVBlock]]] = []
        conexp_rows: dict[tuple[str, str], list[dict]] = {}
        any_grad = False
        seen_layers: set[str] = set()
        hit_layers: set[str] = set()
        for run in runs:
            ckpts = ckpts_of[run]
            for ckpt_name in select(ckpts, opts.checkpoints, what="checkpoint", where="tcav --checkpoints",
                                    must_match=False):
                info = store.checkpoint_info(run, ckpt_name)
                assert info is not None, "store.checkpoints lists registered checkpoints only"
                layers = [b.name for b in store.layers(run, ckpt_name)]
                seen_layers.update(layers)
                layers = select(layers, opts.layers, what="layer", where="tcav --layers", must_match=False)
                hit_layers.update(layers)
                layers = [m for m in layers if _has_grad(store, run, ckpt_name, m)]
                any_grad |= bool(layers)
                work = concepts or rcv_targets
                layout.append(((run, ckpt_name),
                               [TCAVBlock(run, ckpt_name, info.epoch, m) for m in layers] if work else []))
                if opts.conexp and binary:
                    base = {"run": run, "checkpoint": ckpt_name, "epoch": info.epoch}
                    conexp_rows[(run, ckpt_name)] = _conexp_rows(store, run, ckpt_name, binary, eval_rows,
                                                                 class_ids, class_names, opts, base)
        # a pattern must match a layer of some selected checkpoint (as in analyze, similarity)
        check_matched(opts.layers, hit_layers, seen_layers, what="layer", where=f"tcav of {store_path} (--layers)",
                      hint=f"`probestore inspect {store_path}` lists the layers")
        if (concepts or rcv_targets) and not any_grad:
            raise ConfigError("no layer of the selected checkpoints has stored gradients",
                              where=str(store_path), expected=f"complete '{GRAD_ARRAY}' arrays",
                              fix="extract with [extract] gradients = true (TCAV and RCV sensitivity "
                                  "need the reduced gradients)")
    plan = TCAVPlan(opts=opts, class_names=tuple(class_names),
                    class_rows={k: eval_rows[labels[eval_rows] == k] for k in class_ids},
                    concepts=tuple(concepts), pool=pool, stored_random=stored_random,
                    rcv_targets=tuple(rcv_targets))
    return plan, layout, conexp_rows


def _tcav_block(store, run, ckpt, layer, concepts, g_cls, class_names, pool, stored_random, opts, base):
    R = opts.repeats
    if len(stored_random) >= R + 1:
        names = list(stored_random)[: R + 1]
        rand_feats = _read_sets(store, run, ckpt, layer, names, stored_random)
        rand_keys = [_example_keys(store, s, stored_random[s]) for s in names]
        random_source = "stored sets"
    else:
        sets = draw_random_sets(pool, R + 1, opts.random_size, opts.seed)
        union = np.unique(np.concatenate(sets))
        X_pool = store.read_layer(run, ckpt, layer, union)
        rand_feats = [X_pool[np.searchsorted(union, s)] for s in sets]
        rand_keys = [_example_keys(store, None, s) for s in sets]
        random_source = f"drawn from train (seed {opts.seed})"
    concept_feats = [_concept_features(store, run, ckpt, layer, c) for c in concepts]
    concept_keys = [set(_example_keys(store, c.name if c.source == "set" else None, c.rows)) for c in concepts]
    # One matrix: concept examples, then random sets; problems select their rows by mask.
    parts = concept_feats + rand_feats
    offsets = np.cumsum([0] + [len(p) for p in parts])
    X = np.concatenate(parts)
    n = len(X)

    def span(i):
        m = np.zeros(n, bool)
        m[offsets[i]:offsets[i + 1]] = True
        return m

    C_ = len(concepts)
    masks, ys, keys, excluded = [], [], [], np.zeros(C_, dtype=np.int64)
    for ci in range(C_):
        for r in range(1, R + 1):        # concept vs random_r, without the concept's own examples
            pos, neg = span(ci), span(C_ + r)
            own = np.array([k in concept_keys[ci] for k in rand_keys[r]], dtype=bool)
            neg[offsets[C_ + r]:offsets[C_ + r + 1]] &= ~own
            excluded[ci] += int(own.sum())
            masks.append(pos | neg)
            ys.append(pos)
            keys.append([opts.seed, 1, zlib.crc32(concepts[ci].name.encode()), r])
    for r in range(1, R + 1):            # random_0 vs random_r (the null distribution)
        pos, neg = span(C_), span(C_ + r)
        masks.append(pos | neg)
        ys.append(pos & ~neg)
        keys.append([opts.seed, 2, r])
    masks_a, ys_a = np.array(masks), np.array(ys, dtype=float)
    fit = fit_cavs(X, masks_a, ys_a, C=opts.C, holdout=holdout_masks(masks_a, ys_a, opts.holdout, keys))
    out = []
    null_dirs = fit.directions[C_ * R:]
    for k_name_idx, g in g_cls.items():
        null_scores = tcav_scores(g, null_dirs)
        for ci, c in enumerate(concepts):
            dirs = fit.directions[ci * R:(ci + 1) * R]
            scores = tcav_scores(g, dirs)
            stats = tcav_test(scores, null_scores) if len(g) else {
                "mean": np.nan, "std": np.nan, "random_mean": np.nan, "random_std": np.nan,
                "t": np.nan, "p_value": np.nan, "cohen_d": np.nan}
            out.append({**base, "method": "tcav", "layer": layer, "concept": c.name,
                        "class_index": int(k_name_idx), "class_name": class_names[k_name_idx],
                        "n_samples": int(len(g)), "repeats": R, "score_mean": stats["mean"],
                        "score_std": stats["std"], "random_mean": stats["random_mean"],
                        "random_std": stats["random_std"], "t": stats["t"], "p_value": stats["p_value"],
                        "effect_size": stats["cohen_d"], "n_concept": int(len(concept_feats[ci])),
                        "cav_heldout_accuracy": float(fit.heldout_accuracy[ci * R:(ci + 1) * R].mean()),
                        "cav_train_accuracy": float(fit.train_accuracy[ci * R:(ci + 1) * R].mean()),
                        "n_random_excluded": int(excluded[ci]),
                        "random_source": random_source, "converged": fit.converged})
    return out


def _example_keys(store, set_name: str | None, rows: np.ndarray | None) -> list:
    """Identities of a set's examples: dataset rows (ints) or an external set's ids ("ext:<id>").

    Dataset examples are the same image exactly when their row is; external examples
    are compared by their ids (file names) with other external sets only.
    """
    if rows is not None:
        return [int(r) for r in rows]
    from storage_schema.concept_sets import concept_set_ids

    assert set_name is not None, "an external set has a name"
    return [f"ext:{i}" for i in concept_set_ids(store, set_name)]


def _read_sets(store, run, ckpt, layer, names, rows):
    """Features of several concept sets; dataset sets are read with one pass over the block.

    ``rows`` maps each set to its dataset rows (None for an external set).
    """
    from storage_schema.concept_sets import read_concept_features

    dataset = [s for s in names if rows[s] is not None]
    out = {}
    if dataset:
        union = np.unique(np.concatenate([rows[s] for s in dataset]))
        block = store.read_layer(run, ckpt, layer, union)
        out = {s: block[np.searchsorted(union, rows[s])] for s in dataset}
    return [out[s] if s in out else read_concept_features(store, run, ckpt, s, layer) for s in names]


def _lift_scale(store, run, ckpt, layer) -> float:
    """The factor that makes ``⟨grad_own_logit, v⟩`` the derivative per unit move of the
    reduced features along ``v`` (SCHEMA.md §6.1): derived from the layer's reduction by
    :func:`~storage_schema.reductions.lift_scale_for` (stores of schema < 1.2 recorded 1 for
    ``project:K``), the recorded attribute only when the rule cannot decide.
    """
    from storage_schema.concept_sets import extra_attrs
    from storage_schema.reductions import lift_scale_for

    attrs = extra_attrs(store, run, ckpt, layer, GRAD_ARRAY) or {}
    scale = lift_scale_for(attrs.get("reduction"))
    if scale is None:
        recorded = attrs.get("lift_scale")
        if not isinstance(recorded, (int, float)) or isinstance(recorded, bool) or not recorded > 0:
            raise DataError("no usable lift_scale for the stored gradients", where=f"{run}/{ckpt}/{layer}",
                            expected="a linear reduction or a lift_scale > 0 (SCHEMA.md §6.1)",
                            got=repr(attrs.get("reduction")), fix="`probestore validate STORE` lists the problem")
        scale = float(recorded)
    return float(scale)


def _rcv_block(store, run, ckpt, layer, targets, g_cls, class_names, base, lift_scale=1.0):
    """RCV sensitivity rows; derivatives are ``lift_scale`` times the stored inner products."""
    from analyze.solvers.ridge import fit_rcv_block

    X = store.read_layer(run, ckpt, layer)
    Y = np.stack([store.read_target(t) for t in targets], axis=1)
    idx = {s: store.split_indices(s) for s in ("train", "valid", "test")}
    ok = np.isfinite(Y).all(1)
    idx = {s: v[ok[v]] for s, v in idx.items()}
    try:
        res = fit_rcv_block(X[idx["train"]], Y[idx["train"]], X[idx["valid"]], Y[idx["valid"]],
                            X[idx["test"]] if len(idx["test"]) else None,
                            Y[idx["test"]] if len(idx["test"]) else None)
    except DataError as exc:  # never drop the concept silently: one failed row says why
        return [_failed_rcv_row(base, layer, t, str(exc), lift_scale) for t in targets]
    out = []
    for ti, t in enumerate(targets):
        if res.status[ti] != "ok":
            out.append(_failed_rcv_row(base, layer, t, res.message[ti], lift_scale))
            continue
        direction = res.direction[ti]
        r2 = float(res.r2_test[ti])
        for k, g in g_cls.items():
            mean, frac = rcv_sensitivity(g, direction)
            out.append({**base, "method": "rcv", "layer": layer, "concept": t, "class_index": int(k),
                        "class_name": class_names[k], "n_samples": int(len(g)), "score_mean": lift_scale * mean,
                        "sign_fraction": frac, "rcv_r2_test": r2, "lift_scale": lift_scale})
    return out


def _failed_rcv_row(base, layer, target, message, lift_scale) -> dict:
    """The row of an RCV that could not be fitted (e.g. a constant target on train)."""
    return {**base, "method": "rcv", "layer": layer, "concept": target, "lift_scale": lift_scale,
            "status": "failed", "message": f"RCV not fitted: {message}"}


def _conexp_rows(store, run, ckpt, binary, eval_rows, class_ids, class_names, opts, base):
    """ConExp rows of one checkpoint. A head of other classes (SCHEMA.md §4.3) is scored
    on the classes of its ``class_map`` only (``prob``: softmax over the mapped logits);
    without one, and for unmapped classes, the rows are failed and say why
    (:func:`analyze.outputs.output_head`)."""
    from analyze.outputs import output_head

    head = output_head(store.run_info(run).model, store.dataset.class_names)
    skipped = list(class_ids) if head.kind == "skipped" else []
    out = [{**base, "method": "conexp", "layer": None, "concept": b, "class_index": int(k),
            "class_name": class_names[k], "conexp_score": opts.conexp_score, "status": "failed",
            "message": "ConExp " + (head.message if head.kind == "skipped" else
                                    "skipped: the dataset class is not in the model's class_map")}
           for b in binary for k in skipped]
    if head.kind == "skipped":
        return out
    logits = store.read_logits(run, ckpt, eval_rows).astype(np.float64)
    if head.kind == "mapped":
        assert head.columns is not None
        mapped = np.flatnonzero(head.columns >= 0)
        logits = logits[:, head.columns[mapped]]  # column j: dataset class mapped[j]
        position = {int(k): j for j, k in enumerate(mapped)}
        out = [{**base, "method": "conexp", "layer": None, "concept": b, "class_index": int(k),
                "class_name": class_names[k], "conexp_score": opts.conexp_score, "status": "failed",
                "message": "ConExp skipped: the dataset class is not in the model's class_map"}
               for b in binary for k in class_ids if int(k) not in position]
        class_ids = [k for k in class_ids if int(k) in position]
    else:
        position = {int(k): int(k) for k in class_ids}
    if opts.conexp_score == "prob":
        z = logits - logits.max(1, keepdims=True)
        scores = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    else:
        scores = logits
    for b in binary:
        concept = store.read_target(b)[eval_rows].astype(bool)
        diff = conexp(scores, concept)
        for k in class_ids:
            out.append({**base, "method": "conexp", "layer": None, "concept": b, "class_index": int(k),
                        "class_name": class_names[k], "n_samples": int(len(eval_rows)),
                        "score_mean": float(diff[position[int(k)]]), "n_concept": int(concept.sum()),
                        "conexp_score": opts.conexp_score})
    return out


#: Version of the table's columns (Parquet metadata ``probestore.table``; the columns are
#: specified in :data:`analyze.tables.TCAV` and storage_schema/RESULTS.md). 2: the
#: training ``cav_accuracy`` became ``cav_heldout_accuracy`` (+ ``cav_train_accuracy``),
#: with ``n_random_excluded``; RCV ``score_mean`` is scaled by the new ``lift_scale``;
#: Bonferroni on by default; ``status`` / ``message`` (an RCV that cannot be fitted is a
#: failed row, never dropped). 2.1: every column has the spec's dtype whatever rows the
#: table holds (counts are integers with nulls, ``significant`` / ``converged`` booleans).
TABLE_VERSION = TCAV.version
COLUMNS = TCAV.names
#: ``status`` of a row: ``ok``, or ``failed`` (no number; ``message`` says why).
STATUSES = TCAV.statuses
#: Parquet metadata key of the options that made the table.
OPTIONS_KEY = b"probestore.tcav"


def write_table(rows: list[dict], path: str | Path, opts: TCAVOptions) -> Path:
    """Write the tidy table atomically: Parquet with the options in the file metadata, or
    its CSV export when ``path`` ends in ``.csv``.

    One row per (method, run, checkpoint, layer, concept, class); columns not used by a
    method are null.
    """
    from analyze import tables

    defaults = {"status": "ok", "message": ""}
    df = tables.frame(({c: r.get(c, defaults.get(c)) for c in COLUMNS} for r in rows), TCAV)
    return tables.write_table(df, path, TCAV, {OPTIONS_KEY: asdict(opts)})
