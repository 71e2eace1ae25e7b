"""`probestore delete`, `export` and `inspect --runs/--summary`, and the store's listings as names.

Real Zarr and HDF5 stores in tmp_path; commands run through the CLI's ``main`` (one
line per error, exit 2), real processes where locks are involved, and a numpy-only
process to load an export.
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from probestore.cli import main
from probestore.locking import setup_lock_path
from probestore.selectors import select
from storage_schema import layout
from storage_schema.concept_sets import (
    add_concept_set,
    concept_set_block_node,
    create_concept_block,
    write_concept_features,
)
from storage_schema.edit import leftover_trash
from storage_schema.store import open_store
from storage_schema.validate import validate_store
from tests.conftest import MNIST_DIR, needs_data
from tests.helpers.stores import make_store

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def listing(path: Path) -> dict[str, list[str]]:
    """run/checkpoint -> layers (incomplete included), through the store API."""
    with open_store(path) as s:
        return {f"{r}/{c}": list(s.layers(r, c, include_incomplete=True))
                for r in s.runs() for c in s.checkpoints(r, include_incomplete=True)}


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Stores built once per module (``make_store`` takes ~1 s) and copied per test."""
    folder = tmp_path_factory.mktemp("templates")
    made: dict[tuple, Path] = {}

    def copy(dest: Path, **kwargs) -> Path:
        key = (dest.suffix, *sorted((k, repr(v)) for k, v in kwargs.items()))
        if key not in made:
            made[key] = make_store(folder / f"t{len(made)}{dest.suffix}", **kwargs)
        if made[key].is_dir():
            shutil.copytree(made[key], dest)
        else:
            shutil.copy2(made[key], dest)
        return dest

    return copy


@pytest.fixture
def store_path(tmp_path, suffix, templates) -> Path:
    return templates(tmp_path / f"s{suffix}", n=80, epochs=(0, 1))


@pytest.fixture
def zarr_path(tmp_path, templates) -> Path:
    return templates(tmp_path / "s.zarr", n=80, epochs=(0, 1))


# --------------------------------------------------------------------------- delete


def test_delete_layer_keeps_the_checkpoint_record_consistent(store_path, capsys):
    with open_store(store_path) as s:
        l1_before = s.read_layer("noisy", "epoch_0001", "l1")
        clean_before = s.read_layer("clean", "epoch_0001", "l2")
    code, out, err = run_cli(capsys, "delete", store_path, "noisy/*/l2", "--yes")
    assert code == 0, err
    assert "layer      noisy/epoch_0000/l2" in out and "deleted 2 item(s)" in out
    assert validate_store(store_path) == []
    assert listing(store_path) == {"clean/epoch_0000": ["l1", "l2", "l3"], "clean/epoch_0001": ["l1", "l2", "l3"],
                                   "noisy/epoch_0000": ["l1", "l3"], "noisy/epoch_0001": ["l1", "l3"]}
    with open_store(store_path) as s:
        ckpt = layout.checkpoint_node("noisy", "epoch_0001")
        assert s.backend.get_attrs(ckpt)["layer_order"] == ["l1", "l3"]
        assert s.checkpoint_info("noisy", "epoch_0001").complete  # its other blocks are untouched
        np.testing.assert_array_equal(s.read_layer("noisy", "epoch_0001", "l1"), l1_before)
        np.testing.assert_array_equal(s.read_layer("clean", "epoch_0001", "l2"), clean_before)
        assert s.read_logits("noisy", "epoch_0001").shape == (80, 4)


