"""Alain & Bengio's ImageNet setting (1,000 classes, 1,000 features per layer) against scikit-learn.

A store is written to disk (Zarr) with blocks of ``F`` features of a realistic shape:
a class-structured latent code (each class made of 2 recurring input *types*, as the
control task needs), mixed into ``F`` ReLU features through a decaying eigenvalue
spectrum (``s_i ∝ i^-0.7``: a few directions carry most of the variance, as in real
layers), plus 20 continuous concept targets. Then, side by side in one run:

- **engine**: :func:`analyze.block_task.run_block` on one block, exactly what a Dask
  worker runs (it reads the block from the store; classifier probe on the true labels
  along the C grid, control probe at the selected C, 20 RCVs), in a *fresh process*
  whose peak resident memory is the worker's;
- **scikit-learn** on the same arrays (already in memory: reading is not charged to it):
  per C one ``LogisticRegression(C, solver="lbfgs")`` (multinomial), the same ``tol`` and
  ``max_iter``, selected by validation cross-entropy, then the control labels at that C;
  one multi-target ``Ridge`` per alpha scored on valid R² (the fastest a user would
  write for a fixed validation split: one fit per alpha for all 20 targets). Where
  scikit-learn would take hours
  (``--sklearn-iters k``), each fit is stopped after ``k`` iterations, its time per
  iteration measured and multiplied by the iterations our solver needed at that C
  (warm-started: a lower bound on a cold start's), and the figure is marked
  *extrapolated*;
- the **cost model** (``probestore analyze --dry-run``) estimate of the same block, to
  check it against the measured time (goal: within 2×) and memory;
- **memory**: the engine block's peak RSS against the estimate, and the same block
  *streamed* (``max_block_bytes`` an eighth of the block) to show the streaming path's
  peak;
- **scaling** (``--scaling``): the whole store with 1 and with 2 local workers (same
  table), and (``--distributed``) on a real ``dask scheduler`` with 2 ``dask worker``
  processes (same table again).

Default size (a few minutes on 2 cores): N = 10,000, F = 1,000, K = 1,000, 4 Cs, at
most 50 iterations per C on both sides (*reduced iterations*). ``--paper``: N = 50,000,
the 7-C grid, 1,000 iterations, scikit-learn extrapolated from 3 iterations per C.

Examples
--------
python benchmarks/bench_paper_scale.py --out bench-output/paper_scale.json
python benchmarks/bench_paper_scale.py --scaling --distributed --skip-sklearn
python benchmarks/bench_paper_scale.py --paper --out bench-output/paper_scale_50k.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from analyze.config import AnalysisConfig  # noqa: E402
from storage_schema import layout  # noqa: E402
from storage_schema.store import create_store  # noqa: E402

RUN = "generalizing"


# --------------------------------------------------------------------------- the store


def layer_features(rng, z: np.ndarray, F: int, decay: float = 0.7, noise: float = 0.5) -> np.ndarray:
    """ReLU features of a latent code through a decaying spectrum (float32, n × F)."""
    latent = z.shape[1]
    mix = rng.standard_normal((latent, F)) / np.sqrt(latent)
    pre = z @ mix + noise * rng.standard_normal((z.shape[0], F))
    pre *= np.arange(1, F + 1) ** -decay  # eigenvalue spectrum s_i ~ i^-decay
    basis, _ = np.linalg.qr(rng.standard_normal((F, F)))
    pre = pre @ basis
    pre /= pre.std(axis=0)
    return np.maximum(pre + 0.3, 0.0).astype(np.float32)


def generate_store(path: Path, *, n: int, F: int, K: int, T: int, layers: int, checkpoints: int,
                   seed: int = 0, latent: int = 256, separation: float = 0.45) -> dict:
    """Write the benchmark store; returns its description."""
    rng = np.random.default_rng(seed)
    n_types = 2 * K
    type_class = np.repeat(np.arange(K), 2)
    types = rng.integers(0, n_types, n)
    labels = type_class[types]
    splits = rng.choice(3, size=n, p=[0.6, 0.2, 0.2]).astype(np.int8)
    class_means = rng.standard_normal((K, latent)) * separation
    type_offsets = rng.standard_normal((n_types, latent)) * 0.5 * separation
    store = create_store(path, dataset_name=f"paper-scale-synthetic-{K}", sample_ids=[f"s{i:06d}" for i in range(n)],
                         labels=labels, splits=splits, class_names=[f"c{k}" for k in range(K)],
                         source={"generated_by": "benchmarks/bench_paper_scale.py", "seed": seed}, overwrite=True)
    z_base = class_means[labels] + type_offsets[types]
    proj = rng.standard_normal((latent, T)) / np.sqrt(latent)
    for t in range(T):
        y = np.tanh(z_base @ proj[:, t]) + rng.uniform(0.2, 1.0) * rng.standard_normal(n)
        store.add_target(f"concept_{t:02d}", y, "continuous")
    store.set_sample_types(types, method={"kind": "synthetic", "n_types": n_types})
    store.add_run(RUN, model={"name": "synthetic-inception-like"}, architecture="synthetic",
                  train_labels=labels, corrupted=np.zeros(n, bool),
                  corruption={"fraction": 0.0, "mode": "none", "seed": seed})
    names = [f"mixed_{i}" for i in range(layers)]
    for c in range(checkpoints):
        ck = f"epoch_{c + 1:04d}"
        store.add_checkpoint(RUN, ck, epoch=c + 1, sha256=f"synthetic-{c}")
        for i, name in enumerate(names):
            z = z_base + (1.0 + 0.5 * i - 0.2 * c) * rng.standard_normal((n, latent))  # deeper: cleaner
            X = layer_features(rng, z, F)
            store.create_block(RUN, ck, name, n_features=F, reduction={"kind": "random_subset", "seed": seed})
            store.write_rows(RUN, ck, name, 0, X)
            store.mark_block_complete(RUN, ck, name)
        logits = (z_base @ rng.standard_normal((latent, K)) * 0.1).astype(np.float32)
        store.create_block(RUN, ck, layout.OUTPUTS, n_features=K, reduction=None)
        store.write_rows(RUN, ck, layout.OUTPUTS, 0, logits)
        store.mark_block_complete(RUN, ck, layout.OUTPUTS)
        store.set_layer_order(RUN, ck, names)
        store.mark_checkpoint_complete(RUN, ck)
    store.close()
    return {"n": n, "features": F, "classes": K, "targets": T, "layers": names, "checkpoints": checkpoints,
            "types": n_types, "spectrum": "s_i ~ i^-0.7, ReLU", "split_counts": np.bincount(splits).tolist()}


# --------------------------------------------------------------------------- one block in a fresh worker


def _worker_block(store_path, job, config, conn) -> None:
    """Child process: what a Dask worker does for one block; sends rows, seconds, RSS figures."""
    import resource

    import psutil

    import analyze.solvers.logistic as logistic
    from analyze.block_task import build_sample_data, run_block
    from analyze.jobs import plan_jobs
    from storage_schema.store import open_store

    iterations: dict = {}
    fit = logistic.fit_logistic_block

    def recording(*args, **kwargs):  # the per-C iteration counts (the table keeps only the chosen C's)
        res = fit(*args, **kwargs)
        for name, r in res.items():
            iterations[name] = {"Cs": r.Cs.tolist(), "n_iter": r.path["n_iter"].tolist(), "C": r.C,
                                "n_iter_at_C": r.n_iter, "status": r.status}
        return res

    fixed = logistic._fit_fixed
    timing = {"fixed_C_seconds": 0.0}

    def timed_fixed(*args, **kwargs):  # the control probe's own solve (at the task probe's C)
        t0 = time.perf_counter()
        try:
            return fixed(*args, **kwargs)
        finally:
            timing["fixed_C_seconds"] += time.perf_counter() - t0

    logistic.fit_logistic_block = recording
    logistic._fit_fixed = timed_fixed
    with open_store(store_path) as store:
        sample = build_sample_data(store, plan_jobs(store, config), config)
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    out = run_block(store_path, job, sample, config)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send({"rows": out.rows, "seconds": seconds, "streamed": out.streamed, "baseline_rss": base,
               "peak_rss": peak, "iterations": iterations,
               "control_seconds": timing["fixed_C_seconds"]})
    conn.close()


def run_in_fresh_process(store_path: str, job, config: AnalysisConfig) -> dict:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker_block, args=(store_path, job, config, child))
    proc.start()
    child.close()
    got = parent.recv()
    proc.join()
    return got


# --------------------------------------------------------------------------- scikit-learn


def _fit_lr(Z, y, C, tol, max_iter):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        m = LogisticRegression(C=C, solver="lbfgs", tol=tol, max_iter=max_iter).fit(Z, y)
        return m, time.perf_counter() - t0


def sklearn_block(X, sample, config, targets, *, tol, max_iter, sklearn_iters, our_iters):
    """The user's loop (module doc); ``our_iters`` (C -> iterations) drives the extrapolation."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import log_loss, r2_score
    from sklearn.preprocessing import StandardScaler

    idx = sample.split_index
    K = sample.n_classes
    out: dict = {"extrapolated": bool(sklearn_iters), "per_C": []}
    t0 = time.perf_counter()
    X = np.asarray(X, dtype=np.float64)
    sc = StandardScaler().fit(X[idx["train"]])
    Z = {s: sc.transform(X[i]) for s, i in idx.items()}
    t_scale = time.perf_counter() - t0

    t0 = time.perf_counter()
    cols = [sample.targets.index(t) for t in targets]
    Y = {s: sample.target_values[i][:, cols] for s, i in idx.items()}
    fits = [Ridge(alpha=a).fit(Z["train"], Y["train"]) for a in config.alphas]
    r2v = np.array([r2_score(Y["valid"], m.predict(Z["valid"]), multioutput="raw_values") for m in fits])
    best = len(config.alphas) - 1 - np.argmax(r2v[::-1], axis=0)
    out["rcv_alpha"] = {t: config.alphas[best[i]] for i, t in enumerate(targets)}
    out["rcv_seconds"] = time.perf_counter() - t0 + t_scale

    y = sample.labels
    seconds = t_scale
    models = []
    for C in config.Cs:
        if sklearn_iters:
            m, s = _fit_lr(Z["train"], y[idx["train"]], C, tol, sklearn_iters)
            per_iter = s / max(1, int(m.n_iter_[0]))
            need = our_iters.get(C, max_iter)
            est = per_iter * need
            out["per_C"].append({"C": C, "timed_iterations": int(m.n_iter_[0]), "seconds_per_iteration": per_iter,
                                 "assumed_iterations": need, "seconds": est})
            seconds += est
            continue
        m, s = _fit_lr(Z["train"], y[idx["train"]], C, tol, max_iter)
        seconds += s
        proba = np.zeros((Z["valid"].shape[0], K))
        proba[:, m.classes_] = m.predict_proba(Z["valid"])
        ce = log_loss(y[idx["valid"]], proba, labels=range(K))
        models.append((ce, C, m))
        out["per_C"].append({"C": C, "iterations": int(m.n_iter_[0]), "seconds": s, "ce_valid": ce,
                             "seconds_per_iteration": s / max(1, int(m.n_iter_[0]))})
    if models:
        _, C_true, m = min(models, key=lambda r: r[0])
        out["C_true"] = C_true
        out["test_error_true"] = float(np.mean(m.predict(Z["test"]) != y[idx["test"]]))
        if sample.control is not None:
            mc, s = _fit_lr(Z["train"], sample.control[idx["train"]], C_true, tol, max_iter)
            seconds += s
            out["control_seconds"] = s
            out["control_iterations"] = int(mc.n_iter_[0])
            out["test_error_control"] = float(np.mean(mc.predict(Z["test"]) != sample.control[idx["test"]]))
    else:  # extrapolated: the control fit at the C our engine selected, from its iterations
        mc, s = _fit_lr(Z["train"], sample.control[idx["train"]], our_iters.get("control_C", config.Cs[0]), tol,
                        sklearn_iters)
        est = s / max(1, int(mc.n_iter_[0])) * our_iters.get("control", max_iter)
        out["control_seconds"] = est
        seconds += est
    out["classifier_seconds"] = seconds
    return out


