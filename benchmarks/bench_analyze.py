"""The analysis engine vs the scikit-learn loop a user would write, on the same stored blocks.

Side by side, on a few blocks of one store (the widest layers of the last checkpoint of
the most corrupted run, by default):

- **engine**: :func:`analyze.block_task.run_block`, exactly what a Dask worker runs (it
  reads the block from the store and fits every probe: classifier probes on the true,
  training and control labels with one batched solver, every RCV from one
  factorization);
- **scikit-learn**: on the same arrays already in memory (reading is not charged to
  it), per alpha one multi-target ``Ridge`` on ``StandardScaler``-ed features scored on
  valid R²; per label set and per C one ``LogisticRegression(solver="lbfgs")`` scored on
  valid cross-entropy; same grids, same gradient tolerance and iteration cap.

It reports probes/s for both and the ratio (a probe = one target or one label set
selected over its whole grid), and whether both pick the same hyperparameters with the
same test metrics. Then the engine analyses a larger part of the store on a local Dask
cluster with 1 and with 2 workers (same table, seconds, probes/s).

``--store`` takes a store written by ``probestore extract`` (real layer features).
Without it, a store is generated from real data without torch: MNIST t10k images
pushed through random ReLU MLPs in numpy (the "random network" features of Graziani et
al.; raw pixels as the ``input`` layer), with 17 numpy image measures as concepts.

Examples
--------
python benchmarks/bench_analyze.py --out bench-output/analyze.json
python benchmarks/bench_analyze.py --store demo-output/mnist_mlp.zarr --out bench-output/analyze.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from analyze.block_task import build_sample_data, run_block
from analyze.config import AnalysisConfig
from analyze.engine import run_analysis
from analyze.jobs import plan_jobs
from analyze.results import NONDETERMINISTIC_COLUMNS, read_table
from storage_schema import layout
from storage_schema.store import create_store, open_store

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


# --------------------------------------------------------------------------- a store from real data


def image_concepts(images: np.ndarray) -> dict[str, np.ndarray]:
    """17 per-image measures (ink, position, spread, symmetry...) computed with numpy."""
    img = images.astype(np.float64) / 255.0
    n, H, W = img.shape
    rows = np.arange(H)[None, :, None]
    cols = np.arange(W)[None, None, :]
    mass = img.sum(axis=(1, 2)) + 1e-9
    cy = (img * rows).sum(axis=(1, 2)) / mass
    cx = (img * cols).sum(axis=(1, 2)) / mass
    vy = (img * (rows - cy[:, None, None]) ** 2).sum(axis=(1, 2)) / mass
    vx = (img * (cols - cx[:, None, None]) ** 2).sum(axis=(1, 2)) / mass
    cov = (img * (rows - cy[:, None, None]) * (cols - cx[:, None, None])).sum(axis=(1, 2)) / mass
    ink = img > 0.5
    any_r, any_c = ink.any(axis=2), ink.any(axis=1)
    height = np.where(any_r.any(1), H - np.argmax(any_r[:, ::-1], 1) - np.argmax(any_r, 1), 0)
    width = np.where(any_c.any(1), W - np.argmax(any_c[:, ::-1], 1) - np.argmax(any_c, 1), 0)
    h2, w2 = H // 2, W // 2
    edges = np.abs(np.diff(ink.astype(np.int8), axis=2)).sum(axis=(1, 2))
    return {
        "area": ink.mean(axis=(1, 2)),
        "mean_intensity": img.mean(axis=(1, 2)),
        "intensity_std": img.std(axis=(1, 2)),
        "centroid_row": cy,
        "centroid_col": cx,
        "spread_row": vy,
        "spread_col": vx,
        "covariance": cov,
        "eccentricity": np.sqrt(np.abs(vy - vx) + 2 * np.abs(cov)) / np.sqrt(vy + vx + 1e-9),
        "bbox_height": height.astype(float),
        "bbox_width": width.astype(float),
        "ink_top_left": img[:, :h2, :w2].mean(axis=(1, 2)),
        "ink_top_right": img[:, :h2, w2:].mean(axis=(1, 2)),
        "ink_bottom_left": img[:, h2:, :w2].mean(axis=(1, 2)),
        "ink_bottom_right": img[:, h2:, w2:].mean(axis=(1, 2)),
        "lr_symmetry": -np.abs(img - img[:, :, ::-1]).mean(axis=(1, 2)),
        "stroke_crossings": edges.astype(float) / H,
    }


def generate_store(path: Path, n: int, seed: int = 0) -> Path:
    """MNIST t10k through random ReLU MLPs (two runs x two checkpoints); see the module doc."""
    from extract.idx import read_idx

    images = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:n]
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")[:n].astype(np.int64)
    rng = np.random.default_rng(seed)
    splits = rng.choice(3, size=n, p=[0.6, 0.2, 0.2]).astype(np.int8)
    store = create_store(path, dataset_name="mnist-t10k-subset", sample_ids=[f"t10k:{i:05d}" for i in range(n)],
                         labels=labels, splits=splits, class_names=[str(k) for k in range(10)],
                         source={"generated_by": "benchmarks/bench_analyze.py", "n": n}, overwrite=True)
    for name, values in image_concepts(images).items():
        store.add_target(name, values, "continuous")
    from extract.sample_types import area_means, auto_n_types, cluster_types  # numpy / sklearn only

    n_types = auto_n_types(np.bincount(splits, minlength=3), 10)
    store.set_sample_types(cluster_types(area_means(images), n_types, seed),
                           method={"kind": "kmeans", "n_clusters": n_types, "seed": seed})
    X0 = images.reshape(n, -1).astype(np.float32) / 255.0
    train = np.flatnonzero(splits == 0)
    for run, frac in (("generalizing", 0.0), ("memorizing-0.5", 0.5)):
        train_labels = labels.copy()
        chosen = rng.choice(train, size=int(frac * train.size), replace=False)
        train_labels[chosen] = rng.permutation(labels[chosen])
        store.add_run(run, model={"name": "mlp", "widths": [512, 256]}, architecture="mlp",
                      train_labels=train_labels, corrupted=train_labels != labels,
                      corruption={"fraction": frac, "mode": "shuffle", "seed": seed})
        for epoch in (0, 1):
            ck = f"epoch_{epoch:04d}"
            store.add_checkpoint(run, ck, epoch=epoch, sha256=f"{run}-{epoch}")
            h = X0
            blocks = {"input": h}
            for i, width in enumerate((512, 256), start=1):
                W = rng.normal(size=(h.shape[1], width)).astype(np.float32) * np.sqrt(2.0 / h.shape[1])
                h = np.maximum(h @ W + 0.05, 0.0)
                blocks[f"fc{i}"] = h
            blocks[layout.OUTPUTS] = h @ rng.normal(size=(h.shape[1], 10)).astype(np.float32) * 0.1
            for name, values in blocks.items():
                store.create_block(run, ck, name, n_features=values.shape[1],
                                   reduction=None if name == layout.OUTPUTS else {"kind": "flatten"})
                store.write_rows(run, ck, name, 0, values)
                store.mark_block_complete(run, ck, name)
            store.set_layer_order(run, ck, ["input", "fc1", "fc2"])
            store.mark_checkpoint_complete(run, ck)
    store.close()
    return path


# --------------------------------------------------------------------------- side by side


def sklearn_block(X, sample, job, config, targets):
    """What a user would write for the same probes of one block; returns selections and metrics."""
    from sklearn.preprocessing import StandardScaler

    idx = sample.split_index
    out: dict = {"rcv": {}, "classifier": {}, "not_converged": 0}
    t0 = time.perf_counter()
    X = np.asarray(X, dtype=np.float64)  # lbfgs runs in float64 inside scipy anyway
    sc = StandardScaler().fit(X[idx["train"]])
    Z = {s: sc.transform(X[i]) for s, i in idx.items()}
    t_scale = time.perf_counter() - t0  # charged to both baselines (the engine standardizes in each)
    out["rcv_seconds"] = 0.0
    if targets:  # a store may have no continuous concept targets
        _ridge_baseline(out, Z, sample, idx, targets, config, t_scale)
    _classifier_baseline(out, Z, sample, idx, job, config, t_scale)
    return out


def _ridge_baseline(out, Z, sample, idx, targets, config, t_scale):
    """Per alpha one multi-target Ridge on standardized features, scored on valid R²."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    t0 = time.perf_counter()
    cols = [sample.targets.index(t) for t in targets]
    Y = {s: sample.target_values[i][:, cols] for s, i in idx.items()}
    fits = [Ridge(alpha=a).fit(Z["train"], Y["train"]) for a in config.alphas]
    r2v = np.array([r2_score(Y["valid"], m.predict(Z["valid"]), multioutput="raw_values") for m in fits])
    best = len(config.alphas) - 1 - np.argmax(r2v[::-1], axis=0)  # ties -> larger alpha, like the engine
    for t, name in enumerate(targets):
        m = fits[best[t]]
        out["rcv"][name] = {"alpha": config.alphas[best[t]],
                            "test_r2": float(r2_score(Y["test"][:, t], m.predict(Z["test"])[:, t]))}
    out["rcv_seconds"] = time.perf_counter() - t0 + t_scale


