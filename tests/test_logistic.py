"""Classifier / control probes against scikit-learn's multinomial LogisticRegression."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, top_k_accuracy_score
from sklearn.preprocessing import StandardScaler

from analyze.controls import control_labels, selectivity
from analyze.metrics import CE_CAP, cross_entropy, top_k_error
from analyze.solvers.logistic import _lbfgs, _loss_grad, fit_logistic_block
from probestore.errors import ConfigError, DataError

CS = np.logspace(-3, 1, 5)


@pytest.fixture(scope="module")
def digits():
    """Real data: sklearn's 8x8 digits (10 classes, several constant pixels)."""
    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(y.size)
    X, y = X[perm][:1200], y[perm][:1200]
    return np.split(X, [700, 950]), np.split(y, [700, 950])


def three_class(n=300, F=8, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, F)) * rng.uniform(0.5, 4, F) + 0.8 * rng.normal(size=(3, F))[y] + 5
    return np.split(X, [n // 2, 3 * n // 4]), np.split(y, [n // 2, 3 * n // 4])


def sklearn_path(Xs, ys, Cs, K, C_scale=1.0):
    """Per C one LogisticRegression on train-standardized features (converged tightly)."""
    sc = StandardScaler().fit(Xs[0])
    out = []
    for C in Cs:
        m = LogisticRegression(C=C * C_scale, tol=1e-10, max_iter=20000).fit(sc.transform(Xs[0]), ys[0])
        row = {"coef": None, "intercept": None}
        for split, X, y in zip(("train", "valid", "test"), Xs, ys):
            proba = np.zeros((X.shape[0], K))
            proba[:, m.classes_] = m.predict_proba(sc.transform(X))
            row[f"ce_{split}"] = log_loss(y, proba, labels=range(K))
            row[f"error_{split}"] = np.mean(np.argmax(proba, axis=1) != y)
        row["coef"] = m.coef_ / sc.scale_
        row["decision"] = m.decision_function(sc.transform(Xs[2]))
        out.append(row)
    return out


def check_against_sklearn(res, ref, Xs, ys, ce_rtol, coef_atol, max_err_diff=0.0):
    ce_valid = np.array([r["ce_valid"] for r in ref])
    assert res.C_index == int(np.argmin(ce_valid)), "same rule (min valid CE) must pick the same C"
    for split in ("train", "valid", "test"):
        err = np.array([r[f"error_{split}"] for r in ref])
        assert np.max(np.abs(res.path[f"error_{split}"] - err)) <= max_err_diff + 1e-12, split
        ce = np.array([r[f"ce_{split}"] for r in ref])
        np.testing.assert_allclose(res.path[f"ce_{split}"], ce, rtol=ce_rtol, err_msg=split)
    best = ref[res.C_index]
    scale = np.abs(best["coef"]).max()
    np.testing.assert_allclose(res.coef / scale, best["coef"] / scale, atol=coef_atol)


def test_digits_float64_matches_sklearn(digits):
    Xs, ys = digits
    res = fit_logistic_block(*Xs, {"true": tuple(ys)}, CS, n_classes=10, dtype=np.float64, tol=1e-8,
                             max_iter=3000)["true"]
    ref = sklearn_path(Xs, ys, CS, 10)
    check_against_sklearn(res, ref, Xs, ys, ce_rtol=1e-5, coef_atol=1e-4)
    assert set(res.path["status"]) == {"converged"} and res.status == "converged"
    assert res.method == "primal" and res.coef.shape == (10, 64)
    # test-split logits on raw features equal scikit-learn's decision function
    logits = Xs[2] @ res.coef.T + res.intercept
    np.testing.assert_allclose(logits, ref[res.C_index]["decision"], atol=2e-3)
    assert np.isfinite(res.top5_error_test) and res.top5_error_test <= res.error_test


def test_digits_float32_default_settings_within_tolerance(digits):
    Xs, ys = digits
    res = fit_logistic_block(*Xs, {"true": tuple(ys)}, CS, n_classes=10)["true"]
    ref = sklearn_path(Xs, ys, CS, 10)
    ce = np.array([r["ce_valid"] for r in ref])
    assert res.C_index == int(np.argmin(ce))
    for split in ("train", "valid", "test"):
        err = np.array([r[f"error_{split}"] for r in ref])
        assert np.max(np.abs(res.path[f"error_{split}"] - err)) <= 0.005, split
    np.testing.assert_allclose(res.ce_valid, ce[res.C_index], rtol=1e-3)
    np.testing.assert_allclose(res.path["ce_test"], [r["ce_test"] for r in ref], rtol=5e-3)


def test_three_classes_matches_sklearn_and_has_no_top5():
    Xs, ys = three_class()
    res = fit_logistic_block(*Xs, {"y": tuple(ys)}, CS, n_classes=3, dtype=np.float64, tol=1e-9,
                             max_iter=3000)["y"]
    check_against_sklearn(res, sklearn_path(Xs, ys, CS, 3), Xs, ys, ce_rtol=1e-6, coef_atol=1e-5)
    assert np.isnan(res.top5_error_test) and np.isnan(res.path["top5_error_valid"]).all()


def test_more_features_than_samples_uses_row_space():
    Xs, ys = three_class(n=80, F=120, seed=2)
    res = fit_logistic_block(*Xs, {"y": tuple(ys)}, CS, n_classes=3, dtype=np.float64, tol=1e-9,
                             max_iter=5000)["y"]
    assert res.method == "rowspace" and res.coef.shape == (3, 120)
    check_against_sklearn(res, sklearn_path(Xs, ys, CS, 3), Xs, ys, ce_rtol=1e-5, coef_atol=1e-4)


def test_two_classes_equal_binomial_sklearn_with_twice_C():
    Xs, ys = three_class(seed=3)
    ys = [(y > 0).astype(int) for y in ys]
    res = fit_logistic_block(*Xs, {"y": tuple(ys)}, CS, n_classes=2, dtype=np.float64, tol=1e-10,
                             max_iter=3000)["y"]
    sc = StandardScaler().fit(Xs[0])
    m = LogisticRegression(C=2 * res.C, tol=1e-10, max_iter=5000).fit(sc.transform(Xs[0]), ys[0])
    np.testing.assert_allclose(res.coef[1] - res.coef[0], m.coef_[0] / sc.scale_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.ce_test, log_loss(ys[2], m.predict_proba(sc.transform(Xs[2]))), rtol=1e-7)


def test_batched_label_sets_equal_solving_each_alone(digits):
    Xs, ys = digits
    y_all = np.concatenate(ys)  # types unrelated to the inputs: a control task no probe can learn
    ctrl = control_labels(np.random.default_rng(3).integers(0, 100, y_all.size), y_all, 10, seed=0)
    sets = {"true": tuple(ys), "control": tuple(np.split(ctrl, [700, 950])),
            "shifted": tuple((y + 3) % 10 for y in ys)}
    Cs = [1e-2, 1e-1, 1.0]
    kw = dict(n_classes=10, dtype=np.float64, tol=1e-7, max_iter=3000)
    together = fit_logistic_block(*Xs, sets, Cs, **kw)
    for name, labels in sets.items():
        alone = fit_logistic_block(*Xs, {name: labels}, Cs, **kw)[name]
        assert alone.C_index == together[name].C_index
        # same optimum; trajectories differ only by GEMM rounding (batch width)
        np.testing.assert_allclose(together[name].path["ce_valid"], alone.path["ce_valid"], rtol=1e-5)
        np.testing.assert_allclose(together[name].coef, alone.coef, atol=1e-3 * np.abs(alone.coef).max())
    # a relabelled copy of the true task is the same problem with permuted classes
    np.testing.assert_allclose(together["shifted"].path["ce_test"], together["true"].path["ce_test"], rtol=1e-5)
    sel = selectivity(together["true"], together["control"])
    assert sel["test"] == pytest.approx(together["control"].error_test - together["true"].error_test)
    assert sel["test"] > 0.5  # digits are linearly separable; random labels are not
    assert together["control"].error_test > 0.75


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    n, F, K, P = 40, 5, 4, 2
    X = rng.normal(size=(n, F))
    Y = rng.integers(0, 3, (n, P))  # class 3 absent in both problems
    theta = rng.normal(size=(P, F + 1, K)) * 0.5
    theta[:, :, 3] = 0.0
    mask = np.zeros((P, K))
    mask[:, 3] = -np.inf
    inv_cn = np.array([1 / (0.3 * n), 1 / (5.0 * n)])
    f, g = _loss_grad(X, Y, theta, inv_cn, mask, np.float64)
    # objective by hand: mean CE + ||W||^2 / (2 C n)
    for p in range(P):
        logits = X @ theta[p, :F] + theta[p, F] + mask[p]
        expect = cross_entropy(logits, Y[:, p], K) + 0.5 * inv_cn[p] * np.sum(theta[p, :F] ** 2)
        assert f[p] == pytest.approx(expect, rel=1e-12)
    num = np.zeros_like(theta)
    h = 1e-6
    for idx in np.ndindex(theta.shape):
        tp, tm = theta.copy(), theta.copy()
        tp[idx] += h
        tm[idx] -= h
        num[idx] = (_loss_grad(X, Y, tp, inv_cn, mask, np.float64)[0][idx[0]]
                    - _loss_grad(X, Y, tm, inv_cn, mask, np.float64)[0][idx[0]]) / (2 * h)
    np.testing.assert_allclose(g, num, atol=1e-8)


def test_lbfgs_solves_independent_quadratics():
    rng = np.random.default_rng(8)
    scales = np.array([[1.0, 10.0, 100.0], [1.0, 1.0, 1.0]])
    target = rng.normal(size=(2, 3))

    def fun(theta, index):
        d = theta - target[index]
        return 0.5 * np.sum(scales[index] * d**2, axis=1), scales[index] * d

    theta, f, n_iter, status, gmax = _lbfgs(fun, np.zeros((2, 3)), tol=1e-10, max_iter=100, f_noise=1e-13)
    np.testing.assert_allclose(theta, target, atol=1e-9)
    assert list(status) == ["converged", "converged"] and n_iter[1] < n_iter[0]


def test_absent_class_matches_sklearn_on_present_classes(digits):
    Xs, ys = digits
    keep = [y != 7 for y in ys]
    Xtr, ytr = Xs[0][keep[0]], ys[0][keep[0]]
    res = fit_logistic_block(Xtr, Xs[1], Xs[2], {"y": (ytr, ys[1], ys[2])}, [0.1], n_classes=10,
                             dtype=np.float64, tol=1e-9, max_iter=3000)["y"]
    assert res.intercept[7] == -np.inf and np.all(res.coef[7] == 0)
    sc = StandardScaler().fit(Xtr)
    m = LogisticRegression(C=0.1, tol=1e-10, max_iter=5000).fit(sc.transform(Xtr), ytr)
    proba = np.zeros((Xs[2].shape[0], 10))
    proba[:, m.classes_] = m.predict_proba(sc.transform(Xs[2]))
    # class-7 test samples get probability 0: both cap their loss at -log(eps64)
    assert res.ce_test == pytest.approx(log_loss(ys[2], proba, labels=range(10)), rel=1e-6)
    assert res.ce_test > CE_CAP * np.mean(ys[2] == 7)
    assert res.error_test == pytest.approx(np.mean(np.argmax(proba, axis=1) != ys[2]))


def test_warm_start_from_previous_block(digits):
    Xs, ys = digits
    kw = dict(n_classes=10, dtype=np.float64, tol=1e-7)
    first = fit_logistic_block(*Xs, {"y": tuple(ys)}, CS, **kw)
    again = fit_logistic_block(*Xs, {"y": tuple(ys)}, CS, warm_start=first, **kw)["y"]
    assert again.path["n_iter"].sum() == 0  # started at the optimum of every C
    np.testing.assert_allclose(again.path_coef, first["y"].path_coef, rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(9)
    Xs2 = [X + rng.normal(size=X.shape) * 0.1 for X in Xs]  # "the next checkpoint"
    cold = fit_logistic_block(*Xs2, {"y": tuple(ys)}, CS, **kw)["y"]
    warm = fit_logistic_block(*Xs2, {"y": tuple(ys)}, CS, warm_start=first, **kw)["y"]
    np.testing.assert_allclose(warm.path["ce_valid"], cold.path["ce_valid"], rtol=1e-4)
    with pytest.raises(ConfigError, match="warm_start does not fit"):
        fit_logistic_block(Xs2[0][:, :10], Xs2[1][:, :10], None, {"y": (ys[0], ys[1], None)}, CS,
                           n_classes=10, warm_start=first)


def test_max_iter_is_reported():
    Xs, ys = three_class()
    res = fit_logistic_block(*Xs, {"y": tuple(ys)}, [100.0], n_classes=3, max_iter=2, tol=1e-12)["y"]
    assert res.status == "max_iter" and res.n_iter == 2


def test_bad_inputs_raise_or_fail_alone():
    Xs, ys = three_class()
    bad = Xs[0].copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        fit_logistic_block(bad, Xs[1], Xs[2], {"y": tuple(ys)}, CS, n_classes=3)
    single = (np.zeros_like(ys[0]), ys[1], ys[2])
    with pytest.raises(DataError, match="single class"):
        fit_logistic_block(*Xs, {"y": single}, CS, n_classes=3)
    out = fit_logistic_block(*Xs, {"good": tuple(ys), "single": single}, CS, n_classes=3)
    assert out["good"].ok and out["single"].status == "failed" and "single class" in out["single"].message
    assert np.isnan(out["single"].error_test) and list(out) == ["good", "single"]
    with pytest.raises(DataError, match=r"outside \[0, 3\)"):
        fit_logistic_block(*Xs, {"y": (ys[0] + 1, ys[1], ys[2])}, CS, n_classes=3)
    with pytest.raises(ConfigError, match="grid"):
        fit_logistic_block(*Xs, {"y": tuple(ys)}, [0.0], n_classes=3)
    with pytest.raises(DataError, match="line up"):
        fit_logistic_block(*Xs, {"y": (ys[0][:-1], ys[1], ys[2])}, CS, n_classes=3)


def test_metric_definitions_match_sklearn():
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(200, 7))
    y = rng.integers(0, 7, 200)
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for k in (1, 3, 5):
        assert top_k_error(logits, y, k) == pytest.approx(1 - top_k_accuracy_score(y, proba, k=k, labels=range(7)))
    assert top_k_error(logits, y, 1) == pytest.approx(np.mean(np.argmax(logits, 1) != y))
    assert cross_entropy(logits, y, 7) == pytest.approx(log_loss(y, proba, labels=range(7)), rel=1e-12)
    assert cross_entropy(np.array([[1e4, -1e4]]), np.array([1]), 2) == pytest.approx(CE_CAP)
    ties = np.zeros((1, 4))
    assert top_k_error(ties, np.array([0]), 1) == 0 and top_k_error(ties, np.array([2]), 2) == 1


def test_control_labels_preserve_counts_and_are_seeded():
    y = np.random.default_rng(11).integers(0, 5, 500)
    one_each = np.arange(500)  # every sample its own type: counts kept exactly
    a, b = control_labels(one_each, y, 5, seed=1), control_labels(one_each, y, 5, seed=1)
    c = control_labels(one_each, y, 5, seed=2)
    np.testing.assert_array_equal(np.bincount(a, minlength=5), np.bincount(y, minlength=5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.6 < np.mean(a != y) < 0.95  # actually relabelled (chance agreement ~ 0.2)
    with pytest.raises(DataError, match="class range"):
        control_labels(one_each, y, 4, seed=0)