def test_delete_checkpoint_and_run_remove_shared_indices_with_the_last_run(tmp_path, suffix, capsys, templates):
    path = templates(tmp_path / f"s{suffix}", n=80, epochs=(0, 1),
                     runs=(("clean", 0.0), ("noisy", 0.5), ("third", 1.0)))
    with open_store(path, "a") as s:  # runs clean + noisy: architecture "mlp"; "third" gets its own
        s.save_reduction_indices("mlp", "l2", np.arange(4), reduction={"kind": "random", "params": {"k": 4}},
                                 source_shape=[10])
        s.backend.update_attrs("runs/third", {"architecture": "other"})
        s.save_reduction_indices("other", "l2", np.arange(3), reduction={"kind": "random", "params": {"k": 3}},
                                 source_shape=[10])
    code, out, err = run_cli(capsys, "delete", path, "clean/epoch_0000", "--yes")
    assert code == 0, err
    assert sorted(listing(path)) == ["clean/epoch_0001", "noisy/epoch_0000", "noisy/epoch_0001",
                                     "third/epoch_0000", "third/epoch_0001"]
    code, out, err = run_cli(capsys, "delete", path, "clean", "--yes")
    assert code == 0, err
    with open_store(path) as s:  # noisy still uses mlp's indices
        assert s.runs() == ["noisy", "third"] and sorted(s.architectures()) == ["mlp", "other"]
    code, out, err = run_cli(capsys, "delete", path, "noisy", "--yes")
    assert code == 0, err
    assert "indices    architectures/mlp" in out
    with open_store(path) as s:
        assert s.runs() == ["third"] and s.architectures() == {"other": ["l2"]}
        np.testing.assert_array_equal(s.load_reduction_indices("other", "l2"), np.arange(3))
    assert validate_store(path) == []


def test_dry_run_lists_and_changes_nothing(store_path, capsys):
    before = listing(store_path)
    files_before = sorted(p.name for p in store_path.parent.iterdir())
    code, out, err = run_cli(capsys, "delete", store_path, "clean", "noisy/epoch_0000", "noisy/epoch_0000/l1",
                             "--dry-run")
    assert code == 0, err
    assert "would delete 2 item(s)" in out  # the layer is inside the checkpoint: listed once, as the checkpoint
    assert "run        clean  (2 checkpoint(s), 2 complete" in out
    assert "checkpoint noisy/epoch_0000  (complete, 3 layer(s) + outputs" in out
    assert listing(store_path) == before
    assert sorted(p.name for p in store_path.parent.iterdir()) == files_before  # no lock file left either


def test_delete_asks_and_refuses_without_a_terminal(zarr_path, capsys, monkeypatch):
    store_path = zarr_path
    before = listing(store_path)
    code, out, err = run_cli(capsys, "delete", store_path, "clean")  # pytest's stdin is not a terminal
    assert code == 2 and "would delete 1 item(s)" in out
    assert len(err.strip().splitlines()) == 1 and "stdin is not a terminal" in err and "--yes" in err
    assert listing(store_path) == before
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, err = run_cli(capsys, "delete", store_path, "clean")
    assert code == 1 and "nothing deleted" in out and listing(store_path) == before
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    code, out, err = run_cli(capsys, "delete", store_path, "clean")
    assert code == 0, err
    assert sorted(listing(store_path)) == ["noisy/epoch_0000", "noisy/epoch_0001"]


@pytest.mark.parametrize("target, message", [
    ("nois", "no run matches 'nois'"),
    ("noisy/epoch_9", "no checkpoint matches 'epoch_9'"),
    ("noisy/*/l9", "no layer matches 'l9'"),
    ("noisy/epoch_0001/outputs", "outputs block"),
    ("a/b/c/d", "RUN, RUN/CHECKPOINT or RUN/CHECKPOINT/LAYER"),
])
def test_delete_refuses_what_it_cannot_find_in_one_line(zarr_path, capsys, target, message):
    before = listing(zarr_path)
    code, out, err = run_cli(capsys, "delete", zarr_path, target, "--yes")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert listing(zarr_path) == before


def test_delete_removes_the_layers_concept_set_features(zarr_path, capsys):
    path = zarr_path
    with open_store(path, "a") as s:
        add_concept_set(s, "striped", kind="external", sample_ids=["a.png", "b.png", "c.png"])
        for layer, width in (("l1", 6), ("l2", 10)):
            create_concept_block(s, "clean", "epoch_0000", "striped", layer, n_features=width)
            write_concept_features(s, "clean", "epoch_0000", "striped", layer, np.ones((3, width), "float32"))
    assert validate_store(path) == []
    code, out, err = run_cli(capsys, "delete", path, "clean/epoch_0000/l2", "--yes")
    assert code == 0, err
    with open_store(path) as s:
        assert s.backend.node_kind(concept_set_block_node("clean", "epoch_0000", "striped", "l2")) is None
        assert s.backend.node_kind(concept_set_block_node("clean", "epoch_0000", "striped", "l1")) == "group"
    assert validate_store(path) == []


