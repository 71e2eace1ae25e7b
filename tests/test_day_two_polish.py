"""Day-two polish: a store says how it grew and what was deleted, a dry run previews a growth,
training lines are log lines, and `probestore layers` names the head.

Real stores on both backends, real CLI (`probestore.cli.main`). The growth steps reuse the
experiment files of ``tests/test_grow_store.py`` (digits, no data files): what the dry run
lists must be exactly what the real extraction then records, and a refusal must be the
real run's line, character for character.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from probestore.cli import main
from probestore.experiment import load_config
from storage_schema.metadata import delete_entry, history_entry, history_problems
from storage_schema.store import create_store, open_store
from storage_schema.validate import validate_store
from tests.conftest import BACKEND_SUFFIXES
from tests.helpers.stores import add_run, write_checkpoint
from tests.test_grow_store import write_config

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Runs a and b of the growth experiment, trained for one epoch (a few seconds on CPU)."""
    from extract.pipeline import load_experiment, train_runs

    root = tmp_path_factory.mktemp("polish-trained")
    cfg = load_config(write_config(root, "unused.zarr", runs=("a", "b")))
    train_runs(load_experiment(cfg), cfg.runs, progress=False)
    return root


@pytest.fixture(scope="module", params=BACKEND_SUFFIXES, ids=lambda s: s.lstrip("."))
def first(request, trained, tmp_path_factory) -> Path:
    """A store of run a / layer relu1, extracted once per backend (tests get a copy)."""
    root = tmp_path_factory.mktemp("polish-first")
    (root / "ckpt-1").symlink_to(trained / "ckpt-1")
    assert main(["extract", str(write_config(root, f"s{request.param}")), "--no-progress"]) == 0
    return root / f"s{request.param}"


def _copy(store: Path, root: Path, trained: Path) -> Path:
    (root / "ckpt-1").symlink_to(trained / "ckpt-1")
    (shutil.copytree if store.is_dir() else shutil.copy)(store, root / store.name)
    return root / store.name


@pytest.fixture
def grown(first, trained, tmp_path):
    """A copy of the first store, and the files that would grow it and change it."""
    store = _copy(first, tmp_path, trained).name
    grow = write_config(tmp_path, store, runs=("a", "b"), layers=("relu1", "relu2"))
    change = write_config(tmp_path, store, **{"experiment.seed": "seed = 2"})
    return tmp_path / store, grow, change


def _tree_state(path: Path):
    """The root attributes and every node name: what a dry run must leave untouched."""
    with open_store(path) as store:
        return store.root_attrs, [(r, c.name, tuple(store.layers(r, c.name))) for r in store.runs()
                                  for c in store.checkpoints(r, include_incomplete=True)]


