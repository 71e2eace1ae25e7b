"""Hostile or broken input through the real command line: one clear line, nothing lost.

A checkpoint received from someone else, a store edited by hand, a results table of
another dataset, a config whose names would escape the store, features that are not
finite, a split with no samples: each must end in exit status 2 with *one* line
``probestore CMD: error: ...`` that names the file or field, and must leave what was
already written (the store's earlier checkpoints, an existing results table) exactly
as it was. The loaders' own unit tests (``test_checkpoints.py``,
``test_store_conformance.py``) cover the messages in detail; here the whole command
runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from analyze.config import AnalysisConfig
from analyze.engine import run_analysis
from analyze.results import read_table
from probestore.cli import main
from probestore.errors import DataError
from storage_schema.store import open_store
from storage_schema.validate import validate_store
from tests.conftest import MNIST_DIR, require_data
from tests.helpers.stores import make_store, zarr_arrays

MNIST = MNIST_DIR
CONFIG = f"""
[experiment]
name = "hostile"
store = "store.zarr"
[dataset]
kind = "idx"
path = "{MNIST}"
subset = "test"
max_samples = 200
[model]
name = "mlp"
options = {{ depth = 2, width = 32 }}
[[runs]]
name = "a"
checkpoints = "ckpt/a"
[extract]
layers = ["input", "relu*"]
batch_size = 50
"""
SPEC = {"depth": 2, "width": 32}


def _error_line(capsys, command: str) -> str:
    """The command's stderr must hold exactly one error line (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"probestore {command}: error: "), err
    return lines[0]


def _state_dict(width=32, seed=1):
    from extract.models import ModelSpec, build_model

    return build_model(ModelSpec("mlp", 10, (1, 28, 28), {"depth": 2, "width": width}), seed=seed).state_dict()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A working directory whose store holds one complete checkpoint (a/epoch_0000)."""
    require_data(MNIST)
    import torch

    root = tmp_path_factory.mktemp("hostile")
    (root / "ckpt" / "a").mkdir(parents=True)
    torch.save(_state_dict(), root / "ckpt" / "a" / "epoch_0.pt")
    (root / "exp.toml").write_text(CONFIG)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["extract", "exp.toml", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch):
    """A private copy of ``base`` as the current directory."""
    dst = tmp_path / "w"
    shutil.copytree(base, dst)
    monkeypatch.chdir(dst)
    return dst


class _RunsCode:
    """Unpickling this would create ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _bad_checkpoint(kind: str, path: Path, marker: Path) -> None:
    import torch

    good = path.with_name("good.tmp")
    torch.save(_state_dict(seed=2), good)
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "not_a_checkpoint":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    elif kind == "runs_code":
        torch.save({"fc.weight": _RunsCode(marker)}, path)
    elif kind == "wrong_architecture":
        torch.save(_state_dict(width=48), path)
    elif kind == "nan_weights":
        sd = _state_dict(seed=2)
        first = next(k for k, v in sd.items() if v.ndim == 2)
        sd[first][0, :] = float("nan")
        torch.save(sd, path)
    good.unlink()


