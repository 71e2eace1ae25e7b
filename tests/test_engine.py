"""The analysis engine end to end on small real stores: rows vs scikit-learn, workers, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss, mean_squared_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from analyze.block_task import INNER_FRACTION, INNER_SEED
from analyze.config import AnalysisConfig
from analyze.controls import control_labels
from analyze.engine import dry_run, run_analysis
from analyze.results import NONDETERMINISTIC_COLUMNS, read_metadata, read_table, results_paths
from analyze.solvers.logistic import inner_split
from probestore.errors import ConfigError, FingerprintMismatchError
from storage_schema.store import open_store
from tests.helpers.analysis import ALPHAS, CS, comparable, quiet, sync_config
from tests.helpers.stores import LAYERS, make_store


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A zarr store and its full analysis (in-process), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("analysed")
    store = make_store(tmp / "s.zarr")
    summary = run_analysis(store, sync_config(tmp), progress=False, log=quiet)
    return store, summary.results, read_table(summary.results)


# ---------------------------------------------------------------------------- vs scikit-learn


def _splits(store_path, run, ckpt, layer):
    with open_store(store_path) as s:
        X = s.read_layer(run, ckpt, layer).astype(np.float64)
        codes = s.splits()
        data = {"labels": s.labels(), "train_labels": s.train_labels(run), "corrupted": s.corrupted_mask(run),
                "types": s.sample_types(),
                "area": s.read_target("area"), "eccentricity": s.read_target("eccentricity"),
                "K": len(s.dataset.class_names)}
    idx = {name: np.flatnonzero(codes == c) for c, name in enumerate(("train", "valid", "test"))}
    return X, idx, data


def _sklearn_classifier(X, idx, y, K, Cs=CS):
    """Per C a LogisticRegression on standardized features; select on valid cross-entropy."""
    scaler = StandardScaler().fit(X[idx["train"]])
    Z = {s: scaler.transform(X[i]) for s, i in idx.items()}
    fits = []
    for C in Cs:
        clf = LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(Z["train"], y[idx["train"]])
        fits.append((log_loss(y[idx["valid"]], clf.predict_proba(Z["valid"]), labels=range(K)), C, clf))
    best = min(fits, key=lambda f: f[0])  # first minimum: the smaller C on ties, like the engine
    return best[1], best[2], Z


def _sklearn_inner_C(X, idx, y, K):
    """The training-label rule with scikit-learn: select C on the inner split of train."""
    tr = idx["train"]
    held = inner_split(y[tr], INNER_FRACTION, INNER_SEED)
    inner = {"train": tr[~held], "valid": tr[held]}
    return _sklearn_classifier(X, inner, y, K)[0]


@pytest.mark.parametrize(("run", "target"), [("clean", "true_labels"), ("noisy", "train_labels"),
                                             ("noisy", "control_labels")])
def test_classifier_rows_match_sklearn(analysed, run, target):
    store, _, table = analysed
    X, idx, d = _splits(store, run, "epoch_0001", "l2")
    y = {"true_labels": d["labels"], "train_labels": d["train_labels"],
         "control_labels": control_labels(d["types"], d["labels"], d["K"], 0)}[target]
    t = table.set_index("probe_id")
    if target == "control_labels":  # Hewitt & Liang: no own selection, the true-label probe's C
        Cs = (t.loc[f"{run}/epoch_0001/l2/classifier/true_labels", "hyperparameter_value"],)
    elif target == "train_labels":  # selected on held-out samples that carry the training labels
        Cs = (_sklearn_inner_C(X, idx, y, d["K"]),)
    else:
        Cs = CS
    C, clf, Z = _sklearn_classifier(X, idx, y, d["K"], Cs)
    probe = "control" if target == "control_labels" else "classifier"
    row = t.loc[f"{run}/epoch_0001/l2/{probe}/{target}"]
    assert row["status"] == "ok" and row["hyperparameter"] == "C"
    assert row["hyperparameter_value"] == C
    for split in ("train", "valid", "test"):
        ys = y[idx[split]]
        err = float(np.mean(clf.predict(Z[split]) != ys))
        assert abs(row[f"{split}_error"] - err) <= 1.0 / len(ys) + 1e-12, split
        ce = log_loss(ys, clf.predict_proba(Z[split]), labels=range(d["K"]))
        assert row[f"{split}_loss"] == pytest.approx(ce, rel=2e-3), split
        assert row[f"n_{split}"] == len(ys)
    if probe == "classifier" and run == "noisy":  # clean / corrupted errors on the train split
        wrong = clf.predict(Z["train"]) != y[idx["train"]]
        bad = d["corrupted"][idx["train"]]
        assert bad.any() and (~bad).any()
        assert row["clean_error"] == pytest.approx(wrong[~bad].mean(), abs=1.0 / (~bad).sum() + 1e-12)
        assert row["corrupted_error"] == pytest.approx(wrong[bad].mean(), abs=1.0 / bad.sum() + 1e-12)
    else:
        assert np.isnan(row["clean_error"]) and np.isnan(row["corrupted_error"])


def test_selectivity_is_true_minus_control_accuracy(analysed):
    _, _, table = analysed
    t = table.set_index("probe_id")
    for run in ("clean", "noisy"):
        true = t.loc[f"{run}/epoch_0003/l1/classifier/true_labels"]
        ctrl = t.loc[f"{run}/epoch_0003/l1/control/control_labels"]
        for split in ("train", "valid", "test"):
            assert true[f"selectivity_{split}"] == pytest.approx((1 - true[f"{split}_error"])
                                                                 - (1 - ctrl[f"{split}_error"]))
        assert ctrl["hyperparameter_value"] == true["hyperparameter_value"]
        assert true["selectivity_test"] > 0.2  # class-structured features: the layer, not the probe
    assert table.loc[table.probe != "classifier", "selectivity_test"].isna().all()


@pytest.mark.parametrize("target", ["area", "eccentricity"])
def test_rcv_rows_match_sklearn_ridge(analysed, target):
    store, _, table = analysed
    X, idx, d = _splits(store, "noisy", "epoch_0003", "l3")
    y = d[target]
    scores = []
    for alpha in ALPHAS:
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X[idx["train"]], y[idx["train"]])
        scores.append((r2_score(y[idx["valid"]], model.predict(X[idx["valid"]])), alpha, model))
    best = max(scores, key=lambda s: (s[0], s[1]))  # ties -> the larger alpha
    row = table.set_index("probe_id").loc[f"noisy/epoch_0003/l3/rcv/{target}"]
    assert row["status"] == "ok" and row["hyperparameter"] == "alpha"
    assert row["hyperparameter_value"] == best[1]
    for split in ("train", "valid", "test"):
        pred = best[2].predict(X[idx[split]])
        assert row[f"{split}_r2"] == pytest.approx(r2_score(y[idx[split]], pred), rel=1e-6, abs=1e-9)
        assert row[f"{split}_mspe"] == pytest.approx(mean_squared_error(y[idx[split]], pred), rel=1e-6)
    assert np.isnan(row["test_error"]) and np.isnan(row["train_loss"])


def test_table_shape_and_probe_ids(analysed):
    _, results, table = analysed
    # 2 runs x 3 checkpoints x 3 layers: classifier (+ train_labels on the corrupted run),
    # control, 2 RCVs; plus model outputs per checkpoint (true, + train labels when corrupted)
    assert len(table) == 6 * 3 * (1 + 1 + 2) + 3 * 3 + 3 * 1 + 3 * 2
    assert table["probe_id"].is_unique and list(table["probe_id"]) == sorted(table["probe_id"])
    assert set(table["status"]) == {"ok"}
    ids = table["probe_id"].str.split("/", expand=True)
    assert (ids[0] == table["run"]).all() and (ids[2] == table["layer"]).all()
    assert (ids[3] == table["probe"]).all() and (ids[4] == table["target"]).all()
    assert set(table["epoch"]) == {0, 1, 3}
    noisy = table[table.run == "noisy"]
    assert (noisy["corruption_fraction"] == 0.5).all() and (noisy["reduction"].isin(["flatten", "none"])).all()
    errors = table[["train_error", "valid_error", "test_error"]].to_numpy()
    assert np.nanmin(errors) >= 0 and np.nanmax(errors) <= 1
    # deeper training -> better probes (the synthetic noise shrinks with the epoch)
    clf = table[(table.probe == "classifier") & (table.target == "true_labels")]
    assert clf[clf.epoch == 3]["test_error"].mean() < clf[clf.epoch == 0]["test_error"].mean()
    # the CSV export holds the same table, and the fingerprint is in the Parquet metadata
    csv = read_table(results_paths(results)["csv"])
    pd.testing.assert_frame_equal(comparable(csv), comparable(table), check_exact=False, rtol=1e-12)
    with open_store(analysed[0]) as s:
        assert read_metadata(results)["fingerprint"] == s.fingerprint


# ---------------------------------------------------------------------------- determinism


def test_same_table_in_process_and_on_1_and_2_local_workers_zarr_and_hdf5(tmp_path):
    from distributed import Client, LocalCluster

    stores = {sfx: make_store(tmp_path / f"s{sfx}", epochs=(0, 2), layers=LAYERS[:2]) for sfx in (".zarr", ".h5")}

    def table(store, name, client=None, **kw):
        cfg = AnalysisConfig(Cs=CS, alphas=ALPHAS, results=str(tmp_path / f"{name}.parquet"), **kw)
        summary = run_analysis(store, cfg, client=client, progress=False, log=quiet)
        assert summary.complete and summary.status_counts["ok"] == summary.probes_written > 0
        return comparable(read_table(summary.results))

    ref = {sfx: table(store, f"sync{sfx}", scheduler="none") for sfx, store in stores.items()}
    # the Zarr and HDF5 copies of the same data give the same numbers
    pd.testing.assert_frame_equal(ref[".zarr"], ref[".h5"], check_exact=True)
    # an embedded cluster started by the engine itself (1 worker)...
    pd.testing.assert_frame_equal(table(stores[".zarr"], "one", n_workers=1), ref[".zarr"], check_exact=True)
    # ... and 2 worker processes (one BLAS thread each, like the in-process run)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for sfx, store in stores.items():
            got = table(store, f"two{sfx}", client=client, threads_per_worker=1)
            pd.testing.assert_frame_equal(got, ref[sfx], check_exact=True, obj=f"2 workers {sfx}")


# ---------------------------------------------------------------------------- resume


def test_rerun_skips_everything_and_keeps_the_table(analysed, tmp_path):
    store, results, table = analysed
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(Path(results).read_bytes())
    summary = run_analysis(store, AnalysisConfig(scheduler="none", Cs=CS, alphas=ALPHAS, results=str(copy)),
                           progress=False, log=quiet)
    assert summary.probes_written == 0 and summary.probes_skipped == len(table)
    pd.testing.assert_frame_equal(read_table(copy), table)  # fit_seconds included: rows untouched


def test_resume_after_losing_rows_and_parts_gives_the_same_table(analysed, tmp_path):
    store, _, full = analysed
    cfg = sync_config(tmp_path)
    # 1) a partial analysis (one run only), then the rest: the union equals the full table
    run_analysis(store, cfg.replace(runs="clean"), progress=False, log=quiet)
    assert set(read_table(cfg.results)["run"]) == {"clean"}
    # 2) lose some rows of the table and leave a stale part file behind (a crash between
    #    writing the table and deleting parts): the rerun refits what is missing only
    table = read_table(cfg.results)
    kept = table[~table.probe_id.str.contains("epoch_0001/l2/")]
    from analyze.results import ResultsWriter

    writer = ResultsWriter(cfg.results, read_metadata(cfg.results))
    writer.files["table"].unlink()
    writer.write_part(("x",), kept.to_dict("records")[:5])  # duplicates of rows kept below
    writer.write_part(("y",), kept.to_dict("records"))
    summary = run_analysis(store, cfg, progress=False, log=quiet)
    assert summary.blocks_done == (len(full["run"].unique()) * 0 + 1 + 3 * 4)  # clean l2 + all of noisy
    final = read_table(cfg.results)
    assert final["probe_id"].is_unique
    pd.testing.assert_frame_equal(comparable(final), comparable(full), check_exact=True)
    assert not results_paths(cfg.results)["parts"].exists()


@pytest.mark.slow
def test_killed_analysis_rerun_gives_the_uninterrupted_table(analysed, tmp_path):
    store, _, full = analysed
    results = tmp_path / "killed.parquet"
    parts = results_paths(results)["parts"]
    cmd = [sys.executable, "-m", "probestore", "analyze", str(store), "-o", str(results),
           "--scheduler", "none", "--Cs", ",".join(map(str, CS)), "--alphas", ",".join(map(str, ALPHAS)),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not results.exists() and 3 <= len(list(parts.glob("part-*.parquet"))) < 24
    summary = run_analysis(store, AnalysisConfig(scheduler="none", Cs=CS, alphas=ALPHAS, results=str(results)),
                           progress=False, log=quiet)
    assert summary.probes_skipped >= 3
    final = read_table(results)
    assert final["probe_id"].is_unique
    pd.testing.assert_frame_equal(comparable(final), comparable(full), check_exact=True)


def test_results_of_another_dataset_are_refused(analysed, tmp_path):
    _, results, _ = analysed
    other = make_store(tmp_path / "other.zarr", seed=5, epochs=(0,), layers=LAYERS[:1])
    with pytest.raises(FingerprintMismatchError, match="another dataset"):
        run_analysis(other, AnalysisConfig(scheduler="none", results=str(results)), progress=False, log=quiet)
    # the same store with other grids would mix incomparable rows: refused too
    with pytest.raises(ConfigError, match="other probe settings"):
        run_analysis(analysed[0], sync_config(Path(results).parent, name=Path(results).name).replace(Cs=(1.0,)),
                     progress=False, log=quiet)


# ---------------------------------------------------------------------------- failures


def test_failing_probes_get_failed_rows_and_the_rest_goes_on(tmp_path):
    n = 120
    nan_target = np.random.default_rng(1).normal(size=n)
    nan_target[7] = np.nan
    store = make_store(tmp_path / "bad.zarr", n=n, epochs=(1,), layers=LAYERS[:1], runs=(("clean", 0.0),),
                       extra_targets={"broken": nan_target, "flat": np.full(n, 3.0)})
    summary = run_analysis(store, sync_config(tmp_path), progress=False, log=quiet)
    t = read_table(summary.results).set_index("probe_id")
    broken = t.loc["clean/epoch_0001/l1/rcv/broken"]
    assert broken["status"] == "failed" and "NaN" in broken["message"] and np.isnan(broken["test_r2"])
    flat = t.loc["clean/epoch_0001/l1/rcv/flat"]
    assert flat["status"] == "failed" and "constant" in flat["message"]
    assert t.loc["clean/epoch_0001/l1/rcv/area", "status"] == "ok"
    assert t.loc["clean/epoch_0001/l1/classifier/true_labels", "status"] == "ok"
    assert summary.status_counts["failed"] == 2 and summary.complete
    # a rerun skips them; --retry-failed fits them again (and they fail again, same rows)
    assert run_analysis(store, sync_config(tmp_path), progress=False, log=quiet).probes_written == 0
    retry = run_analysis(store, sync_config(tmp_path, retry_failed=True), progress=False, log=quiet)
    assert retry.probes_written == 2 and retry.status_counts["failed"] == 2
    again = read_table(retry.results).set_index("probe_id")
    assert len(again) == len(t)
    pd.testing.assert_frame_equal(comparable(again.reset_index()), comparable(t.reset_index()))


def test_single_class_labels_fail_the_classifiers_only(tmp_path):
    store = make_store(tmp_path / "one.zarr", n=90, n_classes=3, labels=np.zeros(90, dtype=int), epochs=(1,),
                       layers=LAYERS[:1], runs=(("clean", 0.0),))
    summary = run_analysis(store, sync_config(tmp_path), progress=False, log=quiet)
    t = read_table(summary.results).set_index("probe_id")
    for pid in ("clean/epoch_0001/l1/classifier/true_labels", "clean/epoch_0001/l1/control/control_labels"):
        assert t.loc[pid, "status"] == "failed"
        assert "single class" in t.loc[pid, "message"]
    assert t.loc["clean/epoch_0001/l1/rcv/area", "status"] == "ok"
    assert t.loc["clean/epoch_0001/outputs/model_output/true_labels", "status"] == "ok"


# ---------------------------------------------------------------------------- streaming, weights, dry run


def test_streamed_blocks_give_the_in_memory_numbers(analysed, tmp_path):
    store, _, full = analysed
    cfg = sync_config(tmp_path, runs="noisy", checkpoints="epoch_0003", max_block_bytes=2000)
    streamed = read_table(run_analysis(store, cfg, progress=False, log=quiet).results)
    ref = full[full.probe_id.isin(streamed.probe_id)].reset_index(drop=True)
    assert len(ref) == len(streamed) > 0
    cols = [c for c in streamed.columns if c not in NONDETERMINISTIC_COLUMNS]
    pd.testing.assert_frame_equal(streamed[cols], ref[cols], check_exact=False, rtol=1e-6, atol=1e-9)


def test_saved_weights_reproduce_the_probe(analysed, tmp_path):
    from analyze.results import read_weights

    store, _, _ = analysed
    cfg = sync_config(tmp_path, runs="clean", checkpoints="epoch_0003", layers="l1", save_weights=True)
    summary = run_analysis(store, cfg, progress=False, log=quiet)
    t = read_table(summary.results).set_index("probe_id")
    X, idx, d = _splits(store, "clean", "epoch_0003", "l1")
    w = read_weights(results_paths(summary.results)["weights"], "clean/epoch_0003/l1/rcv/area")
    assert np.linalg.norm(w["direction"]) == pytest.approx(1.0, rel=1e-6)
    pred = X[idx["test"]] @ w["coef"].astype(np.float64) + w["intercept"]
    assert r2_score(d["area"][idx["test"]], pred) == pytest.approx(t.loc["clean/epoch_0003/l1/rcv/area", "test_r2"],
                                                                  rel=1e-5)
    c = read_weights(results_paths(summary.results)["weights"], "clean/epoch_0003/l1/classifier/true_labels")
    pred = np.argmax(X[idx["test"]] @ c["coef"].T.astype(np.float64) + c["intercept"], axis=1)
    err = np.mean(pred != d["labels"][idx["test"]])
    assert err == pytest.approx(t.loc["clean/epoch_0003/l1/classifier/true_labels", "test_error"], abs=1e-12)


def test_dry_run_prints_the_plan_and_writes_nothing(analysed, tmp_path, capsys):
    from probestore.cli import main

    store, _, _ = analysed
    results = tmp_path / "dry.parquet"
    assert main(["analyze", str(store), "--dry-run", "-o", str(results), "--layers", "l1,l3",
                 "--probes", "classifier,rcv"]) == 0
    out = capsys.readouterr().out
    assert "blocks: 12 feature + 0 outputs" in out
    assert "classifier 18, control 0, rcv 24, model_output 0 (total 42)" in out
    assert "concept targets: area, eccentricity" in out and "noisy/epoch_0003/l3" in out
    assert "as float32" in out and "on disk" in out
    assert not results.exists() and not results_paths(results)["parts"].exists()
    # against an existing table, the dry run says what is already done
    text = dry_run(store, AnalysisConfig(Cs=CS, alphas=ALPHAS, results=str(analysed[1])))
    assert f"already in the results table: {len(analysed[2])} probes" in text and "blocks: 0 feature" in text