def test_zarr_delete_renames_first_so_a_killed_delete_leaves_a_valid_store(zarr_path, capsys, monkeypatch):
    """The node leaves the store in one rename; emptying it comes after and may be cut short."""
    path = zarr_path
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # "killed" before the trash is emptied
    assert run_cli(capsys, "delete", path, "noisy/epoch_0001", "--yes")[0] == 0
    assert validate_store(path) == []
    assert "noisy/epoch_0001" not in listing(path)
    (trash,) = leftover_trash(path)
    assert trash.parent == path.parent and (trash / "layers" / "l1").is_dir()  # outside the store
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert run_cli(capsys, "delete", path, "noisy/epoch_0000/l3", "--yes")[0] == 0
    assert leftover_trash(path) == []  # the next delete empties what the killed one left
    assert validate_store(path) == []


def test_hdf5_delete_says_the_file_keeps_its_size(tmp_path, capsys, templates):
    path = templates(tmp_path / "s.h5", n=80, epochs=(0, 1))
    code, out, err = run_cli(capsys, "delete", path, "noisy", "--yes")
    assert code == 0, err
    assert "keeps its size" in out
    assert validate_store(path) == []


_HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    {imports}
    with {lock}:
        print("held", flush=True)
        time.sleep(60)
""")


def _hold_lock(imports: str, lock: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD.format(imports=imports, lock=lock)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("holder", ["writer", "setup"])
def test_delete_is_refused_while_an_extraction_holds_the_store(zarr_path, tmp_path, capsys, holder):
    path = zarr_path
    if holder == "writer":  # an extraction writing another checkpoint than the one deleted
        proc = _hold_lock("from probestore.locking import writer_lock, writer_lock_path",
                          f"writer_lock(writer_lock_path(Path({str(path)!r}), 'clean', 'epoch_0000'), what='x')")
    else:  # an extraction setting the store up (extract.pipeline's own lock)
        proc = _hold_lock("from extract.pipeline import setup_lock", f"setup_lock(Path({str(path)!r}))")
    try:
        before = listing(path)
        code, out, err = run_cli(capsys, "delete", path, "noisy/epoch_0001", "--yes")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert (f"being written by process {proc.pid}" if holder == "writer" else "being set up") in err
        assert listing(path) == before
    finally:
        proc.kill()
        proc.wait()
    code, out, err = run_cli(capsys, "delete", path, "noisy/epoch_0001", "--yes")  # the lock died with it
    assert code == 0, err
    # The delete's own locks are gone (a killed writer's lock file stays, unheld, by design).
    assert not (tmp_path / "s.zarr.writer-noisy@epoch_0001.lock").exists()
    assert not setup_lock_path(tmp_path / "s.zarr").exists()


# --------------------------------------------------------------------------- the listings are names


def test_runs_checkpoints_layers_are_names_that_go_back_in(store_path):
    with open_store(store_path) as s:
        runs = s.runs()
        assert runs == ["clean", "noisy"] and all(isinstance(r, str) for r in runs)
        assert [r.corruption_fraction for r in runs] == [0.0, 0.5] and runs[0].architecture == "mlp"
        assert select(runs, "n*", what="run", where="test") == ["noisy"]
        for run in runs:
            assert s.run_info(run).name == run == run.name
            for ckpt in s.checkpoints(run):
                assert isinstance(ckpt, str) and ckpt == ckpt.name and type(ckpt.name) is str
                assert s.checkpoint_info(run, ckpt).epoch == ckpt.epoch
                assert s.layers(run, ckpt) == ["l1", "l2", "l3"]
                assert s.blocks(run, ckpt) == ["l1", "l2", "l3", layout.OUTPUTS]
                for layer in s.layers(run, ckpt):
                    assert layer.n_features == s.block_info(run, ckpt, layer).n_features
                    np.testing.assert_array_equal(s.read_layer(run, ckpt, layer),
                                                  s.read_layer(str(run), str(ckpt), str(layer)))
                    assert s.stored_bytes(run, ckpt, layer) > 0
        layer = s.layers("noisy", "epoch_0001")[0]
        assert s.block_dask(runs[1], s.checkpoints(runs[1])[1], layer).shape == (80, 6)
        ckpt = s.checkpoints("noisy")[1]
        assert {ckpt: 1}["epoch_0001"] == 1 and json.dumps([ckpt]) == '["epoch_0001"]' and f"{ckpt}" == "epoch_0001"
        copy = pickle.loads(pickle.dumps(ckpt))  # as sent to dask workers
        assert copy == "epoch_0001" and copy.epoch == 1 and copy.complete
        with pytest.raises(AttributeError):
            ckpt.epoch = 5


# --------------------------------------------------------------------------- inspect --runs / --summary


def test_inspect_runs_and_summary(store_path, capsys):
    with open_store(store_path, "a") as s:
        s.add_checkpoint("noisy", "epoch_0002", epoch=2)  # registered, not extracted yet
    code, out, err = run_cli(capsys, "inspect", store_path, "--runs")
    assert code == 0, err
    assert out.splitlines() == [
        "clean  architecture mlp  corruption 0 (uniform)  checkpoints 2/2 complete  layers (3): l1, l2, l3",
        "noisy  architecture mlp  corruption 0.5 (uniform)  checkpoints 2/3 complete  layers (3): l1, l2, l3",
    ]
    code, out, err = run_cli(capsys, "inspect", store_path, "--summary")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{store_path}  ({'zarr' if store_path.suffix == '.zarr' else 'hdf5'}, schema ")
    assert "dataset     'synthetic': 80 samples" in lines
    assert "splits      train 48, valid 16, test 16" in lines
    assert "classes     4: c0, c1, c2, c3" in lines
    assert "runs        2: clean, noisy" in lines and "checkpoints 4 complete of 5" in lines
    assert "layers      3: l1, l2, l3" in lines and "targets     3" in lines
    code, out, err = run_cli(capsys, "inspect", store_path)  # the full tree is still the default
    assert "noisy: model mlp" in out and "epoch_0002 (epoch 2) INCOMPLETE" in out


def test_inspect_runs_and_summary_are_exclusive(store_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(store_path), "--runs", "--summary"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# --------------------------------------------------------------------------- export


def _chunked_store(path: Path, templates, n: int = 150) -> Path:
    """A store whose blocks span several chunks (64 rows), with an incomplete checkpoint."""
    templates(path, n=n, epochs=(1,), runs=(("gen", 0.0),))
    with open_store(path, "a") as s:
        s.add_checkpoint("gen", "epoch_0002", epoch=2)
        for name, width in (("relu1", 5), ("layer1.0.relu#1", 3)):
            s.create_block("gen", "epoch_0002", name, n_features=width, chunk_rows=64)
            s.write_rows("gen", "epoch_0002", name, 0, np.random.default_rng(1).normal(size=(n, width)))
            s.mark_block_complete("gen", "epoch_0002", name)
        s.create_block("gen", "epoch_0002", "late", n_features=2, chunk_rows=64)
        s.write_rows("gen", "epoch_0002", "late", 0, np.ones((64, 2)))
        s.set_rows_done("gen", "epoch_0002", "late", 64)
        s.set_layer_order("gen", "epoch_0002", ["relu1", "layer1.0.relu#1", "late"])
    return path


_NUMPY_ONLY = textwrap.dedent("""
    import json, sys
    import numpy as np
    z = np.load(sys.argv[1], allow_pickle=False)
    out = {k: z[k].tolist() for k in z.files if k != "meta"}
    out["meta"] = json.loads(str(z["meta"]))
    out["dtypes"] = {k: str(z[k].dtype) for k in z.files}
    out["imported"] = sorted(m for m in ("probestore", "storage_schema", "zarr", "h5py") if m in sys.modules)
    print(json.dumps(out))