@pytest.mark.torch
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("truncated", "truncated"),
        ("not_a_checkpoint", "not a PyTorch checkpoint"),
        ("runs_code", "needs code to load"),
        ("wrong_architecture", "does not fit"),
        ("nan_weights", "NaN"),
    ],
)
def test_bad_checkpoint_through_extract_is_one_line_and_keeps_the_store(work, base, capsys, kind, says):
    marker = work / "pwned"
    bad = work / "ckpt" / "a" / "epoch_1.pt"
    _bad_checkpoint(kind, bad, marker)
    capsys.readouterr()
    assert main(["extract", "exp.toml", "--no-progress"]) == 2
    line = _error_line(capsys, "extract")
    assert says.lower() in line.lower(), line
    assert "epoch_1.pt" in line or "a/epoch_0001" in line, line  # the file, or the checkpoint made from it
    assert not marker.exists()  # the pickle's code never ran
    # the store's earlier checkpoint is untouched, and the store is valid
    before = zarr_arrays(base / "store.zarr")
    after = zarr_arrays(work / "store.zarr")
    for key, value in before.items():
        assert np.array_equal(after[key], value), key
    with open_store(work / "store.zarr") as s:
        assert [c.name for c in s.checkpoints("a")] == ["epoch_0000"]
    assert validate_store(work / "store.zarr") == []
    # fixing the file is enough: the same command goes on from there
    import torch

    torch.save(_state_dict(seed=2), bad)
    if kind == "nan_weights":  # that file was loaded and registered: another file under its name is refused
        capsys.readouterr()
        assert main(["extract", "exp.toml", "--no-progress"]) == 2
        assert "another weight file" in _error_line(capsys, "extract")
        with open_store(work / "store.zarr", "a") as s:
            s.delete_checkpoint("a", "epoch_0001")
    assert main(["extract", "exp.toml", "--no-progress"]) == 0
    with open_store(work / "store.zarr") as s:
        assert [c.name for c in s.checkpoints("a")] == ["epoch_0000", "epoch_0001"]


@pytest.mark.torch
@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ('name = "a"', 'name = "../x"', "invalid run name"),
        ('name = "a"', 'name = "/abs"', "invalid run name"),
        ('layers = ["input", "relu*"]', 'layers = ["input", "../relu1"]', "../relu1"),
        ('layers = ["input", "relu*"]', 'layers = ["relu/1"]', "relu/1"),
        ('store = "store.zarr"', 'store = "store.npz"', "[experiment].store"),
    ],
)
def test_names_that_would_escape_the_store_are_refused_before_writing(work, capsys, old, new, says):
    (work / "exp2.toml").write_text(CONFIG.replace(old, new).replace('store = "store.zarr"', 'store = "new.zarr"')
                                    if "store.npz" not in new else CONFIG.replace(old, new))
    listing = sorted(p.relative_to(work.parent) for p in work.parent.rglob("*"))
    capsys.readouterr()
    assert main(["extract", "exp2.toml", "--no-progress"]) == 2
    line = _error_line(capsys, "extract")
    assert says in line, line
    # nothing was created anywhere (no new store, nothing beside the work directory)
    after = sorted(p.relative_to(work.parent) for p in work.parent.rglob("*"))
    assert [p for p in after if p not in listing and not p.name.endswith(".extract-lock")] == []


# ---------------------------------------------------------------------------- stores and results tables

CS, ALPHAS = (1.0,), (1.0, 100.0)


def _analyze(store, results, *extra):
    return main(["analyze", str(store), "-o", str(results), "--scheduler", "none", "--Cs", "1.0",
                 "--alphas", "1.0,100.0", "--no-progress", *extra])


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("hstore") / "s.zarr", n=60, epochs=(1,), layers=(("l1", 4),),
                      runs=(("clean", 0.0),))


def test_results_of_another_dataset_through_the_cli_keep_the_table(small_store, tmp_path, capsys):
    table = tmp_path / "t.parquet"
    assert _analyze(small_store, table) == 0
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    other = make_store(tmp_path / "other.zarr", n=60, seed=9, epochs=(1,), layers=(("l1", 4),),
                       runs=(("clean", 0.0),))
    capsys.readouterr()
    assert _analyze(other, table) == 2
    line = _error_line(capsys, "analyze")
    assert "another dataset" in line and "t.parquet" in line and "-o" in line
    for name, data in saved.items():  # the existing table and its CSV are byte for byte the same
        assert (tmp_path / name).read_bytes() == data, name
    assert not (tmp_path / "t.parquet.parts").exists()