def test_dry_run_lists_the_growth_the_real_run_records(grown, capsys):
    path, grow, _ = grown
    before = _tree_state(path)
    capsys.readouterr()
    assert main(["extract", str(grow), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "the store would be grown (only what is new is extracted):" in out
    previewed = re.findall(r"^  add (.+)$", out, flags=re.M)
    assert previewed == ["run b", "layer relu2"]
    assert _tree_state(path) == before  # a dry run writes nothing
    assert "history" not in before[0]

    assert main(["extract", str(grow), "--no-progress"]) == 0
    with open_store(path) as store:
        assert store.root_attrs["history"][-1]["added"] == previewed
    capsys.readouterr()
    assert main(["extract", str(grow), "--dry-run"]) == 0  # now the store records this config
    assert "the store records this config" in capsys.readouterr().out


def test_dry_run_refuses_a_change_with_the_real_runs_line(grown, capsys):
    path, _, change = grown
    before = _tree_state(path)
    capsys.readouterr()
    assert main(["extract", str(change), "--dry-run"]) == 2
    dry = capsys.readouterr()
    assert main(["extract", str(change), "--no-progress"]) == 2
    real = capsys.readouterr()
    assert dry.out == "" and len(dry.err.strip().splitlines()) == 1
    assert dry.err == real.err  # the same one line, keys named
    assert "experiment.seed: 1 -> 2" in dry.err and "Traceback" not in dry.err
    assert _tree_state(path) == before


def test_delete_is_recorded_validated_and_inspected(grown, capsys):
    path, grow, _ = grown
    assert main(["extract", str(grow), "--no-progress"]) == 0
    with open_store(path) as store:
        grown_hash = store.config_hash
        grown_entry = store.root_attrs["history"][-1]
    capsys.readouterr()
    assert main(["delete", str(path), "b", "a/*/relu2", "--yes"]) == 0
    assert "deleted 3 item(s), recorded in the store's history" in capsys.readouterr().out
    with open_store(path) as store:
        history = store.root_attrs["history"]
        assert store.config_hash == grown_hash  # a delete keeps the recorded config
        assert store.runs() == ["a"]
    assert history[0] == grown_entry
    assert {k: v for k, v in history[1].items() if k not in ("time", "probestore_version")} == {
        "config_hash": grown_hash, "previous_config_hash": grown_hash,
        "deleted": ["run b", "layer a/epoch_0000/relu2", "layer a/epoch_0001/relu2"]}
    assert validate_store(path) == []
    assert main(["validate", str(path)]) == 0

    capsys.readouterr()
    assert main(["inspect", str(path), "--summary"]) == 0
    summary = capsys.readouterr().out.splitlines()
    at = summary.index("history     2 entries")
    assert re.fullmatch(rf" {{12}}{ISO}  added run b, layer relu2  \(probestore .+\)", summary[at + 1])
    assert re.fullmatch(rf" {{12}}{ISO}  deleted run b, layer a/epoch_0000/relu2, layer a/epoch_0001/relu2"
                        r"  \(probestore .+\)", summary[at + 2])
    assert main(["inspect", str(path)]) == 0
    tree = capsys.readouterr().out.splitlines()
    at = tree.index("history (2):")
    assert tree[at + 1].startswith(f"  {history[0]['time']}  added run b")
    assert tree[at + 2].startswith(f"  {history[1]['time']}  deleted run b")

    # The config still names run b: extracting it again restores what was deleted.
    assert main(["extract", str(grow), "--no-progress"]) == 0
    with open_store(path) as store:
        assert store.runs() == ["a", "b"] and "relu2" in store.layers("a", "epoch_0001")
        assert len(store.root_attrs["history"]) == 2  # nothing grew


def test_a_dry_run_delete_records_nothing(grown):
    path, _, _ = grown
    assert main(["delete", str(path), "a/epoch_0001", "--dry-run"]) == 0
    with open_store(path) as store:
        assert "history" not in store.root_attrs and len(store.checkpoints("a")) == 2


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
def test_delete_from_an_old_store_without_config_raises_it_to_1_3(tmp_path, suffix):
    path = tmp_path / f"old{suffix}"
    store = create_store(path, dataset_name="toy", sample_ids=[f"i{k}" for k in range(30)],
                         labels=np.arange(30) % 3, splits=np.arange(30) % 3, class_names=["x", "y", "z"],
                         config=None)
    add_run(store, "gen")
    feats = np.random.default_rng(0).normal(size=(30, 4)).astype("float32")
    for epoch in (0, 1):
        write_checkpoint(store, "gen", f"epoch_{epoch:04d}", {"h": feats}, feats[:, :3], epoch=epoch)
    store.backend.update_attrs("", {"schema_version": "1.2"})
    store.close()
    assert validate_store(path) == []

    assert main(["delete", str(path), "gen/epoch_0001", "--yes"]) == 0
    with open_store(path) as store:
        assert store.schema_version == (1, 3)
        [entry] = store.root_attrs["history"]
        assert entry["deleted"] == ["checkpoint gen/epoch_0001"]
        assert entry["config_hash"] is None and entry["previous_config_hash"] is None
    assert validate_store(path) == []


def _grow(previous, digest):
    return history_entry(config_hash=digest, previous_config_hash=previous, added=["run b"], probestore_version="t")


def test_history_rules_for_delete_entries():
    grow = _grow("sha256:a", "sha256:b")
    deleted = delete_entry(config_hash="sha256:b", deleted=["run b"], probestore_version="t")
    assert history_problems([grow, deleted], "sha256:b", "/ history") == []
    assert history_problems([grow, deleted, _grow("sha256:b", "sha256:c")], "sha256:c", "/ history") == []

    moved = {**deleted, "config_hash": "sha256:c"}  # a delete cannot change the config
    assert history_problems([grow, moved], "sha256:c", "/ history") == [
        "/ history[1]: a delete entry's config_hash 'sha256:c', expected its previous_config_hash "
        "'sha256:b' (a delete keeps the config)"]
    both = {**deleted, "added": []}
    assert history_problems([grow, both], "sha256:b", "/ history") == [
        "/ history[1]: both 'added' and 'deleted', expected one (a growth entry or a delete entry)"]
    neither = {k: v for k, v in deleted.items() if k != "deleted"}
    assert "/ history[1]: missing attribute 'added' (a growth entry) or 'deleted' (a delete entry)" in \
        history_problems([grow, neither], "sha256:b", "/ history")
    assert history_problems([grow, {**deleted, "changed": ["x"]}], "sha256:b", "/ history") == [
        "/ history[1]: a delete entry has no 'changed', got ['x']"]
    assert history_problems([_grow(None, None)], None, "/ history") == [
        "/ history[0]: attribute 'config_hash' should be str in a growth entry, got null"]
    assert history_problems([grow, {**deleted, "deleted": [1]}], "sha256:b", "/ history") == [
        "/ history[1]: deleted should hold strings, got [1]"]


def test_validate_finds_a_broken_delete_entry_in_a_real_store(grown_h5_or_zarr_copy):
    path = grown_h5_or_zarr_copy
    with open_store(path, "a") as store:
        entry = delete_entry(config_hash="sha256:" + "0" * 64, deleted=["run a"], probestore_version="t")
        store.append_history({**entry, "config_hash": store.config_hash})
    problems = validate_store(path)
    assert any("history[0]: a delete entry's config_hash" in p for p in problems), problems
    assert main(["validate", str(path)]) == 1


@pytest.fixture
def grown_h5_or_zarr_copy(first, trained, tmp_path):
    return _copy(first, tmp_path, trained)


def test_training_lines_are_timestamped_log_lines(trained, tmp_path, capsys):
    shutil.copytree(trained / "ckpt-1", tmp_path / "ckpt-1")
    shutil.rmtree(tmp_path / "ckpt-1" / "b")
    config = write_config(tmp_path, "t.zarr", runs=("a", "b"))
    capsys.readouterr()
    assert main(["train", str(config)]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert re.fullmatch(rf"{ISO} train: \[a\] complete run found at .+; skipping training", lines[0]), lines
    epochs = [line for line in lines if "] epoch" in line]
    assert len(epochs) == 2  # the random network (epoch 0) and epoch 1
    for k, line in enumerate(epochs):
        assert re.fullmatch(rf"{ISO} train: \[b\] epoch +{k}/1 step +\d+ loss .+ valid [\d.]+ [\d.]+s", line), line
    assert "\r" not in captured.err and "epoch" not in captured.out


def _layers(capsys, *args: str) -> list[str]:
    capsys.readouterr()
    assert main(["layers", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_layers_marks_the_head_and_what_dropping_it_refuses(capsys):
    lines = _layers(capsys, "--model", "torchvision:resnet18", "--input-shape", "3,32,32", "--num-classes", "7")
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if not line.startswith("#")}
    assert rows["fc"][:2] == ["Linear", "(head)"]
    assert [name for name, row in rows.items() if "(head)" in row] == ["fc"]
    assert lines[-1] == ("# head 'fc' (7 outputs, the last nn.Linear of the forward pass); "
                         '[model] head = "drop" would refuse these layers: fc')
    lines = _layers(capsys, "--model", "mlp", "--input-shape", "1,8,8", "--option", "depth=1",
                    "--option", "width=8")
    assert [line.split()[0] for line in lines if "(head)" in line] == ["classifier"]


def test_layers_note_matches_what_head_drop_refuses(tmp_path, trained, capsys):
    """The layers the note names are the ones a `head = "drop"` extraction refuses."""
    (tmp_path / "ckpt-1").symlink_to(trained / "ckpt-1")
    lines = _layers(capsys, str(write_config(tmp_path, "d.zarr")))
    config = write_config(tmp_path, "d.zarr", layers=("relu1", "classifier"))
    config.write_text(config.read_text().replace('name = "mlp"', 'name = "mlp"\nhead = "drop"'))
    refused = lines[-1].split("would refuse these layers: ")[1].split(", ")
    assert refused == ["classifier"]
    assert main(["extract", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "dropped head or come after it" in err and "'classifier'" in err


def test_layers_and_dry_run_of_a_text_experiment(tmp_path, capsys, monkeypatch):
    """A text model (hf: with a text dataset) is listed with its token reductions, not run on floats."""
    tt = pytest.importorskip("tests.test_text_extraction")
    folder = tmp_path / "tiny"
    tt._tiny_bert(0).save_pretrained(folder)
    for name in tt.TOKENIZER_FILES:
        shutil.copy(Path(tt.minilm.get_model_path()) / name, folder / name)
    config = tt._experiment(tmp_path, folder)
    monkeypatch.chdir(tmp_path)
    lines = _layers(capsys, str(config))
    rows = {line.split()[0]: line for line in lines if line and not line.startswith(("#", "name "))}
    assert rows["encoder.layer.1"].split()[-3:] == ["tokens", "->", "32"]
    assert lines[-1].startswith("# a text model:") and not any("(head)" in line for line in lines)
    assert main(["extract", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "the store does not exist: it would be created" in out and "encoder.layer.1" in out
