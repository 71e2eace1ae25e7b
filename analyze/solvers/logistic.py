"""Linear classifier probes (Alain & Bengio): every label set and every C of a block at once.

Objective, per label set and per C (identical to scikit-learn's multinomial
``LogisticRegression(C=C)`` with the default L2 penalty, on standardized features)::

    C * sum_i CE(softmax(W x_i + b), y_i) + 0.5 * ||W||²      (b not penalized)

solved in the equivalent scaled form ``mean_i CE_i + ||W||² / (2 C n)`` whose gradient
scikit-learn's ``tol`` refers to. Features are standardized with train statistics; the
reported ``coef`` / ``intercept`` act on raw features. With two classes this is the
symmetric softmax, equal to scikit-learn's *binomial* model with ``C_binomial = 2 C``.

Why it is fast (see ``benchmarks/bench_probes.py``):

- all label sets of a block (true labels, the corrupted training labels of a memorizing
  run, control labels) are solved together: one GEMM ``X @ W`` with ``W`` of shape
  ``[F, K·L]`` and one ``X^T R`` per iteration, in ``dtype`` (float32 by default), the
  softmax too, while the parameters and every sum (losses, normalizers, the intercept
  gradient) stay float64;
- a vectorised L-BFGS (history 10) with an independent history, step and stopping test
  per label set, so one slow problem does not hold the others' curvature hostage; its
  inverse Hessian in compact form (Byrd, Nocedal & Schnabel 1994: two streaming passes
  over the history per iteration): with 1,000 classes a label set has a million
  parameters and the two-loop recursion cost as much as the gradient;
- the C grid is walked from the strongest regularization up, each C warm-started from
  the previous solution (or from ``warm_start``, the previous checkpoint's solution at
  the same C, whichever has the lower objective);
- when ``F > n_train`` the problem is solved in the row space of the train features
  (``W = V Ŵ``, ``V`` an orthonormal basis of that space, F×n): exact, because the L2
  optimum lies in that space, and every GEMM shrinks from F to n columns.

Convergence: a label set stops when ``max |gradient|`` of the scaled objective is
``<= tol`` (scikit-learn's ``gtol`` for lbfgs). The default ``tol=1e-6`` is stricter than
scikit-learn's 1e-4, which leaves validation cross-entropies ~10% off the optimum at
weak regularization; at 1e-6 they are within ~1e-3. ``status`` is ``"converged"``,
``"max_iter"``, or ``"stalled"`` (the line search found no acceptable step: the
float32 rounding floor was reached before ``tol``; use ``dtype=np.float64`` for
tolerances below ~1e-5).

Memory: the standardized features of every split in ``dtype``, the ``(n, K·L)`` logits
in float64, and the L-BFGS history ``2 · 10 · L · (F+1) · K`` float64 values.

Selection rule: the C with the lowest **validation cross-entropy** (ties -> the smaller
C, i.e. the stronger regularization). Cross-entropy is continuous in C, so the choice
does not flip on a single validation sample the way the error rate can.

Classes absent from ``y_train`` get ``coef`` 0 and ``intercept`` -inf: the optimum
sends their probability to 0 (scikit-learn, fitted on the present classes only, agrees).
Failure policy: NaN/Inf features or an empty train/valid split raise
:class:`DataError`; a label set with a single training class or labels outside
``[0, n_classes)`` fails alone (``status="failed"``, ``message``), and if none is usable
:class:`DataError` is raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analyze.metrics import cross_entropy, top_k_error
from analyze.solvers.grids import DEFAULT_CS, check_Cs
from analyze.solvers.standardize import Standardizer
from probestore.errors import ConfigError, DataError

_SPLITS = ("train", "valid", "test")
_METRICS = ("error", "top5_error", "ce")
_HISTORY = 10
_MAX_LINESEARCH = 25
_C1 = 1e-4  # Armijo constant
_DELTA = 0.1  # Hager-Zhang approximate-Wolfe constant


@dataclass
class LogisticResult:
    """The probe of one label set: chosen C, its scores, and the whole path.

    Attributes
    ----------
    Cs : ndarray (A,)
        Grid, ascending (the order of every ``path`` entry).
    C : float
        Chosen C (NaN when failed); ``C_index`` its position.
    error_train, error_valid, error_test : float
        Top-1 error at the chosen C (test NaN when no test split).
    top5_error_train, top5_error_valid, top5_error_test : float
        Top-5 error; NaN unless ``n_classes > 5``.
    ce_train, ce_valid, ce_test : float
        Mean cross-entropy (nats), as ``sklearn.metrics.log_loss(labels=range(K))``.
    coef : ndarray (K, F), intercept : ndarray (K,)
        Probe on raw features at the chosen C.
    status : str
        ``"converged"``, ``"max_iter"``, ``"stalled"`` (for the chosen C) or ``"failed"``.
    message : str
    n_iter : int
        L-BFGS iterations at the chosen C.
    path : dict of ndarray (A,)
        ``error_<split>``, ``top5_error_<split>``, ``ce_<split>``, ``n_iter``,
        ``grad_max``, ``status``.
    path_coef : ndarray (A, K, F), path_intercept : ndarray (A, K)
        Solution at every C: pass the result dict as ``warm_start`` of the next block.
    n_classes : int
    method : str
        ``"primal"`` or ``"rowspace"`` (F > n_train).
    """

    Cs: np.ndarray
    C: float
    C_index: int
    error_train: float
    error_valid: float
    error_test: float
    top5_error_train: float
    top5_error_valid: float
    top5_error_test: float
    ce_train: float
    ce_valid: float
    ce_test: float
    coef: np.ndarray
    intercept: np.ndarray
    status: str
    message: str
    n_iter: int
    path: dict[str, np.ndarray]
    path_coef: np.ndarray
    path_intercept: np.ndarray
    n_classes: int
    method: str

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def summary(self) -> dict:
        """Flat dict of scalars (a results-table row)."""
        keys = ["C", *(f"{m}_{s}" for m in _METRICS for s in _SPLITS)]
        return {"status": self.status, "message": self.message, "n_iter": int(self.n_iter),
                "method": self.method, **{k: float(getattr(self, k)) for k in keys}}


# --------------------------------------------------------------------------- the batched objective


def _loss_grad(X, Yidx, theta, inv_cn, mask_add, dtype):
    """Scaled objective and gradient of P multinomial problems sharing ``X``.

    ``theta`` is (P, F+1, K) float64 (last row: intercepts); ``Yidx`` (n, P) labels;
    ``mask_add`` (P, K) is 0, or -inf for classes absent from that problem's train labels.

    The logits, the softmax and the residuals stay in ``dtype`` (the precision of the
    GEMMs that produce and consume them: with 1,000 classes a float64 ``exp`` over the
    ``n × K`` logits cost a third of the GEMMs); the sums that make the loss, the
    normalizers and the intercept gradient accumulate in float64.
    """
    dtype = np.dtype(dtype)
    n, F = X.shape
    P, _, K = theta.shape
    W = np.ascontiguousarray(theta[:, :F, :].transpose(1, 0, 2), dtype=dtype).reshape(F, P * K)
    Z = (X @ W).reshape(n, P, K).astype(dtype, copy=False)
    Z += (theta[:, F, :] + mask_add).astype(dtype)[None, :, :]
    zmax = Z.max(axis=2, keepdims=True)
    Z -= zmax
    rows = np.arange(n)[:, None]
    cols = np.arange(P)[None, :]
    z_y = Z[rows, cols, Yidx].astype(np.float64)
    E = np.exp(Z, out=Z)
    S = E.sum(axis=2, keepdims=True, dtype=np.float64)
    ce = np.mean(np.log(S[..., 0]) - z_y, axis=0)
    R = E
    R *= (1.0 / S).astype(dtype)
    R[rows, cols, Yidx] -= 1.0
    gW = (X.T @ R.reshape(n, P * K)).reshape(F, P, K)
    gW *= dtype.type(1.0 / n)
    Wp = theta[:, :F, :]
    f = ce + 0.5 * inv_cn * np.einsum("pfk,pfk->p", Wp, Wp)
    g = np.empty_like(theta)
    g[:, :F, :] = gW.transpose(1, 0, 2) + inv_cn[:, None, None] * Wp
    g[:, F, :] = R.sum(axis=0, dtype=np.float64) / n
    return f, g


def _lbfgs(fun, theta0, *, tol, max_iter, f_noise):
    """Vectorised L-BFGS over P independent problems (rows of ``theta0``, shape (P, D)).

    ``fun(theta_subset, index) -> (f, g)``. Each problem has its own history, step
    length and stopping test; only problems still running are evaluated. Steps satisfy
    Armijo, or Hager & Zhang's approximate Wolfe condition (``f`` within ``f_noise``
    relative, slope reduced), which keeps the line search working at the rounding floor
    of float32 GEMMs.
    """
    P, D = theta0.shape
    theta = theta0.copy()
    f, g = fun(theta, np.arange(P))
    hist = _History(P, D)
    fresh = np.ones(P, dtype=bool)  # no curvature pair yet: scale the first step
    n_iter = np.zeros(P, dtype=np.int64)
    status = np.full(P, "max_iter", dtype=object)
    active = np.abs(g).max(axis=1) > tol
    status[~active] = "converged"
    for _ in range(max_iter):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        gi = g[idx]
        d = hist.direction(gi, idx)
        gd = np.einsum("pd,pd->p", gi, d)
        bad = ~(gd < 0)
        if bad.any():  # lost descent: restart from steepest descent
            d[bad] = -gi[bad]
            gd[bad] = -np.einsum("pd,pd->p", gi[bad], gi[bad])
            hist.reset(idx[bad])
            fresh[idx[bad]] = True
        t = np.ones(idx.size)
        first = fresh[idx]
        t[first] = np.minimum(1.0, 1.0 / np.sqrt(-gd[first]))
        new_theta, new_f, new_g, pend = _line_search(fun, theta, f, idx, d, gd, t, f_noise, gi.dtype)
        ok = np.ones(idx.size, dtype=bool)
        ok[pend] = False
        status[idx[pend]] = "stalled"
        active[idx[pend]] = False
        acc_idx = idx[ok]
        s = new_theta[ok] - theta[acc_idx]
        y = new_g[ok] - g[acc_idx]
        upd = hist.push(acc_idx, s, y)
        fresh[acc_idx[upd]] = False
        theta[acc_idx], f[acc_idx], g[acc_idx] = new_theta[ok], new_f[ok], new_g[ok]
        n_iter[acc_idx] += 1
        conv = acc_idx[np.abs(g[acc_idx]).max(axis=1) <= tol]
        status[conv] = "converged"
        active[conv] = False
    return theta, f, n_iter, status, np.abs(g).max(axis=1)


class _History:
    """The curvature pairs of P problems, used in L-BFGS's compact form (Byrd, Nocedal & Schnabel 1994).

    Each problem keeps its last ``_HISTORY`` pairs as one ``(2·_HISTORY, D)`` block,
    ``[s_0 … s_9; y_0 … y_9]`` (a ring: slot ``count % _HISTORY`` is overwritten), plus the
    small matrices ``S^T Y`` and ``Y^T Y``. Then ``H g`` takes one matrix-vector product
    with the block to get ``S^T g, Y^T g``, a 10×10 triangular solve, and one more
    product to combine the pairs: two streaming passes over the history instead of the
    two-loop recursion's forty dot products and updates. With 1,000 classes a problem has
    a million parameters, and the recursion cost as much as the gradient itself. A
    pair with too little curvature (``s·y <= 1e-10 y·y``) is stored but not used.
    """

    def __init__(self, P: int, D: int) -> None:
        H = _HISTORY
        self.V = np.zeros((P, 2 * H, D))
        self.SY = np.zeros((P, H, H))  # SY[p, i, j] = s_i·y_j, kept where pair i is not newer than pair j
        self.YY = np.zeros((P, H, H))
        self.valid = np.zeros((P, H), dtype=bool)
        self.age = np.zeros((P, H), dtype=np.int64)
        self.gamma = np.ones(P)
        self.count = 0

    def reset(self, idx: np.ndarray) -> None:
        """Forget the pairs of problems ``idx`` (after a direction that was not descent)."""
        self.valid[idx] = False

    def push(self, idx: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Store the new pair of each problem in ``idx``; returns where it has enough curvature."""
        H = _HISTORY
        slot = self.count % H
        self.count += 1
        upd = np.zeros(idx.size, dtype=bool)
        for q, p in enumerate(idx):
            V = self.V[p]
            V[slot], V[H + slot] = s[q], y[q]
            dots = V @ y[q]  # s_i·y_new and y_i·y_new for every slot, the new one included
            sy, yy = dots[slot], dots[H + slot]
            upd[q] = sy > 1e-10 * yy
            self.SY[p, :, slot] = dots[:H]
            self.YY[p, :, slot] = self.YY[p, slot, :] = dots[H:]
            self.valid[p, slot] = upd[q]
            self.age[p, slot] = self.count
            if upd[q]:
                self.gamma[p] = sy / yy
        return upd

    def direction(self, gi: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``-H g`` for the problems ``idx`` (rows of ``gi``) from their stored pairs."""
        H = _HISTORY
        d = np.empty_like(gi)
        for q, p in enumerate(idx):
            gamma = self.gamma[p]
            c = np.flatnonzero(self.valid[p])
            if c.size == 0:
                np.multiply(gi[q], -gamma, out=d[q])
                continue
            c = c[np.argsort(self.age[p, c])]  # oldest first
            ab = self.V[p] @ gi[q]
            a, b = ab[c], ab[H + c]
            R = np.triu(self.SY[p][np.ix_(c, c)])
            u = np.linalg.solve(R, a)
            p1 = np.linalg.solve(R.T, np.diag(R) * u + gamma * (self.YY[p][np.ix_(c, c)] @ u) - gamma * b)
            coef = np.zeros(2 * H)
            coef[c], coef[H + c] = p1, -gamma * u
            np.multiply(gi[q], gamma, out=d[q])
            d[q] += coef @ self.V[p]
            np.negative(d[q], out=d[q])
        return d


def _line_search(fun, theta, f, idx, d, gd, t, f_noise, dtype):
    """Backtrack each problem's step ``t`` along ``d`` until Armijo or approximate Wolfe holds.

    Rejected steps shrink by safeguarded quadratic interpolation (to [0.1 t, 0.5 t]), at
    most ``_MAX_LINESEARCH`` times. Returns the accepted points, values and gradients
    (rows of ``idx``; points and gradients in ``dtype``, the gradients' precision), and the
    positions in ``idx`` whose search failed (stalled).
    """
    pend = np.arange(idx.size)
    new_theta = np.empty(d.shape, dtype=dtype)
    new_f = np.empty(idx.size)
    new_g = np.empty(d.shape, dtype=dtype)
    for _ls in range(_MAX_LINESEARCH):
        pi = idx[pend]
        th = theta[pi] + t[pend, None] * d[pend]
        fn, gn = fun(th, pi)
        f0, gd0 = f[pi], gd[pend]
        armijo = fn <= f0 + _C1 * t[pend] * gd0
        slope = np.einsum("pd,pd->p", gn, d[pend])
        approx = (fn <= f0 + f_noise * np.abs(f0)) & (slope <= (2 * _DELTA - 1) * gd0)
        acc = np.isfinite(fn) & (armijo | approx)
        done = pend[acc]
        new_theta[done], new_f[done], new_g[done] = th[acc], fn[acc], gn[acc]
        rej = pend[~acc]
        if rej.size == 0:
            pend = rej
            break
        # quadratic interpolation of the rejected steps, safeguarded to [0.1 t, 0.5 t]
        tr, fr, f0r, gdr = t[rej], fn[~acc], f0[~acc], gd0[~acc]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            tq = -gdr * tr**2 / (2.0 * (fr - f0r - gdr * tr))
        tq = np.where(np.isfinite(tq), tq, 0.1 * tr)
        t[rej] = np.clip(tq, 0.1 * tr, 0.5 * tr)
        pend = rej
    return new_theta, new_f, new_g, pend


# --------------------------------------------------------------------------- validation


def _check_X(X, name, n_features):
    if X is None:
        return None
    X = np.asarray(X)
    if X.ndim != 2:
        raise DataError("features must be 2-D", where=f"X_{name}", expected="(n_samples, n_features)",
                        got=f"shape {X.shape}", fix="flatten spatial dimensions first")
    if X.shape[0] == 0:
        raise DataError(f"the {name} split is empty", where=f"X_{name}", expected="at least one row",
                        got="0 rows", fix="check the split assignment of this dataset")
    if n_features is not None and X.shape[1] != n_features:
        raise DataError("splits have different feature counts", where=f"X_{name}",
                        expected=f"{n_features} features (as train)", got=X.shape[1])
    finite = np.isfinite(X)
    if not finite.all():
        rows, cols = np.nonzero(~finite)
        raise DataError("features contain NaN or Inf", where=f"X_{name}", expected="finite activations",
                        got=f"{rows.size} non-finite values (first at row {rows[0]}, feature {cols[0]})",
                        fix="check the extraction of this layer (overflow, NaN weights in the checkpoint)")
    return X


def _check_labels(name, ys, Xs, n_classes):
    """Return (labels per split as intp or None, failure message or "")."""
    if not isinstance(ys, (tuple, list)) or len(ys) != 3:
        raise ConfigError("a label set must be (y_train, y_valid, y_test)", where=f"label_sets[{name!r}]",
                          expected="a 3-tuple (y_test may be None)", got=type(ys).__name__)
    out = []
    for split, y, X in zip(_SPLITS, ys, Xs):
        if X is None or y is None:
            if (X is None) != (y is None):
                raise DataError("labels and features disagree on whether the split exists",
                                where=f"label_sets[{name!r}] {split}",
                                expected="both given or both None", got=f"X {'None' if X is None else 'given'}, "
                                f"y {'None' if y is None else 'given'}")
            out.append(None)
            continue
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise DataError("labels do not line up with features", where=f"label_sets[{name!r}] {split}",
                            expected=f"shape ({X.shape[0]},)", got=f"shape {y.shape}")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                return None, f"{split} labels are not all finite integers"
        elif y.dtype.kind not in "iub":
            return None, f"{split} labels have dtype {y.dtype}, expected integers"
        yi = y.astype(np.intp)
        if yi.min() < 0 or yi.max() >= n_classes:
            return None, f"{split} labels span [{yi.min()}, {yi.max()}], outside [0, {n_classes})"
        out.append(yi)
    present = np.unique(out[0])
    if present.size < 2:
        return None, f"a single class ({present[0]}) in the train labels: no classifier to fit"
    return out, ""


# --------------------------------------------------------------------------- the block solver


def _scores(logits, y, n_classes):
    if y is None:
        return {"error": np.nan, "top5_error": np.nan, "ce": np.nan}
    return {
        "error": top_k_error(logits, y, 1),
        "top5_error": top_k_error(logits, y, 5) if n_classes > 5 else np.nan,
        "ce": cross_entropy(logits, y, n_classes),
    }


def _warm_candidate(warm, C, std, basis, F, K, name):
    """The previous block's solution at this C, in the current standardized space."""
    if warm is None or not getattr(warm, "ok", True):
        return None
    pc = np.asarray(warm.path_coef)
    if pc.shape[1:] != (K, F):
        raise ConfigError("warm_start does not fit this block", where=f"warm_start[{name!r}]",
                          expected=f"coefficients of shape (A, {K}, {F})", got=f"shape {pc.shape}",
                          fix="pass the result of the same layer and label set, or None")
    match = np.nonzero(np.isclose(np.asarray(warm.Cs), C, rtol=1e-9, atol=0))[0]
    if match.size == 0:
        return None
    j = match[0]
    if not np.all(np.isfinite(pc[j])):
        return None
    w, b = std.coef_to_standardized(pc[j], warm.path_intercept[j])  # (K, F), (K,)
    b = np.where(np.isfinite(b), b, 0.0)
    w = w.T if basis is None else basis.T @ w.T
    return np.vstack([w, b[None, :]])


def fit_logistic_block(
    X_train,
    X_valid,
    X_test,
    label_sets: Mapping[str, tuple],
    Cs: Sequence[float] = DEFAULT_CS,
    *,
    n_classes: int,
    max_iter: int = 500,
    tol: float = 1e-6,
    dtype=np.float32,
    warm_start: Mapping[str, LogisticResult] | None = None,
    fixed_C: Mapping[str, str | float] | None = None,
) -> dict[str, LogisticResult]:
    """Fit, select and score multinomial probes for every label set of one block.

    Parameters
    ----------
    X_train, X_valid, X_test : ndarray (n_split, F)
        Layer activations; ``X_test`` may be None.
    label_sets : mapping name -> (y_train, y_valid, y_test)
        Integer labels in ``[0, n_classes)`` (``y_test`` None iff ``X_test`` is None),
        e.g. ``{"true": ..., "control": ...}``.
    Cs : sequence of float
        Inverse regularization strengths (scikit-learn's ``C``).
    n_classes : int
        K, fixed for every label set and split (classes may be absent from a split).
    max_iter : int
        L-BFGS iterations per C.
    tol : float
        Stop when ``max |gradient|`` of ``mean CE + ||W||² / (2 C n)`` is ``<= tol``.
    dtype : numpy dtype
        GEMM precision (float32 default; float64 for tolerances below ~1e-5).
    warm_start : mapping name -> LogisticResult, optional
        The previous checkpoint's results for the same layer: used, per C, when its
        objective beats the solution at the previous C.
    fixed_C : mapping name -> str or float, optional
        Label sets fitted at one C instead of along the grid: a float, or the *name of
        another label set*, meaning the C selected for that set (Hewitt & Liang's
        control probe keeps the task probe's complexity). They are solved after the
        grid, together in one batched L-BFGS, each started from whichever is lower in
        its objective: zero weights with log-prior intercepts, or a grid solution of
        another label set at the same C. Their ``path`` holds values at ``C_index``
        only (NaN elsewhere; ``C_index`` is -1 for a C outside the grid).

    Returns
    -------
    dict of name -> LogisticResult

    Raises
    ------
    DataError
        NaN/Inf features, empty train/valid, misaligned labels, or no usable label set.
    ConfigError
        Bad ``Cs``, ``n_classes``, ``max_iter``, ``tol``, ``warm_start`` or ``fixed_C``.
    """
    _check_options(n_classes, tol, max_iter, label_sets)
    C_grid = check_Cs(Cs)
    fixed = _check_fixed(fixed_C, label_sets)
    K = int(n_classes)
    dtype = np.dtype(dtype)
    X_train = _check_X(X_train, "train", None)
    F = X_train.shape[1]
    Xraw = (X_train, _check_X(X_valid, "valid", F), _check_X(X_test, "test", F))
    labels, failures = _usable_label_sets(label_sets, Xraw, K)
    space = _working_space(Xraw, labels, K, dtype)
    method = "primal" if space.basis is None else "rowspace"

    names = [nm for nm in labels if nm not in fixed]
    path = {nm: _empty_path(C_grid.size) for nm in labels}
    thetas = _walk_grid(space, names, C_grid, path, warm_start, tol=tol, max_iter=max_iter)
    results = {}
    for p, nm in enumerate(names):
        i = int(np.argmin(path[nm]["ce_valid"]))  # first minimum: the smaller C wins ties
        coef, intercept = space.to_original(thetas[:, p], nm)
        results[nm] = _result(C_grid, i, float(C_grid[i]), path[nm], coef, intercept, K, method)

    fixed_usable = [nm for nm in labels if nm in fixed]
    if fixed_usable:
        _fit_fixed(space, {nm: fixed[nm] for nm in fixed_usable}, results, failures, thetas, C_grid, path,
                   warm_start, tol=tol, max_iter=max_iter, method=method)
    for nm, why in failures.items():
        results[nm] = _failed(C_grid, K, F, why, method)
    return {nm: results[nm] for nm in label_sets}


def _check_options(n_classes, tol: float, max_iter: int, label_sets: Mapping[str, tuple]) -> None:
    """ConfigError for a class count, tolerance, iteration budget or label-set map that cannot work."""
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ConfigError("n_classes must be an integer >= 2", where="n_classes", got=repr(n_classes))
    if not (tol > 0 and max_iter >= 1):
        raise ConfigError("tol must be > 0 and max_iter >= 1", where="fit_logistic_block",
                          got=f"tol={tol}, max_iter={max_iter}")
    if not label_sets:
        raise ConfigError("no label sets given", where="label_sets", expected="at least one")


def _usable_label_sets(label_sets: Mapping[str, tuple], Xraw, K: int) -> tuple[dict, dict[str, str]]:
    """Checked labels of the sets that can be fitted, and why each other set cannot.

    A set that cannot be fitted (e.g. one class in train) becomes a failed result, not
    an error, unless no set at all can be fitted (DataError).
    """
    labels, failures = {}, {}
    for name, ys in label_sets.items():
        lab, why = _check_labels(name, ys, Xraw, K)
        if lab is None:
            failures[name] = why
        else:
            labels[name] = lab
    if not labels:
        raise DataError("no label set can be fitted", where="label_sets",
                        got="; ".join(f"{k}: {v}" for k, v in failures.items()),
                        fix="check the labels of this dataset / run")
    return labels, failures


def _working_space(Xraw, labels: dict, K: int, dtype: np.dtype) -> _Space:
    """Train-standardized features in the working precision, in their row space when F > n.

    With more features than train rows, an L2-penalized solution lies in the row space
    of the train features, so solving there (``rowspace``) is exact and cheaper.
    """
    X_train = Xraw[0]
    F, n = X_train.shape[1], X_train.shape[0]
    std = Standardizer.fit(X_train)
    basis = None
    if F > n:  # row space of the standardized train features (exact for an L2 penalty)
        Xs = [None if X is None else std.transform(X) for X in Xraw]
        X0 = Xs[0]
        assert X0 is not None, "X_train was validated above"
        basis, _ = np.linalg.qr(X0.T)
        Xs = [None if X is None else X @ basis for X in Xs]
        Xw = [None if X is None else np.ascontiguousarray(X, dtype=dtype) for X in Xs]
    else:  # straight into the working precision (no float64 copy of each split)
        Xw = [None if X is None else std.transform(X, dtype) for X in Xraw]
    Xw0 = Xw[0]
    assert Xw0 is not None, "X_train was validated above"
    return _Space(Xw, std, basis, F, Xw0.shape[1], K, n, dtype, labels)


def _walk_grid(space: _Space, names: list[str], C_grid: np.ndarray, path: dict, warm_start, *,
               tol: float, max_iter: int) -> np.ndarray:
    """Solve the label sets ``names`` together at each C, from the strongest penalty up.

    Each C starts from the previous C's solution, or from the ``warm_start`` results
    where their objective is lower. Fills ``path`` and returns the solutions, shape
    ``(len(C_grid), len(names), Fw + 1, K)``.
    """
    P, A, n = len(names), C_grid.size, space.n
    thetas = np.zeros((A, P, space.Fw + 1, space.K))
    prev = np.zeros((P, space.Fw + 1, space.K))
    fun_of = space.problems(names)
    keep = space.keep(names)
    for a, C in enumerate(C_grid):
        if P == 0:
            break
        inv_cn = np.full(P, 1.0 / (C * n))
        fun = fun_of(inv_cn)
        init = prev * keep[:, None, :]
        if warm_start:
            cand = np.array(init)
            use = np.zeros(P, dtype=bool)
            for p, nm in enumerate(names):
                w = _warm_candidate(warm_start.get(nm), C, space.std, space.basis, space.F, space.K, nm)
                if w is not None:
                    cand[p], use[p] = w * keep[p][None, :], True
            if use.any():
                init = _lower_objective(fun, [init, cand], use)
        theta = space.solve(fun, init, tol, max_iter)
        prev = theta
        thetas[a] = theta
        space.record(path, names, theta, a)
    return thetas


def _fit_fixed(space, fixed, results, failures, thetas, C_grid, path, warm_start, *, tol, max_iter, method):
    """Solve the label sets of ``fixed_C`` at their one C, together, after the grid.

    Each starts from the lowest-objective candidate among zero weights with log-prior
    intercepts, a grid set's solution at the same C, and ``warm_start``. Adds to
    ``results`` (or to ``failures`` when the referenced set failed).
    """
    std, basis, F, Fw, K, n = space.std, space.basis, space.F, space.Fw, space.K, space.n
    P, A = thetas.shape[1], C_grid.size
    Cf = {}
    for nm, ref in fixed.items():
        if isinstance(ref, str):
            if ref not in results:
                failures[nm] = (f"fitted at the C selected for {ref!r}, which failed: "
                                f"{failures.get(ref, 'no such label set')}")
                continue
            Cf[nm] = results[ref].C
        else:
            Cf[nm] = float(ref)
    fnames = list(Cf)
    if not fnames:
        return
    Cvec = np.array([Cf[nm] for nm in fnames])
    fun = space.problems(fnames)(1.0 / (Cvec * n))
    fkeep = space.keep(fnames)
    cands: list[np.ndarray] = [space.prior_init(fnames)]
    gates: list[np.ndarray] = []
    for p_ref in range(P):  # grid solutions of other label sets at the same C
        cand = np.zeros((len(fnames), Fw + 1, K))
        ok = np.zeros(len(fnames), dtype=bool)
        for q, nm in enumerate(fnames):
            j = np.nonzero(np.isclose(C_grid, Cf[nm], rtol=1e-12, atol=0))[0]
            if j.size:
                cand[q], ok[q] = thetas[j[0], p_ref] * fkeep[q][None, :], True
        cands.append(cand)
        gates.append(ok)
    if warm_start:
        cand = np.zeros((len(fnames), Fw + 1, K))
        ok = np.zeros(len(fnames), dtype=bool)
        for q, nm in enumerate(fnames):
            w = _warm_candidate(warm_start.get(nm), Cf[nm], std, basis, F, K, nm)
            if w is not None:
                cand[q], ok[q] = w * fkeep[q][None, :], True
        cands.append(cand)
        gates.append(ok)
    init = _lower_objective(fun, cands, *gates) if len(cands) > 1 else cands[0]
    theta = space.solve(fun, init, tol, max_iter)
    scored = space.record(None, fnames, theta, None)
    for q, nm in enumerate(fnames):
        j = np.nonzero(np.isclose(C_grid, Cf[nm], rtol=1e-12, atol=0))[0]
        i = int(j[0]) if j.size else -1
        scores = scored[nm]
        pth = path[nm]
        coef1, icpt1 = space.to_original(theta[q:q + 1], nm)
        coef = np.full((A, K, F), np.nan)
        intercept = np.full((A, K), np.nan)
        if i >= 0:
            for k, v in scores.items():
                pth[k][i] = v
            coef[i], intercept[i] = coef1[0], icpt1[0]
        results[nm] = _result(C_grid, i, Cf[nm], pth, coef, intercept, K, method,
                              chosen={k: v for k, v in scores.items()
                                      if k not in ("n_iter", "grad_max", "status")},
                              at=(coef1[0], icpt1[0], scores["status"], int(scores["n_iter"])))


def _check_fixed(fixed_C, label_sets) -> dict[str, str | float]:
    """Validate ``fixed_C``: known label sets, each fixed to a C > 0 or to a grid-fitted set."""
    out: dict[str, str | float] = {}
    for name, ref in (fixed_C or {}).items():
        if name not in label_sets:
            raise ConfigError("fixed_C names an unknown label set", where=f"fixed_C[{name!r}]",
                              expected=", ".join(map(repr, label_sets)), got=repr(name))
        if isinstance(ref, str):
            if ref not in label_sets or (fixed_C or {}).get(ref) is not None:
                raise ConfigError("fixed_C must refer to a label set fitted along the grid",
                                  where=f"fixed_C[{name!r}]", expected="a label set not in fixed_C",
                                  got=repr(ref), fix="fix the reference set to its own grid, or give a float C")
        elif not (isinstance(ref, (int, float, np.floating, np.integer)) and np.isfinite(ref) and ref > 0):
            raise ConfigError("a fixed C must be a finite number > 0", where=f"fixed_C[{name!r}]", got=repr(ref))
        out[name] = ref if isinstance(ref, str) else float(ref)
    return out


def _empty_path(A: int) -> dict[str, np.ndarray]:
    path = {f"{m}_{s}": np.full(A, np.nan) for m in _METRICS for s in _SPLITS}
    path.update(n_iter=np.zeros(A, dtype=np.int64), grad_max=np.full(A, np.nan),
                status=np.empty(A, dtype=object))
    return path


def _lower_objective(fun, candidates, *use):
    """Per problem, the candidate start with the lowest objective (``use[j]`` gates candidate j+1)."""
    P = candidates[0].shape[0]
    best = np.array(candidates[0])
    best_f, _ = fun(best.reshape(P, -1), np.arange(P))
    for cand, ok in zip(candidates[1:], use):
        if not ok.any():
            continue
        f, _ = fun(np.asarray(cand).reshape(P, -1), np.arange(P))
        better = ok & (f < best_f)
        best[better] = cand[better]
        best_f = np.where(better, f, best_f)
    return best


def _result(C_grid, i, C, path, coef, intercept, K, method, *, chosen=None, at=None) -> LogisticResult:
    """A LogisticResult at grid index ``i`` (or at a fixed C given by ``chosen`` / ``at``)."""
    if chosen is None:
        chosen = {k: path[k][i] for k in path if k not in ("n_iter", "grad_max", "status")}
    if at is None:
        at = (coef[i], intercept[i], str(path["status"][i]), int(path["n_iter"][i]))
    return LogisticResult(
        Cs=C_grid, C=float(C), C_index=int(i), coef=at[0], intercept=at[1], status=str(at[2]), message="",
        n_iter=int(at[3]), path=path, path_coef=coef, path_intercept=intercept, n_classes=K, method=method,
        **{k: float(v) for k, v in chosen.items()},
    )


class _Space:
    """The standardized (row-space) problem of one block, shared by every label set."""

    def __init__(self, Xw, std, basis, F, Fw, K, n, dtype, labels):
        self.Xw, self.std, self.basis = Xw, std, basis
        self.F, self.Fw, self.K, self.n, self.dtype = F, Fw, K, n, dtype
        self.labels = labels
        self.f_noise = 100 * float(np.finfo(dtype).eps)
        self.D = (Fw + 1) * K
        self._mask = {}
        for nm, lab in labels.items():
            m = np.zeros(K)
            m[np.setdiff1d(np.arange(K), np.unique(lab[0]))] = -np.inf
            self._mask[nm] = m

    def mask(self, names) -> np.ndarray:
        """(P, K): 0, or -inf for classes absent from that set's train labels."""
        return np.stack([self._mask[nm] for nm in names]) if names else np.zeros((0, self.K))

    def keep(self, names) -> np.ndarray:
        """(P, K): True where a class is present in that set's train labels."""
        return np.isfinite(self.mask(names))

    def problems(self, names):
        """``inv_cn -> fun(theta, index)``: the batched objective of these label sets."""
        Yidx = np.stack([self.labels[nm][0] for nm in names], axis=1) if names else None
        mask_add = self.mask(names)
        keep = np.isfinite(mask_add)
        Fw, K, D, X0, dtype = self.Fw, self.K, self.D, self.Xw[0], self.dtype

        def make(inv_cn):
            inv_cn = np.asarray(inv_cn, dtype=np.float64)

            def fun(th, index):
                th3 = th.reshape(-1, Fw + 1, K) * keep[index, None, :]
                f, g = _loss_grad(X0, Yidx[:, index], th3, inv_cn[index], mask_add[index], dtype)
                return f, (g * keep[index, None, :]).reshape(len(index), D)

            fun.keep = keep  # type: ignore[attr-defined]
            return fun

        return make

    def solve(self, fun, init, tol, max_iter):
        """Run the batched L-BFGS from ``init`` (P, Fw+1, K); keep statuses for :meth:`record`."""
        P = init.shape[0]
        keep = fun.keep
        theta, _, n_iter, status, gmax = _lbfgs(fun, (init * keep[:, None, :]).reshape(P, self.D), tol=tol,
                                                max_iter=int(max_iter), f_noise=self.f_noise)
        self._last = (n_iter, status, gmax)
        return theta.reshape(P, self.Fw + 1, self.K) * keep[:, None, :]

    def prior_init(self, names) -> np.ndarray:
        """Zero weights, intercepts at the log class frequencies of each set's train labels."""
        out = np.zeros((len(names), self.Fw + 1, self.K))
        for q, nm in enumerate(names):
            counts = np.bincount(self.labels[nm][0], minlength=self.K).astype(np.float64)
            with np.errstate(divide="ignore"):
                b = np.log(counts / counts.sum())
            present = counts > 0
            out[q, self.Fw, present] = b[present] - b[present].mean()
        return out

    def record(self, path, names, theta, a):
        """Score ``theta`` (P, Fw+1, K) on every split; into ``path[nm][...][a]`` or returned."""
        P, Fw, K = len(names), self.Fw, self.K
        mask_add = self.mask(names)
        Wflat = np.ascontiguousarray(theta[:, :Fw, :].transpose(1, 0, 2), dtype=self.dtype).reshape(Fw, P * K)
        n_iter, status, gmax = self._last
        out = {nm: {"n_iter": n_iter[p], "grad_max": gmax[p], "status": status[p]} for p, nm in enumerate(names)}
        for si, split in enumerate(_SPLITS):
            Xs = self.Xw[si]
            for nm in names:
                out[nm].update({f"{m}_{split}": np.nan for m in _METRICS})
            if Xs is None:
                continue
            Z = (Xs @ Wflat).reshape(-1, P, K).astype(np.float64) + (theta[:, Fw, :] + mask_add)[None]
            for p, nm in enumerate(names):
                for m, v in _scores(Z[:, p, :], self.labels[nm][si], K).items():
                    out[nm][f"{m}_{split}"] = v
        if path is not None:
            for nm in names:
                for k, v in out[nm].items():
                    path[nm][k][a] = v
        return out

    def to_original(self, theta, name):
        """(A, Fw+1, K) standardized solutions -> raw-feature ``coef`` (A, K, F), ``intercept`` (A, K)."""
        Fw = self.Fw
        w_std = theta[:, :Fw, :]
        if self.basis is not None:
            w_std = np.einsum("fr,ark->afk", self.basis, w_std)
        present = np.isfinite(self._mask[name])
        b = theta[:, Fw, :]
        b = b - b[:, present].mean(axis=1, keepdims=True)
        coef, intercept = self.std.coef_to_original(w_std.transpose(0, 2, 1), b)
        intercept[:, ~present] = -np.inf
        coef[:, ~present, :] = 0.0
        return coef, intercept


def inner_split(y: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Seeded stratified held-out mask: ``round(fraction · m)`` of each class's ``m`` samples.

    A class with a single sample stays in the fitting part (it could not be both fitted
    and scored). With ``groups`` (the sequence id of token rows, SCHEMA.md §12) whole
    sequences are held out instead, seeded, until ``fraction`` of the rows is: the
    tokens of one sentence are never on both sides (not stratified: a sentence holds
    several classes).
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    if groups is not None:
        ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
        sizes = np.bincount(inverse)
        order = rng.permutation(ids.size)
        n_held = int(np.searchsorted(np.cumsum(sizes[order]), fraction * y.size, side="left")) + 1
        chosen = np.zeros(ids.size, dtype=bool)
        chosen[order[:min(n_held, ids.size - 1)]] = True
        return chosen[inverse]
    held = np.zeros(y.size, dtype=bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * members.size)) if members.size > 1 else 0
        held[members[:k]] = True
    return held


def select_C_inner(X_train, y_train, Cs: Sequence[float], *, n_classes: int, fraction: float = 0.2,
                   seed: int = 0, groups: np.ndarray | None = None, **solver) -> tuple[float, int, np.ndarray]:
    """Choose C for a label set on held-out samples that carry *that* label set.

    The probe on a memorizing run's training labels must not be selected on the true
    validation labels (on a run that memorized random labels, every C is equally bad
    there and the strongest regularization wins). Instead: a seeded split of the train
    rows stratified by ``y_train`` (``fraction`` held out per class; a class with one
    sample stays in the fitting part), the path fitted on the rest, C chosen by the
    held-out cross-entropy (ties -> the smaller C), as :func:`fit_logistic_block` does
    on the valid split. The caller refits on all train rows at that C.

    Returns
    -------
    C : float
    index : int
        Position of C in the sorted grid.
    ce_inner : ndarray (A,)
        Held-out cross-entropy along the grid.

    Raises
    ------
    DataError
        Too few samples for a held-out part, or a single class in the fitting part.
    """
    y = np.asarray(y_train).astype(np.intp)
    held = inner_split(y, fraction, seed, groups)
    if not held.any() or held.all():
        raise DataError("too few train samples for an inner validation split", where="select_C_inner",
                        expected=f"a {fraction:.0%} held-out part and a fitting part", got=f"{y.size} samples")
    X = np.asarray(X_train)
    res = fit_logistic_block(X[~held], X[held], None, {"y": (y[~held], y[held], None)}, Cs,
                             n_classes=n_classes, **solver)["y"]
    if not res.ok:
        raise DataError("the inner-split probe cannot be fitted", where="select_C_inner", got=res.message)
    return res.C, res.C_index, res.path["ce_valid"]


def _failed(Cs, K, F, why, method) -> LogisticResult:
    nan = float("nan")
    A = Cs.size
    path = {f"{m}_{s}": np.full(A, np.nan) for m in _METRICS for s in _SPLITS}
    path.update(n_iter=np.zeros(A, dtype=np.int64), grad_max=np.full(A, np.nan),
                status=np.full(A, "failed", dtype=object))
    return LogisticResult(
        Cs=Cs, C=nan, C_index=-1, error_train=nan, error_valid=nan, error_test=nan,
        top5_error_train=nan, top5_error_valid=nan, top5_error_test=nan, ce_train=nan,
        ce_valid=nan, ce_test=nan, coef=np.full((K, F), np.nan), intercept=np.full(K, np.nan),
        status="failed", message=why, n_iter=0, path=path, path_coef=np.full((A, K, F), np.nan),
        path_intercept=np.full((A, K), np.nan), n_classes=K, method=method,
    )