# --------------------------------------------------------------------------- the parts


def _plan(store_path, config):
    from analyze.jobs import plan_jobs
    from storage_schema.store import open_store

    with open_store(store_path) as store:
        plan = plan_jobs(store, config)
        from analyze.block_task import build_sample_data

        sample = build_sample_data(store, plan, config)
    return plan, sample


def estimate(store_path, config, threads: int = 1) -> dict:
    """The cost model's figures for every block (what ``--dry-run`` prints)."""
    from analyze import cost_model
    from storage_schema.store import open_store

    plan, _ = _plan(store_path, config)
    cal, source = cost_model.load_or_calibrate(threads)
    with open_store(store_path) as store:
        splits = cost_model.split_sizes(store)
    ests = cost_model.estimate_plan(plan, splits, config, cal)
    return {"source": source, "blocks": {e.name: {"seconds": e.seconds, "memory_bytes": e.memory_bytes,
                                                  "parts": e.parts, "streamed": e.streamed} for e in ests},
            "calibration": asdict(cal)}


def side_by_side(store_path, config, *, tol, max_iter, sklearn_iters, skip_sklearn) -> dict:
    from storage_schema.store import open_store

    plan, sample = _plan(store_path, config)
    job = next(j for j in plan.jobs if j.kind == "features")
    engine = run_in_fresh_process(store_path, job, config)
    rows = {(r["probe"], r["target"]): r for r in engine["rows"]}
    clf, ctl = rows[("classifier", "true_labels")], rows.get(("control", "control_labels"))
    rcv_rows = [r for r in engine["rows"] if r["probe"] == "rcv"]
    both = clf["fit_seconds"] + (ctl["fit_seconds"] if ctl else 0.0)  # the rows split the group's time evenly
    fit = {"classifier": both, "true": both - engine["control_seconds"], "control": engine["control_seconds"],
           "rcv": sum(r["fit_seconds"] for r in rcv_rows)}
    out = {"block": job.name, "n_samples": job.n_samples, "n_features": job.n_features,
           "engine": {"block_seconds": engine["seconds"], "fit_seconds": fit,
                      "C_true": clf["hyperparameter_value"], "test_error_true": clf["test_error"],
                      "test_error_control": ctl["test_error"] if ctl else None,
                      "status": sorted({r["status"] for r in engine["rows"]}),
                      "messages": sorted({r["message"][:160] for r in (clf, ctl) if r}),
                      "peak_rss": engine["peak_rss"], "baseline_rss": engine["baseline_rss"],
                      "iterations": engine["iterations"]}}
    print(f"engine {job.name}: block {engine['seconds']:.1f} s (classifier true {fit['true']:.1f} s, control "
          f"{fit['control'] or 0:.1f} s, 20 RCVs {fit['rcv']:.2f} s), C {clf['hyperparameter_value']:g}, test error "
          f"{clf['test_error']:.4f}, peak RSS {engine['peak_rss'] / 2**20:.0f} MiB", flush=True)
    if skip_sklearn:
        return out
    with open_store(store_path) as store:
        X = np.asarray(store.read_layer(job.run, job.checkpoint, job.layer), dtype=np.float32)
    our_iters = _our_iterations(engine["iterations"])
    targets = [r["target"] for r in rcv_rows]
    ref = sklearn_block(X, sample, config, targets, tol=tol, max_iter=max_iter, sklearn_iters=sklearn_iters,
                        our_iters=our_iters)
    same_alpha = sum(rows[("rcv", t)]["hyperparameter_value"] == a for t, a in ref["rcv_alpha"].items())
    out["sklearn"] = ref
    out["ratios"] = {"classifier_true_and_control": ref["classifier_seconds"] / fit["classifier"],
                     "rcv": ref["rcv_seconds"] / max(fit["rcv"], 1e-9),
                     "rcv_same_alpha": f"{same_alpha}/{len(targets)}"}
    if "C_true" in ref:
        out["ratios"]["same_C"] = ref["C_true"] == clf["hyperparameter_value"]
        out["ratios"]["test_error_diff_pp"] = abs(ref["test_error_true"] - clf["test_error"]) * 100
    print(f"sklearn: classifier (true + control) {ref['classifier_seconds']:.1f} s"
          f"{' (extrapolated)' if ref['extrapolated'] else ''}, 20 RCVs {ref['rcv_seconds']:.2f} s; ratios "
          f"{json.dumps(out['ratios'], default=str)}", flush=True)
    return out


