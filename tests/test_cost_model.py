"""The cost model behind ``probestore analyze --dry-run`` (issue 16): estimates, workers, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from analyze import cost_model
from analyze.config import AnalysisConfig
from analyze.cost_model import (
    BlockEstimate,
    Calibration,
    SplitSizes,
    estimate_block,
    parse_duration,
    workers_for,
)
from analyze.jobs import BlockJob, ProbeSpec
from probestore.errors import ConfigError
from tests.helpers.stores import make_store

#: A fixed machine, so the model's arithmetic is tested, not this box's speed.
CAL = Calibration(gemm32_flops=50e9, gemm64_flops=25e9, softmax_s=2e-9, stream_s=1e-9, eigh_s=3e-10,
                  baseline_bytes=150 << 20, threads=1, machine="test", measured_at="now")
CLASSIFIER = (ProbeSpec("classifier", "true_labels"), ProbeSpec("control", "control_labels"))
RCVS = tuple(ProbeSpec("rcv", f"c{i}") for i in range(20))


def _job(n=10_000, F=1000, probes=CLASSIFIER + RCVS, layer="mixed_0"):
    return BlockJob(run="r", checkpoint="ck", layer=layer, layer_index=0, epoch=1, corruption_fraction=0.0,
                    corruption_mode="none", has_corrupted=False, n_features=F, dtype="float32", chunk_rows=1024,
                    reduction="none", n_samples=n, probes=probes)


SPLITS = SplitSizes(6000, 2000, 2000)


@pytest.mark.parametrize("text,seconds", [("8h", 28800), ("90m", 5400), ("1h30m", 5400), ("2d", 172800),
                                          ("45s", 45), ("3600", 3600), (" 1.5h ", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "8x", "h", "-1h", "0", "0h"])
def test_bad_durations_are_one_clear_error(text):
    with pytest.raises(ConfigError, match="--deadline"):
        parse_duration(text)


def test_time_grows_with_classes_and_features_and_grid():
    cfg = AnalysisConfig(Cs=(1e-3, 1e-2, 1e-1, 1.0), tol=1e-4, max_iter=100)
    base = estimate_block(_job(), SPLITS, 1000, cfg, CAL)
    assert base.parts["classifier"] > 10 * base.parts["rcv"]  # 1,000 classes: the classifier dominates
    assert estimate_block(_job(), SPLITS, 10, cfg, CAL).parts["classifier"] < base.parts["classifier"] / 20
    assert estimate_block(_job(F=2000), SPLITS, 1000, cfg, CAL).seconds > 1.5 * base.seconds
    assert estimate_block(_job(), SPLITS, 1000, cfg.replace(Cs=tuple(10.0 ** k for k in range(-4, 4))),
                          CAL).seconds > 1.5 * base.seconds
    # the two GEMMs per evaluation: 2 · 2 · n_train · F · K flops, ~30 evaluations per C at tol 1e-4
    gemm_per_eval = 4 * 6000 * 1000 * 1000 / CAL.gemm32_flops
    assert 4 * 20 * gemm_per_eval < base.parts["classifier"] < 4 * 80 * gemm_per_eval


def test_a_block_over_the_budget_is_streamed_and_needs_less_memory():
    job = _job(n=50_000)
    cfg = AnalysisConfig(Cs=(1e-2, 1.0))
    whole = estimate_block(job, SplitSizes(30_000, 10_000, 10_000), 1000, cfg, CAL)
    streamed = estimate_block(job, SplitSizes(30_000, 10_000, 10_000), 1000,
                              cfg.replace(max_block_bytes=job.read_bytes // 8), CAL)
    assert streamed.streamed and not whole.streamed
    assert streamed.memory_bytes < whole.memory_bytes
    assert streamed.memory_bytes > CAL.baseline_bytes + 4 * 40_000 * 1000  # it still holds train + valid rows


def test_workers_for_a_deadline_pack_whole_blocks():
    ests = [BlockEstimate(f"b{i}", s, 1, False) for i, s in enumerate([50, 40, 30, 20, 10])]
    assert workers_for(ests, 150)[0] == 1
    assert workers_for(ests, 80)[0] == 2  # 150 s of work: {50, 20, 10} and {40, 30}
    assert workers_for(ests, 75)[0] == 3  # 2 × 75 s would need a perfect split of whole blocks: there is none
    assert workers_for(ests, 50)[0] == 3
    n, why = workers_for(ests, 45)
    assert n is None and "longest block" in why  # one block is the unit of parallelism


def test_calibration_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBESTORE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(cost_model, "calibrate", lambda threads: calls.append(threads) or replace(CAL, threads=threads))
    cal, source = cost_model.load_or_calibrate(1)
    assert calls == [1] and "calibrated now at load average" in source
    assert (tmp_path / "cache/calibration.json").exists()
    again, source = cost_model.load_or_calibrate(1)
    assert calls == [1] and again == cal and source.startswith("cached calibration")
    cost_model.load_or_calibrate(2)  # another thread count is another entry
    assert calls == [1, 2]
    (tmp_path / "cache/calibration.json").write_text("{not json")  # a damaged cache is measured again
    cost_model.load_or_calibrate(1)
    assert calls == [1, 2, 1]
    monkeypatch.setattr(cost_model, "calibrate", lambda threads: calls.append(threads) or replace(CAL, load=99.0))
    monkeypatch.setattr(cost_model, "_load", lambda: (99.0, 2))
    cost_model.load_or_calibrate(3)  # measured on a busy machine ...
    cost_model.load_or_calibrate(3)
    assert calls == [1, 2, 1, 3]
    monkeypatch.setattr(cost_model, "_load", lambda: (0.5, 2))
    cost_model.load_or_calibrate(3)  # ... is measured again once the machine is quiet
    assert calls == [1, 2, 1, 3, 3]


def _cli(*args, env_dir):
    import os

    env = {**os.environ, "PROBESTORE_CACHE_DIR": str(env_dir)}
    return subprocess.run([sys.executable, "-m", "probestore", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_dry_run_prints_the_estimate_and_fits_nothing(tmp_path):
    """As a user runs it: a real process, a real calibration, a real Zarr store."""
    store = make_store(tmp_path / "s.zarr")
    results = tmp_path / "res.parquet"
    t0 = time.perf_counter()
    r = _cli("analyze", store, "-o", results, "--dry-run", "--deadline", "8h", "--workers", "1",
             env_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 60
    out = r.stdout
    assert "estimate: this machine, 1 BLAS thread(s) per worker (calibrated now at load average" in out
    assert "clean/epoch_0000/l1" in out and "peak ~" in out
    assert "total: ~" in out and "on 1 worker(s)" in out and "deadline 8.0 h: 1 worker(s)" in out
    assert not results.exists() and not any(tmp_path.glob("res*"))  # nothing fitted, nothing written
    cached = json.loads((tmp_path / "cache" / "calibration.json").read_text())
    (cal,) = cached.values()  # this machine's rates, measured in about a second
    assert 1e8 < cal["gemm32_flops"] < 1e13 and cal["gemm64_flops"] < 2 * cal["gemm32_flops"]
    assert 0 < cal["softmax_s"] < 1e-6 and 0 < cal["stream_s"] < 1e-6 and cal["baseline_bytes"] > 10 << 20


@pytest.fixture
def fake_machine(tmp_path, monkeypatch):
    """In-process CLI runs with a fixed calibration (the real one is tested above)."""
    monkeypatch.setenv("PROBESTORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cost_model, "calibrate", lambda threads: replace(CAL, threads=threads))


def test_dry_run_on_hdf5_uses_the_cached_calibration(tmp_path, fake_machine, capsys):
    from probestore.cli import main

    store = make_store(tmp_path / "s.h5")
    assert main(["analyze", str(store), "-o", str(tmp_path / "r.parquet"), "--dry-run", "--workers", "2"]) == 0
    first = capsys.readouterr().out
    assert "calibrated now" in first and "on 2 worker(s)" in first and "deadline" not in first
    assert main(["analyze", str(store), "-o", str(tmp_path / "r.parquet"), "--dry-run", "--deadline", "1s"]) == 0
    out = capsys.readouterr().out
    assert "(cached calibration" in out and "deadline 1.0 s: " in out
    assert not (tmp_path / "r.parquet").exists()


def test_deadline_without_dry_run_is_refused_with_a_working_fix(tmp_path, fake_machine, capsys):
    from probestore.cli import main

    store = make_store(tmp_path / "s.zarr")
    assert main(["analyze", str(store), "-o", str(tmp_path / "r.parquet"), "--deadline", "2h"]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--deadline only sizes a plan" in err
    fix = err.split("fix: ", 1)[1].split()
    assert fix[:2] == ["probestore", "analyze"] and "--dry-run" in fix
    assert main([*fix[1:], "-o", str(tmp_path / "r.parquet")]) == 0
    assert "deadline 2.0 h" in capsys.readouterr().out
    assert main(["analyze", str(store), "--dry-run", "--deadline", "soon"]) != 0
    assert "not a duration" in capsys.readouterr().err
    assert not (tmp_path / "r.parquet").exists()
