"""Batched probe solvers vs the scikit-learn loop a user would write, on the same arrays.

Ridge (RCV): ``fit_rcv_block`` (one eigendecomposition for every target and alpha) vs,
per alpha, a multi-target ``Ridge(alpha)`` on ``StandardScaler``-ed features scored on
valid. Classifier probes: ``fit_logistic_block`` (all label sets and Cs of the block
together, float32 GEMMs, warm-started path) vs, per label set and per C, a
``LogisticRegression(C, solver="lbfgs")`` fit scored on valid, both stopping at the
same gradient tolerance. The script checks that both pick the same hyperparameters,
reports the largest metric differences, probes/s for both and the speed ratio, and
writes the figures as JSON (``--out``).

A *probe* is one target (ridge) or one label set (classifier) selected over its whole
grid; ``fits`` counts (probe, hyperparameter) pairs.

Examples
--------
python benchmarks/bench_probes.py --out bench-output/probes.json
python benchmarks/bench_probes.py --npz layer.npz   # arrays X, y, Y, split (0/1/2 or names)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from analyze.controls import control_labels
from analyze.solvers.logistic import fit_logistic_block
from analyze.solvers.ridge import fit_rcv_block


def synthetic(n: int, F: int, T: int, K: int, seed: int):
    """Layer-like data: ReLU of a low-rank class-structured code, smooth concept targets."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    latent_dim = 32
    means = rng.normal(size=(K, latent_dim)) * 0.6
    z = means[y] + rng.normal(size=(n, latent_dim))
    mix = rng.normal(size=(latent_dim, F)) / np.sqrt(latent_dim)
    X = np.maximum(z @ mix + 0.3 * rng.normal(size=(n, F)) + 0.2, 0.0).astype(np.float32)
    proj = rng.normal(size=(latent_dim, T))
    Y = np.tanh(z @ proj / np.sqrt(latent_dim)) + rng.uniform(0.1, 1.0, T) * rng.normal(size=(n, T))
    split = rng.choice(3, size=n, p=[0.6, 0.2, 0.2])
    return X, y, Y, split


def load_npz(path: str):
    d = np.load(path, allow_pickle=False)
    split = d["split"]
    if split.dtype.kind in "US":
        split = np.select([split == "train", split == "valid", split == "test"], [0, 1, 2], -1)
    return np.asarray(d["X"]), np.asarray(d["y"]), np.asarray(d["Y"]), split


def parts(a, split):
    return [a[split == s] for s in (0, 1, 2)]


def bench_ridge(X, Y, split, alphas, repeats):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import StandardScaler

    Xtr, Xv, Xte = parts(X, split)
    Ytr, Yv, Yte = parts(Y, split)
    ours = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fit_rcv_block(Xtr, Ytr, Xv, Yv, Xte, Yte, alphas)
        ours.append(time.perf_counter() - t0)
    base = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sc = StandardScaler().fit(Xtr)
        Str, Sv = sc.transform(Xtr), sc.transform(Xv)
        r2v = np.array([r2_score(Yv, Ridge(alpha=a).fit(Str, Ytr).predict(Sv), multioutput="raw_values")
                        for a in alphas])
        choice = np.argmax(r2v, axis=0)
        base.append(time.perf_counter() - t0)
    T = Y.shape[1]
    return {
        "ours_s": min(ours), "sklearn_s": min(base),
        "ours_probes_per_s": T / min(ours), "sklearn_probes_per_s": T / min(base),
        "ratio": min(base) / min(ours),
        "fits": T * len(alphas),
        "selections_agree": int(np.sum(choice == res.alpha_index)), "probes": T,
        "max_abs_r2_valid_diff": float(np.max(np.abs(r2v - res.path["r2_valid"]))),
        "method": res.method,
    }


