"""Planning an analysis: config validation, job enumeration, filters, resume groups, dry-run text."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from analyze.config import DEFAULT_ALPHAS, AnalysisConfig, load_config
from analyze.jobs import format_plan, plan_jobs, reduction_label
from probestore.errors import ConfigError, NotFoundError
from storage_schema.store import open_store
from tests.helpers.stores import LAYERS, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = make_store(tmp_path_factory.mktemp("jobs") / "s.zarr", n=60, epochs=(0, 2))
    with open_store(path, "a") as s:  # an unfinished checkpoint must not be planned
        s.add_checkpoint("clean", "epoch_0009", epoch=9, sha256="x")
        s.create_block("clean", "epoch_0009", "l1", n_features=6)
    return path


def plan(store, **kw):
    with open_store(store) as s:
        return plan_jobs(s, AnalysisConfig(**kw))


# ---------------------------------------------------------------------------- config


def test_config_defaults_and_normalisation():
    cfg = AnalysisConfig()
    assert cfg.alphas == DEFAULT_ALPHAS and cfg.host == "127.0.0.1" and cfg.scheduler == "local"
    cfg = AnalysisConfig.from_dict({"Cs": [10, 0.1, 1], "layers": "fc*, input", "probes": ["rcv", "classifier"],
                                    "max_block_bytes": "2MiB"})
    assert cfg.Cs == (0.1, 1.0, 10.0) and cfg.layers == ("fc*", "input")
    assert cfg.probes == ("classifier", "rcv") and cfg.max_block_bytes == 2 * 1024 * 1024
    assert cfg.replace(n_workers=0).synchronous and AnalysisConfig(scheduler="none").synchronous
    assert cfg.replace(max_iter=None).max_iter is None  # None = "not given on the command line"


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"alpha": [1.0]}, "unknown key 'alpha'.*did you mean 'alphas'"),
        ({"probes": ["classifer"]}, "unknown probe kind 'classifer'.*did you mean 'classifier'"),
        ({"Cs": [1.0, -2.0]}, r"positive.*Cs\[1\]"),
        ({"Cs": []}, "non-empty"),
        ({"alphas": [1.0, 1.0]}, "duplicate"),
        ({"n_workers": -1}, "out of range"),
        ({"n_workers": True}, "wrong type"),
        ({"save_weights": "yes"}, "wrong type"),
        ({"scheduler": "lcoal"}, "did you mean 'local'"),
        ({"max_block_bytes": "lots"}, "not a size"),
        ({"threads_per_worker": 0}, "out of range"),
    ],
)
def test_config_errors_name_the_field(table, match):
    with pytest.raises(ConfigError, match=match):
        AnalysisConfig.from_dict(table)


def test_load_config_from_experiment_toml_with_overrides(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text('[experiment]\nname = "x"\nstore = "out/s.zarr"\n\n[analysis]\nCs = [0.1, 1.0]\n'
                    'layers = ["relu*"]\ncontrol_seed = 3\n')
    cfg, store = load_config(toml, layers="fc1", n_workers=None)
    # Relative paths resolve against the experiment file's folder, not the current directory.
    assert store == str(tmp_path / "out" / "s.zarr") and cfg.Cs == (0.1, 1.0) and cfg.control_seed == 3
    assert cfg.layers == ("fc1",)  # the command line wins
    bad = tmp_path / "bad.toml"
    bad.write_text("[analysys]\nCs = [1.0]\n")
    with pytest.raises(ConfigError, match="no \\[analysis\\] table.*did you mean 'analysis'"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[analysis]\nmax_iters = 5\n")
    with pytest.raises(ConfigError, match=f"{typo}.*did you mean 'max_iter'"):
        load_config(typo)


# ---------------------------------------------------------------------------- plan


def test_plan_enumerates_complete_blocks_and_probes(store):
    p = plan(store)
    counts = p.probe_counts()
    # 2 runs x 2 complete checkpoints x 3 layers; the corrupted run adds train-label probes
    assert len([j for j in p.jobs if j.kind == "features"]) == 12
    assert counts["classifier"] == 6 + 12 and counts["control"] == 12 and counts["rcv"] == 24
    assert counts["model_output"] == 2 + 4
    assert p.targets == ("area", "eccentricity")  # the "class" target is not an RCV target
    assert all(j.checkpoint != "epoch_0009" for j in p.jobs)
    keys = [(j.run, j.epoch, j.layer_index) for j in p.jobs]
    assert keys == sorted(keys)
    assert len(set(p.probe_ids())) == p.n_probes
    noisy = next(j for j in p.jobs if j.run == "noisy" and j.layer == "l2")
    assert noisy.has_corrupted and noisy.corruption_fraction == 0.5 and noisy.n_features == 10
    assert noisy.read_bytes == 60 * 10 * 4 and noisy.reduction == "flatten"


def test_plan_filters(store):
    p = plan(store, runs="nois*", checkpoints="epoch_0002", layers="l[12]", targets="area",
             probes="classifier,rcv,outputs")
    assert {(j.run, j.checkpoint) for j in p.jobs} == {("noisy", "epoch_0002")}
    assert [j.layer for j in p.jobs] == ["l1", "l2", "outputs"]
    assert p.probe_counts() == {"classifier": 4, "rcv": 2, "model_output": 2}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"runs": "noisey"}, "no run matches 'noisey'.*did you mean 'noisy'"),
        ({"layers": "l4"}, "no layer matches 'l4'.*did you mean 'l3'"),
        ({"checkpoints": "epoch_2"}, "no checkpoint matches 'epoch_2'"),
        ({"targets": "aera"}, "no continuous concept target.*did you mean 'area'"),
        ({"targets": "class_copy"}, "non-continuous"),
    ],
)
def test_plan_filter_errors(store, kw, match):
    with pytest.raises(NotFoundError, match=match):
        plan(store, **kw)


def test_pending_refits_whole_groups_only(store):
    p = plan(store, runs="noisy", checkpoints="epoch_0000", layers="l1", probes="classifier,control,rcv")
    (job,) = p.jobs
    ids = job.probe_ids()
    assert p.pending(ids).jobs == []
    # one classifier-group probe missing: the whole group is refitted (selectivity needs
    # the control probe), the complete RCV group is not
    missing_control = [i for i in ids if "/control/" not in i]
    (again,) = p.pending(missing_control).jobs
    assert {s.probe for s in again.probes} == {"classifier", "control"} and len(again.probes) == 3
    (rcv_only,) = p.pending([i for i in ids if "/rcv/area" not in i]).jobs
    assert {s.target for s in rcv_only.probes} == {"area", "eccentricity"}


def test_reduction_labels():
    assert reduction_label({"kind": "random", "params": {"k": 1000, "seed": 0}}) == "random:1000"
    assert reduction_label({"kind": "project", "params": {"k": 64}}) == "project:64"
    assert reduction_label({"kind": "gap", "params": {}}) == "gap"
    assert reduction_label({"kind": "none"}) == "none" and reduction_label(None) == "none"


def test_format_plan_counts_and_streaming(store):
    p = plan(store, layers="l2")
    text = format_plan(p, max_block_bytes=1000, done=5)
    assert "blocks: 4 feature + 4 outputs" in text
    assert "4 block(s) over the 1000 B budget streamed" in text  # 60 x 10 float32 = 2400 B each
    assert "already in the results table: 5 probes" in text
    assert text.count("\n    ") == len(p.jobs)


def test_analyze_never_imports_torch():
    code = ("import sys; import analyze, analyze.engine, analyze.commands, analyze.block_task, "
            "analyze.cluster, analyze.outputs, analyze.results, analyze.jobs, analyze.config; "
            "import analyze.solvers.logistic, analyze.solvers.ridge; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layer_filter_does_not_hide_outputs(store):
    p = plan(store, layers="l3", runs="clean")
    assert [j.layer for j in p.jobs] == ["l3", "outputs", "l3", "outputs"]
    assert np.all([j.n_samples == 60 for j in p.jobs])
    assert LAYERS[2][0] == "l3"