def _our_iterations(iterations: dict) -> dict:
    """C -> iterations of our true-label path, and ``"control"`` -> those of the control fit."""
    true = iterations["true_labels"]
    out: dict = {C: int(k) for C, k in zip(true["Cs"], true["n_iter"])}
    if "control_labels" in iterations:
        out["control"] = int(iterations["control_labels"]["n_iter_at_C"])
        out["control_C"] = float(iterations["control_labels"]["C"])
    return out


def memory_streamed(store_path, config) -> dict:
    """The first block streamed (budget = 1/8 of it), one C and few iterations: peak RSS only."""
    plan, _ = _plan(store_path, config)
    job = next(j for j in plan.jobs if j.kind == "features")
    budget = max(1 << 20, job.read_bytes // 8)
    cfg = config.replace(max_block_bytes=budget, Cs=(config.Cs[len(config.Cs) // 2],), max_iter=5)
    got = run_in_fresh_process(store_path, job, cfg)
    print(f"streamed {job.name} (budget {budget / 2**20:.1f} MiB): peak RSS {got['peak_rss'] / 2**20:.0f} MiB "
          f"(baseline {got['baseline_rss'] / 2**20:.0f} MiB), streamed={got['streamed']}", flush=True)
    return {"budget_bytes": budget, "peak_rss": got["peak_rss"], "baseline_rss": got["baseline_rss"],
            "streamed": got["streamed"], "seconds": got["seconds"],
            "estimate": estimate(store_path, cfg)["blocks"][job.name]}


def scaling(store_path, config, workdir: Path, distributed: bool) -> dict:
    from analyze.engine import run_analysis
    from analyze.results import NONDETERMINISTIC_COLUMNS, read_table

    out: dict[str, Any] = {}
    tables = {}
    for workers in (1, 2):
        cfg = config.replace(scheduler="local", n_workers=workers, threads_per_worker=1,
                             results=str(workdir / f"scale_{workers}.parquet"))
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        s = run_analysis(store_path, cfg, progress=False, log=lambda m: None)
        seconds = time.perf_counter() - t0
        table = read_table(s.results)
        tables[workers] = table.drop(columns=list(NONDETERMINISTIC_COLUMNS))
        out[f"{workers}_worker"] = {"seconds": seconds, "blocks": s.blocks_done, "probes": s.probes_written,
                                    "load_before": load, "load_after": os.getloadavg()[0],
                                    "block_fit_seconds": table.groupby("layer")["fit_seconds"].sum().to_dict()}
        print(f"scaling: {workers} worker(s) {seconds:.1f} s ({s.blocks_done} blocks; load {load:.1f})", flush=True)
    out["speedup_2_vs_1"] = out["1_worker"]["seconds"] / out["2_worker"]["seconds"]
    out["identical_1_vs_2"] = bool(tables[1].equals(tables[2]))
    if distributed:
        cfg = config.replace(results=str(workdir / "scale_dask.parquet"))
        seconds, table = _on_dask_processes(store_path, cfg, workdir)
        out["dask_processes"] = {"seconds": seconds, "identical_to_local": bool(
            table.drop(columns=list(NONDETERMINISTIC_COLUMNS)).equals(tables[1]))}
        print(f"scaling: dask scheduler + 2 dask worker processes {seconds:.1f} s, identical table: "
              f"{out['dask_processes']['identical_to_local']}", flush=True)
    return out


def _on_dask_processes(store_path, config, workdir: Path):
    """``dask scheduler`` and two ``dask worker`` processes (separate process groups), as a user starts them."""
    from distributed import Client

    from analyze.engine import run_analysis
    from analyze.results import read_table

    dask = str(Path(sys.executable).with_name("dask"))
    sched = workdir / "scheduler.json"
    log = open(workdir / "dask.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not sched.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(sched), "--nworkers", "1",
                                           "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                           "--local-directory", str(workdir / "workers")],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env))
        with Client(scheduler_file=str(sched)) as client:
            client.wait_for_workers(2, timeout=120)
            t0 = time.perf_counter()
            s = run_analysis(store_path, config.replace(threads_per_worker=1), client=client, progress=False,
                             log=lambda m: None)
            seconds = time.perf_counter() - t0
        return seconds, read_table(s.results)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        log.close()


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paper", action="store_true", help="N=50,000, the 7-C grid, 1,000 iterations, sklearn extrapolated")
    p.add_argument("--n", type=int, help="samples (default 10,000; --paper 50,000)")
    p.add_argument("--features", type=int, default=1000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--targets", type=int, default=20)
    p.add_argument("--layers", type=int, default=2, help="layers per checkpoint")
    p.add_argument("--checkpoints", type=int, default=1)
    p.add_argument("--Cs", help="comma-separated grid (default 1e-3,1e-2,1e-1,1; --paper logspace(-4, 2, 7))")
    p.add_argument("--tol", type=float, default=1e-4, help="gradient tolerance, both sides")
    p.add_argument("--max-iter", type=int, help="iterations per C, both sides (default 50; --paper 1000)")
    p.add_argument("--sklearn-iters", type=int,
                   help="time only this many sklearn iterations per C and extrapolate (default: none; --paper 3)")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--skip-side-by-side", action="store_true")
    p.add_argument("--scaling", action="store_true", help="also 1 vs 2 local workers on the whole store")
    p.add_argument("--distributed", action="store_true", help="also a real dask scheduler + 2 worker processes")
    p.add_argument("--store", help="reuse this generated store (else a temporary one)")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args(argv)
    n = a.n or (50_000 if a.paper else 10_000)
    Cs = tuple(float(c) for c in a.Cs.split(",")) if a.Cs else \
        (tuple(np.logspace(-4, 2, 7)) if a.paper else (1e-3, 1e-2, 1e-1, 1.0))
    max_iter = a.max_iter or (1000 if a.paper else 50)
    sklearn_iters = a.sklearn_iters if a.sklearn_iters is not None else (3 if a.paper else 0)
    config = AnalysisConfig(Cs=Cs, tol=a.tol, max_iter=max_iter, probes=("classifier", "control", "rcv"),
                            threads_per_worker=1, scheduler="none")
    workdir = Path(tempfile.mkdtemp(prefix="bench_paper_"))
    report: dict = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                                "cpus": os.cpu_count(), "numpy": np.__version__, "load_at_start": os.getloadavg()},
                    "settings": {"Cs": list(Cs), "alphas": list(config.alphas), "tol": a.tol, "max_iter": max_iter,
                                 "sklearn_iters": sklearn_iters, "blas_threads": 1}}
    try:
        store = Path(a.store) if a.store else workdir / "paper.zarr"
        if not (store / "zarr.json").exists():
            t0 = time.perf_counter()
            report["data"] = generate_store(store, n=n, F=a.features, K=a.classes, T=a.targets,
                                            layers=a.layers, checkpoints=a.checkpoints)
            report["data"]["store_seconds"] = time.perf_counter() - t0
            print(f"store {store}: {json.dumps(report['data'])}", flush=True)
        store_path = str(store.resolve())
        report["estimate"] = est = estimate(store_path, config)
        print(f"cost model ({est['source']}): " + ", ".join(f"{k} ~{v['seconds']:.1f} s / "
              f"{v['memory_bytes'] / 2**20:.0f} MiB" for k, v in est["blocks"].items()), flush=True)
        if not a.skip_side_by_side:
            report["side_by_side"] = sbs = side_by_side(store_path, config, tol=a.tol, max_iter=max_iter,
                                                        sklearn_iters=sklearn_iters, skip_sklearn=a.skip_sklearn)
            e = est["blocks"][sbs["block"]]
            sbs["estimate_over_measured"] = e["seconds"] / sbs["engine"]["block_seconds"]
            sbs["memory_estimate_over_measured"] = e["memory_bytes"] / sbs["engine"]["peak_rss"]
            print(f"cost model vs measured: time {sbs['estimate_over_measured']:.2f}x, memory "
                  f"{sbs['memory_estimate_over_measured']:.2f}x", flush=True)
            report["memory_streamed"] = memory_streamed(store_path, config)
        if a.scaling or a.distributed:
            report["scaling"] = scaling(store_path, config, workdir, a.distributed)
        report["machine"]["load_at_end"] = os.getloadavg()
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(report, indent=2, default=str))
            print(f"wrote {a.out}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