def bench_logistic(X, label_sets, K, Cs, tol, max_iter, baseline_dtype):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    Xtr, Xv, Xte = X
    t0 = time.perf_counter()
    res = fit_logistic_block(Xtr, Xv, Xte, label_sets, Cs, n_classes=K, tol=tol, max_iter=max_iter)
    ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    sc = StandardScaler().fit(Xtr)
    Str, Sv = (sc.transform(a).astype(baseline_dtype) for a in (Xtr, Xv))
    base = {}
    n_not_converged = 0
    for name, (ytr, yv, _) in label_sets.items():
        ce, err, iters = [], [], []
        for C in Cs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                m = LogisticRegression(C=C, solver="lbfgs", tol=tol, max_iter=max_iter).fit(Str, ytr)
            n_not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
            proba = np.zeros((Sv.shape[0], K))
            proba[:, m.classes_] = m.predict_proba(Sv)
            ce.append(log_loss(yv, proba, labels=range(K)))
            err.append(float(np.mean(m.classes_[np.argmax(proba[:, m.classes_], axis=1)] != yv)))
            iters.append(int(m.n_iter_[0]))
        base[name] = {"ce": np.array(ce), "err": np.array(err), "iters": iters}
    base_s = time.perf_counter() - t0

    L = len(label_sets)
    agree = sum(int(np.argmin(base[k]["ce"]) == res[k].C_index) for k in label_sets)
    ce_rel = max(float(np.max(np.abs(res[k].path["ce_valid"] / base[k]["ce"] - 1))) for k in label_sets)
    err_pp = max(float(np.max(np.abs(res[k].path["error_valid"] - base[k]["err"]))) * 100 for k in label_sets)
    chosen_ce_rel = max(abs(res[k].ce_valid / base[k]["ce"][res[k].C_index] - 1) for k in label_sets)
    return {
        "ours_s": ours, "sklearn_s": base_s,
        "ours_probes_per_s": L / ours, "sklearn_probes_per_s": L / base_s, "ratio": base_s / ours,
        "fits": L * len(Cs), "selections_agree": agree, "probes": L,
        "max_rel_ce_valid_diff_path": ce_rel, "max_rel_ce_valid_diff_chosen": chosen_ce_rel,
        "max_error_valid_diff_pp": err_pp,
        "ours_iters": {k: res[k].path["n_iter"].tolist() for k in label_sets},
        "ours_status": {k: res[k].path["status"].tolist() for k in label_sets},
        "sklearn_iters": {k: base[k]["iters"] for k in label_sets},
        "sklearn_not_converged": n_not_converged, "method": res[next(iter(res))].method,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000, help="samples (all splits)")
    p.add_argument("--features", type=int, default=512)
    p.add_argument("--targets", type=int, default=17, help="ridge targets (concept measures)")
    p.add_argument("--alphas", type=int, default=15, help="ridge grid size, logspace(-3, 5)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--Cs", type=int, default=7, help="classifier grid size, logspace(-4, 2)")
    p.add_argument("--tol", type=float, default=1e-6, help="gradient tolerance, both solvers")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--baseline-dtype", choices=["float32", "float64"], default="float64",
                   help="dtype handed to LogisticRegression (lbfgs is float64 inside scipy)")
    p.add_argument("--repeats", type=int, default=3, help="ridge timing repeats (min is kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--npz", help="real layer: arrays X (n,F), y (n,), Y (n,T), split (n,)")
    p.add_argument("--skip", choices=["ridge", "logistic"], action="append", default=[])
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args(argv)

    if a.npz:
        X, y, Y, split = load_npz(a.npz)
        K = int(y.max()) + 1
    else:
        X, y, Y, split = synthetic(a.n, a.features, a.targets, a.classes, a.seed)
        K = a.classes
    Y = Y.reshape(Y.shape[0], -1)
    alphas = np.logspace(-3, 5, a.alphas)
    Cs = np.logspace(-4, 2, a.Cs)
    report = {
        "data": {"source": a.npz or "synthetic", "n": int(X.shape[0]), "features": int(X.shape[1]),
                 "targets": int(Y.shape[1]), "classes": K, "dtype": str(X.dtype),
                 "split_counts": np.bincount(split, minlength=3).tolist()},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "numpy": np.__version__},
        "settings": {"alphas": alphas.tolist(), "Cs": Cs.tolist(), "tol": a.tol, "max_iter": a.max_iter,
                     "baseline_dtype": a.baseline_dtype},
    }
    if "ridge" not in a.skip:
        report["ridge"] = r = bench_ridge(X, Y, split, alphas, a.repeats)
        print(f"ridge    {r['probes']} targets x {len(alphas)} alphas: ours {r['ours_s']:.3f} s "
              f"({r['ours_probes_per_s']:.1f} probes/s), sklearn {r['sklearn_s']:.3f} s "
              f"({r['sklearn_probes_per_s']:.1f} probes/s), ratio {r['ratio']:.1f}x, "
              f"same alpha {r['selections_agree']}/{r['probes']}, "
              f"max |dR2 valid| {r['max_abs_r2_valid_diff']:.2e}")
    if "logistic" not in a.skip:
        ytr, yv, yte = parts(y, split)
        ctrl = control_labels(np.arange(y.size), y, K, seed=a.seed)  # one type per sample: the grid solver's speed
        rng = np.random.default_rng(a.seed + 1)
        noisy = y.copy()
        flip = rng.random(y.size) < 0.5
        noisy[flip] = rng.permutation(noisy[flip])  # a 0.5-memorizing run's training labels
        label_sets = {"true": (ytr, yv, yte), "control": tuple(parts(ctrl, split)),
                      "corrupted_0.5": tuple(parts(noisy, split))}
        report["logistic"] = r = bench_logistic(parts(X, split), label_sets, K, Cs, a.tol,
                                                a.max_iter, np.dtype(a.baseline_dtype))
        print(f"logistic {r['probes']} label sets x {len(Cs)} Cs: ours {r['ours_s']:.2f} s "
              f"({r['ours_probes_per_s']:.2f} probes/s), sklearn {r['sklearn_s']:.2f} s "
              f"({r['sklearn_probes_per_s']:.2f} probes/s), ratio {r['ratio']:.1f}x, "
              f"same C {r['selections_agree']}/{r['probes']}, "
              f"max |dCE valid| {r['max_rel_ce_valid_diff_path']:.1e} rel (chosen C "
              f"{r['max_rel_ce_valid_diff_chosen']:.1e}), max |d error valid| "
              f"{r['max_error_valid_diff_pp']:.2f} pp")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