""")


def test_export_npz_loads_with_numpy_alone(tmp_path, suffix, capsys, templates):
    path = _chunked_store(tmp_path / f"s{suffix}", templates)
    out_file = tmp_path / "gen.npz"
    code, out, err = run_cli(capsys, "export", path, "--run", "gen", "--checkpoint", "epoch_0001",
                             "--layers", "l3,l1", "-o", out_file)
    assert code == 0, err
    assert "gen/epoch_0001, 150 samples, 2 block(s) (l1, l3)" in out
    proc = subprocess.run([sys.executable, "-I", "-c", _NUMPY_ONLY, str(out_file)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    z = json.loads(proc.stdout)
    assert z["imported"] == []  # numpy alone read it
    assert not any(d == "object" for d in z["dtypes"].values())
    with open_store(path) as s:
        assert z["layers"] == ["l1", "l3"]  # the store's order, not the pattern's
        for layer in ("l1", "l3"):
            np.testing.assert_array_equal(np.array(z[f"features/{layer}"], "float32"),
                                          s.read_layer("gen", "epoch_0001", layer))
        assert "logits" not in z and "features/l2" not in z
        assert z["sample_id"] == s.sample_ids().tolist() and z["label"] == s.labels().tolist()
        assert z["split"] == s.splits().tolist() and z["split_names"] == ["train", "valid", "test"]
        assert z["class_names"] == s.dataset.class_names
        assert z["train_label"] == s.train_labels("gen").tolist()
        assert z["corrupted"] == s.corrupted_mask("gen").tolist()
        for target in s.target_names():
            np.testing.assert_allclose(z[f"targets/{target}"], s.read_target(target))
        assert z["sample_type"] == s.sample_types().tolist()
        assert z["meta"]["run"] == "gen" and z["meta"]["checkpoint"] == "epoch_0001" and z["meta"]["epoch"] == 1
        assert z["meta"]["fingerprint"] == s.fingerprint and z["meta"]["blocks"]["l1"]["n_features"] == 6


def test_export_copies_blocks_of_many_chunks_and_names_with_dots(tmp_path, suffix, capsys, templates):
    path = _chunked_store(tmp_path / f"s{suffix}", templates)
    out_file = tmp_path / "two.npz"
    code, out, err = run_cli(capsys, "export", path, "--run", "g*", "--checkpoint", "epoch_0002",
                             "--layers", "relu1,layer1.*", "-o", out_file)
    assert code == 0, err
    z = np.load(out_file, allow_pickle=False)
    with open_store(path) as s:
        for layer in ("relu1", "layer1.0.relu#1"):  # 150 rows in chunks of 64: three chunks, one partial
            np.testing.assert_array_equal(z[f"features/{layer}"], s.read_layer("gen", "epoch_0002", layer))
    assert list(z["layers"]) == ["relu1", "layer1.0.relu#1"]


def test_export_refuses_an_incomplete_block(tmp_path, capsys, templates):
    path = _chunked_store(tmp_path / "s.zarr", templates)
    code, out, err = run_cli(capsys, "export", path, "--run", "gen", "--checkpoint", "epoch_0002",
                             "-o", tmp_path / "x.npz")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "incomplete block(s) of gen/epoch_0002" in err and "late (64/150 rows)" in err
    assert not (tmp_path / "x.npz").exists() and not list(tmp_path.glob(".x.npz.*"))


def test_export_csv_round_trips_and_refuses_large_blocks_with_a_fix_that_works(store_path, tmp_path, capsys):
    path = store_path
    out_file = tmp_path / "small.csv"
    code, out, err = run_cli(capsys, "export", path, "--run", "noisy", "--checkpoint", "epoch_0001",
                             "--layers", "l2,outputs", "-o", out_file)
    assert code == 0, err
    with open(out_file, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header[:6] == ["sample_id", "split", "label", "class", "train_label", "corrupted"]
    assert "target:area" in header and header[-1] == "outputs[3]" and "l2[9]" in header
    with open_store(path) as s:
        assert len(body) == 80 and [r[0] for r in body] == s.sample_ids().tolist()
        col = {name: i for i, name in enumerate(header)}
        got = np.array([[float(r[col[f"l2[{j}]"]]) for j in range(10)] for r in body], "float32")
        np.testing.assert_array_equal(got, s.read_layer("noisy", "epoch_0001", "l2"))  # 9 digits: exact float32
        assert [int(r[col["train_label"]]) for r in body] == s.train_labels("noisy").tolist()
        names = s.dataset.split_names
        assert [r[col["split"]] for r in body] == [names[c] for c in s.splits()]
        np.testing.assert_allclose([float(r[col["target:area"]]) for r in body], s.read_target("area"))
    big = tmp_path / "big.csv"
    code, out, err = run_cli(capsys, "export", path, "--run", "noisy", "--checkpoint", "epoch_0001",
                             "-o", big, "--max-csv-values", "1000")
    assert code == 2 and "too large for a .csv export" in err and not big.exists()
    assert f"-o {big.with_suffix('.npz')}" in err
    code, out, err = run_cli(capsys, "export", path, "--run", "noisy", "--checkpoint", "epoch_0001",
                             "-o", big.with_suffix(".npz"))  # the fix the error gave
    assert code == 0, err


@pytest.mark.parametrize("args, message", [
    (["--run", "nosy", "--checkpoint", "epoch_0001"], "no run matches 'nosy'"),
    (["--run", "noisy", "--checkpoint", "epoch_000*"], "export writes one checkpoint, but 'epoch_000*' matches 2"),
    (["--run", "noisy", "--checkpoint", "epoch_0001", "--layers", "l9"], "no layer matches 'l9'"),
    (["--run", "noisy", "--checkpoint", "epoch_0001", "-o", "{tmp}/x.txt"], "unknown export format"),
    (["--run", "noisy", "--checkpoint", "epoch_0001", "-o", "{tmp}/no/x.npz"], "the output folder does not exist"),
    (["--run", "noisy", "--checkpoint", "epoch_0001", "--max-csv-values", "0"], "--max-csv-values must be"),
    (["--run", "noisy", "--checkpoint", "epoch_0001", "-o", "{tmp}"], "the output is a folder"),
])
def test_export_bad_input_is_one_line(zarr_path, tmp_path, capsys, args, message):
    path = zarr_path
    args = [a.format(tmp=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "x.npz")]
    code, out, err = run_cli(capsys, "export", path, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()


def test_a_killed_export_leaves_no_file(zarr_path, tmp_path):
    """Written under a temporary name and renamed: SIGKILL mid-write leaves neither half a file nor the name."""
    path = zarr_path
    script = textwrap.dedent(f"""
        import os, signal, zipfile
        from storage_schema.export import export
        from storage_schema.store import open_store
        real = zipfile.ZipFile.open
        def killed(self, name, *a, **k):
            if name.startswith("features/"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, name, *a, **k)
        zipfile.ZipFile.open = killed
        export(open_store({str(path)!r}), "clean", "epoch_0000", None, {str(tmp_path / 'k.npz')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9
    time.sleep(0.05)
    assert not (tmp_path / "k.npz").exists()


# --------------------------------------------------------------------------- delete, then extract again


@pytest.mark.slow
@pytest.mark.torch
@needs_data(MNIST_DIR)
def test_extract_brings_back_what_was_deleted(tmp_path, capsys):
    """The README's promise: ``probestore extract CONFIG`` re-extracts a deleted run or checkpoint."""
    from tests.helpers.experiments import write_experiment

    config = write_experiment(tmp_path, "store.zarr", n=60)
    assert run_cli(capsys, "extract", config, "--no-progress")[0] == 0
    store = tmp_path / "store.zarr"
    with open_store(store) as s:
        before = {(r, c, b): s.read_block(r, c, b) for r in s.runs() for c in s.checkpoints(r) for b in s.blocks(r, c)}
    code, out, err = run_cli(capsys, "delete", store, "b", "a/epoch_0001", "--yes")
    assert code == 0, err
    assert sorted(listing(store)) == ["a/epoch_0000"]
    code, out, err = run_cli(capsys, "extract", config, "--no-progress")
    assert code == 0, err
    with open_store(store) as s:
        after = {(r, c, b): s.read_block(r, c, b) for r in s.runs() for c in s.checkpoints(r) for b in s.blocks(r, c)}
    assert sorted(after) == sorted(before)
    for key, values in before.items():
        np.testing.assert_array_equal(after[key], values, err_msg=str(key))
    assert validate_store(store) == []