@pytest.mark.parametrize(
    ("node", "change", "says"),
    [
        ("runs/clean", {"architecture": 5}, "architecture"),
        ("runs/clean", {"corruption": "none"}, "corruption"),
        ("", {"surprise": True}, "surprise"),
        ("", {"dataset": ["not", "a", "mapping"]}, "dataset"),
        ("runs/clean/checkpoints/epoch_0001", {"complete": "yes"}, "complete"),
    ],
)
def test_store_metadata_of_wrong_type_or_extra_keys_through_analyze(small_store, tmp_path, capsys, node, change,
                                                                     says):
    from storage_schema.backends import backend_for

    store = tmp_path / "s.zarr"
    shutil.copytree(small_store, store)
    backend_for(store)(store, read_only=False).update_attrs(node, change)
    capsys.readouterr()
    assert _analyze(store, tmp_path / "t.parquet") == 2
    line = _error_line(capsys, "analyze")
    assert says in line and "s.zarr" in line, line
    assert not (tmp_path / "t.parquet").exists()
    assert any(says in p for p in validate_store(store))


# ---------------------------------------------------------------------------- data


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_features_are_refused_at_write_and_earlier_rows_kept(tmp_path, suffix, bad):
    store = make_store(tmp_path / f"s{suffix}", n=40, epochs=(1,), layers=(("l1", 3),), runs=(("clean", 0.0),))
    with open_store(store, "a") as s:
        s.add_checkpoint("clean", "epoch_0002", epoch=2)
        s.create_block("clean", "epoch_0002", "l1", n_features=3)
        good = np.ones((20, 3), np.float32)
        s.write_rows("clean", "epoch_0002", "l1", 0, good)
        s.set_rows_done("clean", "epoch_0002", "l1", 20)
        rows = np.full((20, 3), 2.0, np.float32)
        rows[7, 2] = bad
        with pytest.raises(DataError, match="NaN|Inf|finite") as err:
            s.write_rows("clean", "epoch_0002", "l1", 20, rows)
        assert "l1" in str(err.value)
        assert s.block_info("clean", "epoch_0002", "l1").rows_done == 20
        assert np.array_equal(s.read_layer("clean", "epoch_0002", "l1", rows=slice(0, 20), allow_incomplete=True), good)
    assert validate_store(store) == []


def test_a_split_without_samples_gives_failed_rows_with_reasons(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=60, epochs=(1,), layers=(("l1", 4),), runs=(("clean", 0.0),))
    from storage_schema import layout
    from storage_schema.backends import backend_for

    splits = open_store(store).splits()
    splits[splits == 1] = 0  # no validation samples left
    backend_for(store)(store, read_only=False).write(layout.SAMPLE_SPLIT, splits)
    summary = run_analysis(store, AnalysisConfig(scheduler="none", Cs=CS, alphas=ALPHAS,
                                                 results=str(tmp_path / "t.parquet")),
                           progress=False, log=lambda m: None)
    table = read_table(summary.results).set_index("probe_id")
    assert summary.complete and len(table) == 5
    probes = table[table.probe.isin(["classifier", "control", "rcv"])]
    assert len(probes) == 4 and set(probes.status) == {"failed"}
    assert probes["message"].str.contains("the valid split is empty").all(), probes["message"].tolist()
    # the model-output analysis needs no hyperparameter selection: it still runs
    assert table.loc["clean/epoch_0001/outputs/model_output/true_labels", "status"] == "ok"


def test_hostile_store_json_is_data_not_code(small_store, tmp_path):
    """Metadata is parsed as plain JSON: a string that looks like code stays a string."""
    store = tmp_path / "s.zarr"
    shutil.copytree(small_store, store)
    meta = store / "runs" / "clean" / "zarr.json"
    node = json.loads(meta.read_text())
    node["attributes"]["description"] = "__import__('os').mkdir('pwned')"
    meta.write_text(json.dumps(node))
    with open_store(store) as s:
        assert s.run_info("clean").description.startswith("__import__")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
