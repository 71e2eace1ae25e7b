"""The classifier solver's paper-scale changes (issue 16): float32 softmax, compact L-BFGS.

With 1,000 classes a problem has a million parameters: the softmax now runs in the GEMM
precision (its sums in float64) and L-BFGS uses the compact form of its inverse Hessian
(two passes over the history instead of the two-loop recursion's forty). Both must leave
the numbers where they were: the same objective and gradient as a float64 evaluation,
the same direction as the two-loop recursion, and probes that still agree with
scikit-learn when there are many classes and few samples per class.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from analyze.solvers.logistic import _HISTORY, _History, _loss_grad, fit_logistic_block


def _problem(n=300, F=12, K=40, P=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, F))
    Y = rng.integers(0, K, size=(n, P))
    theta = rng.standard_normal((P, F + 1, K)) * 0.3
    mask = np.zeros((P, K))
    mask[1, :3] = -np.inf  # classes absent from the second problem's train labels
    Y[:, 1] = np.maximum(Y[:, 1], 3)
    return X, Y, theta, np.array([1e-2, 1e-3]), mask


def test_float32_softmax_matches_float64_objective_and_gradient():
    X, Y, theta, inv_cn, mask = _problem()
    f64, g64 = _loss_grad(X, Y, theta, inv_cn, mask, np.float64)
    f32, g32 = _loss_grad(X.astype(np.float32), Y, theta, inv_cn, mask, np.float32)
    assert f32.dtype == np.float64 and g32.dtype == np.float64  # accumulated in float64
    np.testing.assert_allclose(f32, f64, rtol=1e-6)
    np.testing.assert_allclose(g32, g64, atol=1e-6 * np.abs(g64).max())
    F = X.shape[1]
    for g in (g64, g32):  # absent classes: no data term (only the penalty), no intercept gradient
        np.testing.assert_allclose(g[1, :F, :3], inv_cn[1] * theta[1, :F, :3], rtol=1e-12, atol=1e-15)
        assert np.all(g[1, F, :3] == 0.0)


def _two_loop_reference(gi, idx, S, Yh, rho, gamma, slot):
    """The textbook two-loop recursion, vectorised over problems (the previous implementation)."""
    order = [(slot - 1 - j) % _HISTORY for j in range(_HISTORY)]
    q = gi.copy()
    a = np.zeros((_HISTORY, idx.size))
    for j in order:
        a[j] = rho[j, idx] * np.einsum("pd,pd->p", S[j, idx], q)
        q -= a[j][:, None] * Yh[j, idx]
    r = gamma[idx, None] * q
    for j in reversed(order):
        b = rho[j, idx] * np.einsum("pd,pd->p", Yh[j, idx], r)
        r += S[j, idx] * (a[j] - b)[:, None]
    return -r


def test_compact_form_equals_the_two_loop_recursion():
    """Same pairs, same direction: ring wrap-around, a skipped pair, a reset problem, a subset."""
    rng = np.random.default_rng(1)
    P, D = 4, 500
    hist = _History(P, D)
    for it in range(_HISTORY + 3):
        idx = np.arange(P) if it != 7 else np.array([0, 2, 3])  # problem 1 missed a step
        s = rng.standard_normal((idx.size, D))
        y = s + 0.3 * rng.standard_normal((idx.size, D))
        if it == 9:
            y[1] = -s[1]  # negative curvature: stored, not used
        hist.push(idx, s, y)
        if it == _HISTORY + 2:
            hist.reset(np.array([3]))  # after its last pair
    S = hist.V[:, :_HISTORY].transpose(1, 0, 2)
    Yh = hist.V[:, _HISTORY:].transpose(1, 0, 2)
    rho = np.where(hist.valid.T, 1.0 / np.where(hist.valid.T, np.einsum("hpd,hpd->hp", S, Yh), 1.0), 0.0)
    slot = hist.count % _HISTORY
    idx = np.array([3, 1, 0, 2])
    g = rng.standard_normal((idx.size, D))
    got = hist.direction(g.copy(), idx)
    want = _two_loop_reference(g, idx, S, Yh, rho, hist.gamma, slot)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    np.testing.assert_allclose(got[0], -hist.gamma[3] * g[0])  # reset: scaled steepest descent
    assert not hist.valid[1].all() and hist.valid[0].all()


def test_many_classes_few_samples_per_class_agree_with_sklearn():
    """The paper-scale regime in miniature: 60 classes, ~8 train samples each, F < n."""
    rng = np.random.default_rng(2)
    K, F, n = 60, 24, 900
    y = rng.integers(0, K, n)
    X = rng.standard_normal((K, F))[y] * 0.8 + rng.standard_normal((n, F))
    X = np.maximum(X, 0.0).astype(np.float32)
    Xs, ys = np.split(X, [500, 700]), np.split(y, [500, 700])
    Cs = np.logspace(-3, 0, 4)
    res = fit_logistic_block(*Xs, {"true": tuple(ys)}, Cs, n_classes=K, tol=1e-5, max_iter=2000)["true"]
    sc = StandardScaler().fit(Xs[0])
    ce = []
    for C in Cs:
        m = LogisticRegression(C=C, tol=1e-8, max_iter=5000).fit(sc.transform(Xs[0]), ys[0])
        proba = np.zeros((Xs[1].shape[0], K))
        proba[:, m.classes_] = m.predict_proba(sc.transform(Xs[1]))
        ce.append(-np.mean(np.log(proba[np.arange(ys[1].size), ys[1]])))
    assert res.C_index == int(np.argmin(ce))
    np.testing.assert_allclose(res.path["ce_valid"], ce, rtol=2e-3)
    assert set(res.path["status"]) <= {"converged", "stalled"}