def _classifier_baseline(out, Z, sample, idx, job, config, t_scale):
    """The engine's rules with one LogisticRegression(lbfgs) per fit (docs/science.md §1-3).

    True labels: every C, selected on valid cross-entropy; control labels: one fit at the
    true labels' C; training labels (corrupted runs): every C on an inner split of train,
    selected on its held-out part, then one refit on all of train.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from analyze.block_task import INNER_FRACTION, INNER_SEED
    from analyze.solvers.logistic import inner_split

    K = sample.n_classes

    def fit(Ztr, ytr, C):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            m = LogisticRegression(C=C, solver="lbfgs", tol=config.tol or 1e-4,
                                   max_iter=config.max_iter or 500).fit(Ztr, ytr)
        out["not_converged"] += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return m

    def select(Ztr, ytr, Zv, yv):
        models = []
        for C in config.Cs:
            m = fit(Ztr, ytr, C)
            proba = np.zeros((Zv.shape[0], K))
            proba[:, m.classes_] = m.predict_proba(Zv)
            models.append((log_loss(yv, proba, labels=range(K)), C, m))
        return min(models, key=lambda r: r[0])[1:]

    def record(name, C, m, y):
        out["classifier"][name] = {"C": C, "test_error": float(np.mean(m.predict(Z["test"]) != y[idx["test"]]))}

    t0 = time.perf_counter()
    y = sample.labels
    C_true, m = select(Z["train"], y[idx["train"]], Z["valid"], y[idx["valid"]])
    record("true_labels", C_true, m, y)
    if sample.control is not None:
        record("control_labels", C_true, fit(Z["train"], sample.control[idx["train"]], C_true), sample.control)
    if job.has_corrupted:
        yt = sample.train_labels[job.run]
        held = inner_split(yt[idx["train"]], INNER_FRACTION, INNER_SEED)
        C_tr, _ = select(Z["train"][~held], yt[idx["train"]][~held], Z["train"][held], yt[idx["train"]][held])
        record("train_labels", C_tr, fit(Z["train"], yt[idx["train"]], C_tr), yt)
    out["classifier_seconds"] = time.perf_counter() - t0 + t_scale


def _x(ratio) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}x"


def side_by_side(store_path: str, config: AnalysisConfig, n_blocks: int, layers: str | None) -> dict:
    with open_store(store_path) as store:
        plan = plan_jobs(store, config)
        sample = build_sample_data(store, plan, config)
        features = [j for j in plan.jobs if j.kind == "features"]
        run = max({j.run for j in features}, key=lambda r: (store.run_info(r).corruption_fraction, r))
        last = max((j for j in features if j.run == run), key=lambda j: j.epoch).checkpoint
        from probestore.selectors import parse_patterns, select

        mine = [j for j in features if j.run == run and j.checkpoint == last]
        names = select([j.layer for j in mine], parse_patterns(layers), what="layer", where="--layers") \
            if layers else [j.layer for j in mine if j.layer != "input"]
        chosen = [j for j in mine if j.layer in names]
        jobs = sorted(chosen, key=lambda j: -j.n_features)[:n_blocks]
        arrays = {j.layer: np.asarray(store.read_layer(j.run, j.checkpoint, j.layer), dtype=np.float32)
                  for j in jobs}
    rows = []
    for job in jobs:
        t0 = time.perf_counter()
        outcome = run_block(store_path, job, sample, config)
        engine_s = time.perf_counter() - t0
        got = {(r["probe"], r["target"]): r for r in outcome.rows}
        fit = {p: sum(r["fit_seconds"] for r in outcome.rows if r["probe"] in p) for p in (("rcv",),
                                                                                           ("classifier", "control"))}
        targets = [s.target for s in job.probes if s.probe == "rcv"]
        ref = sklearn_block(arrays[job.layer], sample, job, config, targets)
        rcv_same = [got[("rcv", t)]["hyperparameter_value"] == ref["rcv"][t]["alpha"] for t in targets]
        r2_diff = [abs(got[("rcv", t)]["test_r2"] - ref["rcv"][t]["test_r2"]) for t in targets]
        clf = {("control" if k == "control_labels" else "classifier", k): v for k, v in ref["classifier"].items()}
        c_same = [got[k]["hyperparameter_value"] == v["C"] for k, v in clf.items()]
        err_diff = [abs(got[k]["test_error"] - v["test_error"]) * 100 for k, v in clf.items()]
        n_clf = len(clf)
        rows.append({
            "block": job.name, "n_samples": job.n_samples, "n_features": job.n_features,
            "engine_block_seconds": engine_s,
            "engine_rcv_seconds": fit[("rcv",)], "engine_classifier_seconds": fit[("classifier", "control")],
            "sklearn_rcv_seconds": ref["rcv_seconds"], "sklearn_classifier_seconds": ref["classifier_seconds"],
            "rcv_probes": len(targets), "classifier_probes": n_clf,
            "rcv_ratio": ref["rcv_seconds"] / fit[("rcv",)] if targets else None,
            "classifier_ratio": ref["classifier_seconds"] / max(fit[("classifier", "control")], 1e-9),
            "rcv_same_alpha": f"{sum(rcv_same)}/{len(rcv_same)}",
            "classifier_same_C": f"{sum(c_same)}/{len(c_same)}",
            "max_abs_test_r2_diff": max(r2_diff, default=0.0),
            "max_test_error_diff_pp": max(err_diff, default=0.0),
            "engine_status": sorted({r["status"] for r in outcome.rows}),
            "sklearn_not_converged_fits": ref["not_converged"],
        })
        r = rows[-1]
        print(f"{job.name} ({job.n_samples}x{job.n_features}): RCV {r['rcv_probes']} probes engine "
              f"{r['engine_rcv_seconds']:.2f} s vs sklearn {r['sklearn_rcv_seconds']:.2f} s "
              f"({_x(r['rcv_ratio'])}, same alpha {r['rcv_same_alpha']}); classifier {n_clf} probes engine "
              f"{r['engine_classifier_seconds']:.2f} s vs sklearn {r['sklearn_classifier_seconds']:.2f} s "
              f"({_x(r['classifier_ratio'])}, same C {r['classifier_same_C']}, "
              f"max |d test error| {r['max_test_error_diff_pp']:.2f} pp)", flush=True)
    tot = {k: sum(r[k] for r in rows) for k in ("engine_rcv_seconds", "engine_classifier_seconds",
                                                 "sklearn_rcv_seconds", "sklearn_classifier_seconds",
                                                 "rcv_probes", "classifier_probes", "engine_block_seconds")}
    summary = {
        "rcv_probes_per_s": {"engine": tot["rcv_probes"] / max(tot["engine_rcv_seconds"], 1e-9),
                             "sklearn": tot["rcv_probes"] / tot["sklearn_rcv_seconds"]
                             if tot["sklearn_rcv_seconds"] else 0.0},
        "classifier_probes_per_s": {
            "engine": tot["classifier_probes"] / max(tot["engine_classifier_seconds"], 1e-9),
            "sklearn": tot["classifier_probes"] / max(tot["sklearn_classifier_seconds"], 1e-9)},
        "engine_whole_block_probes_per_s": (tot["rcv_probes"] + tot["classifier_probes"])
        / max(tot["engine_block_seconds"], 1e-9),
    }
    for kind in ("rcv", "classifier"):
        s = summary[f"{kind}_probes_per_s"]
        s["ratio"] = s["engine"] / s["sklearn"] if s["sklearn"] > 0 else None
    return {"blocks": rows, "summary": summary}


def whole_store(store_path: str, config: AnalysisConfig, workdir: Path, checkpoints: str) -> dict:
    """The engine on (part of) the store with 1 and 2 local workers: same table, timings."""
    with open_store(store_path) as store:
        if checkpoints == "last":
            names = sorted({store.checkpoints(r)[-1].name for r in store.runs() if store.checkpoints(r)})
            config = config.replace(checkpoints=",".join(names))
    out, tables = {}, {}
    for workers in (1, 2):
        cfg = config.replace(scheduler="local", n_workers=workers, threads_per_worker=1,
                             results=str(workdir / f"whole_{workers}.parquet"))
        t0 = time.perf_counter()
        s = run_analysis(store_path, cfg, progress=False, log=lambda m: None)
        seconds = time.perf_counter() - t0
        tables[workers] = read_table(s.results).drop(columns=list(NONDETERMINISTIC_COLUMNS))
        out[f"{workers}_worker"] = {"seconds": seconds, "probes": s.probes_written, "blocks": s.blocks_done,
                                    "probes_per_s": s.probes_written / seconds,
                                    "status": dict(s.status_counts)}
        print(f"whole store ({checkpoints} checkpoints), {workers} worker(s): {s.blocks_done} blocks, "
              f"{s.probes_written} probes in {seconds:.1f} s ({s.probes_written / seconds:.1f} probes/s)", flush=True)
    out["speedup_2_vs_1"] = out["1_worker"]["seconds"] / out["2_worker"]["seconds"]
    out["identical_tables"] = bool(tables[1].equals(tables[2]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="a store written by `probestore extract` (default: generate one)")
    p.add_argument("--n", type=int, default=3000, help="samples of the generated store")
    p.add_argument("--blocks", type=int, default=1, help="blocks compared side by side (widest first)")
    p.add_argument("--layers", help="layer names or globs of the side-by-side layers (default: all but 'input')")
    p.add_argument("--Cs", type=int, default=7, help="classifier grid, logspace(-4, 2, N)")
    p.add_argument("--alphas", type=int, default=15, help="ridge grid, logspace(-3, 5, N)")
    p.add_argument("--tol", type=float, default=1e-4, help="gradient tolerance of both classifier solvers")
    p.add_argument("--max-iter", type=int, default=1000, help="iteration cap of both classifier solvers")
    p.add_argument("--whole", choices=["last", "all", "none"], default="last",
                   help="whole-store run on the last checkpoint of each run, on every checkpoint, or skip")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_analyze_"))
    try:
        t0 = time.perf_counter()
        if a.store:
            store_path, source = str(Path(a.store).resolve()), a.store
        else:
            store_path = str(generate_store(workdir / "generated.zarr", a.n))
            source = f"generated: MNIST t10k ({a.n} images) through random ReLU MLPs (numpy)"
        build_s = time.perf_counter() - t0
        config = AnalysisConfig(Cs=tuple(np.logspace(-4, 2, a.Cs)), alphas=tuple(np.logspace(-3, 5, a.alphas)),
                                tol=a.tol, max_iter=a.max_iter, threads_per_worker=1, scheduler="none")
        with open_store(store_path) as s:
            data = {"source": source, "n_samples": s.n_samples, "classes": len(s.dataset.class_names),
                    "targets": len([t for t in s.target_names() if s.target_info(t).kind == "continuous"]),
                    "store_seconds": build_s}
        report = {
            "data": data,
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "cpus": os.cpu_count(), "numpy": np.__version__},
            "settings": {"Cs": list(config.Cs), "alphas": list(config.alphas), "tol": a.tol,
                         "max_iter": a.max_iter, "blas_threads": 1},
        }
        print(f"store: {source} ({data['n_samples']} samples, {data['targets']} concept targets)", flush=True)
        report["side_by_side"] = sbs = side_by_side(store_path, config, a.blocks, a.layers)
        s = sbs["summary"]
        print(f"RCV probes/s: engine {s['rcv_probes_per_s']['engine']:.1f}, sklearn "
              f"{s['rcv_probes_per_s']['sklearn']:.1f} ({_x(s['rcv_probes_per_s']['ratio'])}); classifier "
              f"probes/s: engine {s['classifier_probes_per_s']['engine']:.2f}, sklearn "
              f"{s['classifier_probes_per_s']['sklearn']:.2f} ({_x(s['classifier_probes_per_s']['ratio'])})")
        if a.whole != "none":
            report["whole_store"] = whole_store(store_path, config, workdir, a.whole)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(report, indent=2, default=float))
            print(f"wrote {a.out}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
