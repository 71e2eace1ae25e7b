"""Growing a store: a changed experiment file that only adds extracts only what is new.

The promise under test: a store grown step by step (a run, a layer, more epochs, the
gradient pass, concept measures and sets) holds exactly what a store extracted in one
go from the last file holds, array for array, bit for bit, with the same attributes
(times and the history aside); a change that would alter stored numbers is refused with
the keys named and a fix that works; dropping something from the file deletes nothing;
every key of the experiment file is classified (:data:`probestore.experiment.growth.KEYS`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from probestore.cli import main
from probestore.errors import ConfigError
from probestore.experiment import load_config
from probestore.experiment.growth import ADDITIVE, FIXED, KEYS, LABEL, RUNTIME, compare_content
from storage_schema.store import open_store
from storage_schema.validate import validate_store
from tests.conftest import BACKEND_SUFFIXES

N = 150  # digits (bundled with scikit-learn): no data files, a few ms per pass

# Every step only adds to the one before; the last is the one-go reference.
STEPS: list[dict[str, Any]] = [
    {"runs": ["a"], "layers": ["relu1"], "epochs": 1},
    {"runs": ["a", "b"], "layers": ["relu1"], "epochs": 1},
    {"runs": ["a", "b"], "layers": ["relu1", "relu2", "input"], "epochs": 1},
    {"runs": ["a", "b"], "layers": ["relu1", "relu2", "input"], "epochs": 2},
    {"runs": ["a", "b"], "layers": ["relu1", "relu2", "input"], "epochs": 2, "gradients": True},
    {"runs": ["a", "b"], "layers": ["relu1", "relu2", "input"], "epochs": 2, "gradients": True,
     "families": ["shape"], "sets": True},
]
ADDED = [
    ["run b"],
    ["layer input", "layer relu2"],
    ["checkpoints of run a: epoch 2", "checkpoints of run b: epoch 2"],
    ["gradients"],
    ["concept family shape", "concept set banded", "concept set random_0", "concept set random_1"],
]
RUNS = {"a": "corruption = 0.0", "b": "corruption = 0.5\nmode = \"uniform\""}


def write_config(root: Path, store: str, *, runs=("a",), layers=("relu1",), epochs: int = 1,
                 gradients: bool = False, families=(), sets: bool = False, **edits: str) -> Path:
    """The experiment file of one step; ``edits`` replace whole lines (``"key = value"``) by key.

    Runs trained for ``epochs`` epochs are in ``<root>/ckpt-<epochs>`` (the checkpoint
    folder is not hashed: where things live is no part of the experiment).
    """
    lines = [
        "[experiment]", 'name = "grow"', f'store = "{root / store}"',
        f'checkpoints_dir = "{root / f"ckpt-{epochs}"}"',
        "seed = 1",
        "[dataset]", 'kind = "digits"', f"max_samples = {N}",
        "[model]", 'name = "mlp"', "options = { depth = 2, width = 16 }",
        "[training]", f"epochs = {epochs}", "batch_size = 32",
        *[f'[[runs]]\nname = "{r}"\n{RUNS[r]}' for r in runs],
        "[extract]", "layers = [" + ", ".join(f'"{x}"' for x in layers) + "]",
        'reductions = { relu1 = "random:6" }', 'dtype = "float32"', "batch_size = 64", "chunk_rows = 64",
        f"gradients = {'true' if gradients else 'false'}",
        "[concepts]", "families = [" + ", ".join(f'"{f}"' for f in families) + "]", "types = 8",
    ]
    if sets:
        lines += ["[concepts.sets]", 'banded = { random = 6, class = "3" }',
                  "[concepts.random_sets]", "count = 2", "size = 15"]
    text = "\n".join(lines) + "\n"
    for key, line in edits.items():
        head = key.split(".")[-1]
        hits = [x for x in text.splitlines() if x.split("=")[0].strip() == head]
        assert hits, key
        text = text.replace(hits[0], line, 1)
    path = root / f"{Path(store).stem}-{len(list(root.glob('*.toml')))}.toml"
    path.write_text(text)
    return path


def extract(config: Path, **kwargs):
    from extract.pipeline import run_extraction

    return run_extraction(load_config(config), progress=False, **kwargs)


def tree(path: Path) -> dict[str, tuple[dict[str, Any], np.ndarray | None]]:
    """Every node of a store (either backend): its attributes and, for arrays, the values."""
    store = open_store(path)
    backend = store.backend
    out: dict[str, tuple[dict[str, Any], np.ndarray | None]] = {}

    def walk(node: str) -> None:
        groups, arrays = backend.list_children(node)
        out[node or "/"] = (dict(backend.get_attrs(node)), None)
        for a in arrays:
            name = f"{node}/{a}" if node else a
            out[name] = (dict(backend.get_attrs(name)), backend.read(name))
        for g in groups:
            walk(f"{node}/{g}" if node else g)

    walk("")
    store.close()
    return out


#: Attributes that differ by nature: times, the history, and the checkpoint file a
#: checkpoint came from (the 1-epoch and 2-epoch trainings are in different folders;
#: the files' SHA-256, compared, are equal).
TIMES = ("created", "completed_at", "history", "source")


def assert_same_store(grown: Path, one_go: Path) -> None:
    left, right = tree(grown), tree(one_go)
    assert sorted(left) == sorted(right)
    for node, (attrs, values) in left.items():
        other_attrs, other_values = right[node]
        skip = TIMES if "/checkpoints/" in node and node.count("/") == 3 else TIMES[:3]
        assert {k: v for k, v in attrs.items() if k not in skip} == \
            {k: v for k, v in other_attrs.items() if k not in skip}, node
        if values is not None:
            assert other_values is not None and values.dtype == other_values.dtype, node
            assert np.array_equal(values, other_values), f"{node} differs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Runs a and b trained for 1 and for 2 epochs (growing a run's epochs means retraining it:
    on CPU the shared epochs come back with the same weights, which extraction checks)."""
    from extract.pipeline import load_experiment, train_runs

    root = tmp_path_factory.mktemp("grow-trained")
    for epochs in (1, 2):
        cfg = load_config(write_config(root, "unused.zarr", runs=("a", "b"), epochs=epochs))
        train_runs(load_experiment(cfg), cfg.runs, progress=False)
    return root


@pytest.fixture(scope="module", params=BACKEND_SUFFIXES)
def grown(request, trained, tmp_path_factory):
    """A store grown through every step of STEPS, and one extracted in one go from the last."""
    suffix = request.param
    root = tmp_path_factory.mktemp("grow" + suffix.replace(".", "-"))
    for epochs in (1, 2):
        (root / f"ckpt-{epochs}").symlink_to(trained / f"ckpt-{epochs}")
    hashes = []
    for step in STEPS:
        extract(write_config(root, "grown" + suffix, **step))
        hashes.append(open_store(root / f"grown{suffix}").config_hash)
    extract(write_config(root, "one-go" + suffix, **STEPS[-1]))
    return root, suffix, hashes


def test_grown_store_equals_one_go_store(grown):
    root, suffix, _ = grown
    assert_same_store(root / f"grown{suffix}", root / f"one-go{suffix}")
    store = open_store(root / f"grown{suffix}")
    assert store.runs() == ["a", "b"]
    assert [c.name for c in store.checkpoints("a")] == ["epoch_0000", "epoch_0001", "epoch_0002"]
    assert [b.name for b in store.blocks("b", "epoch_0000")] == ["input", "relu1", "relu2", "outputs"]
    assert "area" in store.target_names()
    assert validate_store(root / f"grown{suffix}") == []


def test_history_records_what_each_step_added(grown):
    root, suffix, hashes = grown
    store = open_store(root / f"grown{suffix}")
    history = store.root_attrs["history"]
    assert [e["added"] for e in history] == ADDED
    assert [e["config_hash"] for e in history] == hashes[1:]
    assert [e["previous_config_hash"] for e in history] == hashes[:-1]
    assert store.schema_version >= (1, 3)
    assert store.config == open_store(root / f"one-go{suffix}").config
    assert "history" not in open_store(root / f"one-go{suffix}").root_attrs  # never grown


def test_nothing_new_writes_nothing(grown, capsys):
    root, suffix, hashes = grown
    summary = extract(write_config(root, "grown" + suffix, **STEPS[-1]))
    assert summary.done == [] and len(summary.skipped) == 6
    store = open_store(root / f"grown{suffix}")
    assert store.config_hash == hashes[-1] and len(store.root_attrs["history"]) == len(ADDED)


def test_dropping_a_run_and_a_layer_deletes_nothing(grown):
    root, suffix, hashes = grown
    copy = root / f"dropped{suffix}"
    (shutil.copytree if suffix == ".zarr" else shutil.copy)(root / f"grown{suffix}", copy)
    before = tree(copy)
    step = {**STEPS[-1], "runs": ["a"], "layers": ["relu2", "input"]}
    summary = extract(write_config(root, "dropped" + suffix, **step, reductions="reductions = {}"))
    assert summary.done == [] and len(summary.skipped) == 3  # run a only: nothing to extract
    after = tree(copy)
    assert sorted(after) == sorted(before)
    for node, (_, values) in before.items():
        assert values is None or np.array_equal(values, after[node][1]), node
    store = open_store(copy)
    assert store.config_hash == hashes[-1]  # the record keeps run b and layer relu1: no new entry
    assert [r["name"] for r in store.config["runs"]] == ["a", "b"]
    assert "relu1" in store.config["extract"]["layers"]
    # then adding something records the union: run b and relu1 stay in the record
    extract(write_config(root, "dropped" + suffix, **{**step, "layers": ["relu2", "input", "relu1"],
                                                      "families": ["shape", "colour"]}))
    store = open_store(copy)
    assert store.root_attrs["history"][-1]["added"] == ["concept family colour"]
    assert [r["name"] for r in store.config["runs"]] == ["a", "b"]
    assert [b.name for b in store.blocks("b", "epoch_0002")] == ["input", "relu1", "relu2", "outputs"]
    assert validate_store(copy) == []
    # a layer added while another is dropped: the dropped one stays listed, in model order
    extract(write_config(root, "dropped" + suffix, **{**step, "layers": ["relu2", "input", "fc2"]},
                         reductions="reductions = {}"))
    store = open_store(copy)
    assert [b.name for b in store.blocks("a", "epoch_0001")] == ["input", "relu1", "fc2", "relu2", "outputs"]
    assert np.array_equal(store.read_layer("a", "epoch_0001", "relu1"), before[
        "runs/a/checkpoints/epoch_0001/layers/relu1/features"][1])
    assert validate_store(copy) == []


@pytest.mark.parametrize("edit, key", [
    ({"max_samples": "max_samples = 120"}, "dataset.max_samples"),
    ({"seed": "seed = 2"}, "experiment.seed"),
    ({"reductions": 'reductions = { relu1 = "random:5" }'}, "stored layer relu1 random("),
    ({"options": "options = { depth = 2, width = 17 }"}, "model.options"),
    ({"corruption": "corruption = 0.25"}, "runs[a].corruption"),
    ({"dtype": 'dtype = "float16"'}, "extract.dtype"),
    ({"batch_size": "batch_size = 16"}, "runs[a].training.batch_size"),
    ({"types": "types = 9"}, "concepts.types"),
])
def test_changes_that_alter_stored_numbers_are_refused(grown, edit, key):
    from extract.pipeline import load_experiment, open_or_create_store

    root, suffix, hashes = grown
    cfg = load_config(write_config(root, "grown" + suffix, **STEPS[-1], **edit))
    with pytest.raises(ConfigError) as info:
        open_or_create_store(load_experiment(cfg))
    assert key in str(info.value.got), info.value
    assert "--overwrite" in str(info.value.fix) and "--store" in str(info.value.fix)
    assert open_store(root / f"grown{suffix}").config_hash == hashes[-1]


def test_refusal_names_the_keys_and_its_fixes_work(grown, capsys, monkeypatch):
    root, suffix, hashes = grown
    if suffix != ".zarr":
        pytest.skip("the command line is the same for both backends (refusals: the test above)")
    config = write_config(root, "grown" + suffix, **{**STEPS[-1], "runs": ["a"]},
                          max_samples="max_samples = 120")
    monkeypatch.chdir(root)
    assert main(["extract", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "dataset.max_samples: 150 -> 120" in err
    assert open_store(root / f"grown{suffix}").config_hash == hashes[-1]
    assert main(["extract", str(config), "--no-progress", "--store", str(root / f"new{suffix}")]) == 0
    assert open_store(root / f"new{suffix}").n_samples == 120
    copy = root / f"over{suffix}"
    (shutil.copytree if suffix == ".zarr" else shutil.copy)(root / f"grown{suffix}", copy)
    assert main(["extract", str(config), "--no-progress", "--store", str(copy), "--overwrite"]) == 0
    store = open_store(copy)
    assert store.n_samples == 120 and store.runs() == ["a"] and "history" not in store.root_attrs


def test_other_weights_for_an_extracted_checkpoint_are_refused(grown):
    """More epochs means retraining: the extracted checkpoints must come back with the same weights."""
    import torch

    from probestore.errors import CheckpointError

    root, suffix, _ = grown
    copy = root / f"weights{suffix}"
    (shutil.copytree if suffix == ".zarr" else shutil.copy)(root / f"grown{suffix}", copy)
    ckpts = root / "ckpt-other"
    shutil.copytree(root / "ckpt-2", ckpts)
    manifest = ckpts / "a" / "manifest.json"
    state = torch.load(ckpts / "a" / "epoch_0001.pt")
    next(iter(state.values())).add_(1.0)
    torch.save(state, ckpts / "a" / "epoch_0001.pt")
    import json

    from extract.checkpoints import sha256_file

    data = json.loads(manifest.read_text())
    for c in data["checkpoints"]:
        if c.get("path") == "epoch_0001.pt":
            c["sha256"] = sha256_file(ckpts / "a" / "epoch_0001.pt")
    manifest.write_text(json.dumps(data))
    config = write_config(root, f"weights{suffix}", **STEPS[-1],
                          checkpoints_dir=f'checkpoints_dir = "{ckpts}"')
    from extract.pipeline import run_extraction

    with pytest.raises(CheckpointError, match="other weights"):
        run_extraction(load_config(config), progress=False)


# --------------------------------------------------------------------------- the key table


def test_every_key_of_the_parser_is_classified():
    """A key the parser accepts but KEYS does not classify fails here (decide: additive or not)."""
    from probestore.experiment.keys import all_tables

    classes = {RUNTIME, ADDITIVE, FIXED, LABEL}
    assert all(cls in classes and why for cls, why in KEYS.values())
    missing, wrong = [], []
    for table in all_tables():
        prefix = table.header.strip("[]")
        if prefix == "analysis":
            assert KEYS["analysis"][0] == RUNTIME
            continue
        for name, key in table.items():
            path = f"{prefix}.{name}"
            if path not in KEYS:
                missing.append(path)
            elif (KEYS[path][0] == RUNTIME) == key.hashed:
                wrong.append(path)  # runtime keys are exactly the ones not hashed
    assert not missing, f"classify these keys in probestore.experiment.growth.KEYS: {missing}"
    assert not wrong, f"runtime in KEYS but hashed in the registry (or the reverse): {wrong}"


def test_content_leaves_out_exactly_the_runtime_keys(tmp_path):
    cfg = load_config(write_config(tmp_path, "s.zarr"))
    content = cfg.content()
    for path, (cls, _) in KEYS.items():
        table, _, key = path.partition(".")
        if cls == RUNTIME and key and "." not in key:
            assert key not in content.get(table, {}), path
            for run in content["runs"]:
                assert key not in run.get("training", {}), path


def test_compare_content_rules_without_a_network():
    """The plain-data rules: what each kind of change gives (no store, no torch)."""
    old = {
        "experiment": {"name": "x", "seed": 0},
        "dataset": {"kind": "digits"},
        "training": {"epochs": 2, "save_epochs": "all", "seed": 0},
        "runs": [{"name": "a", "corruption": 0.0, "mode": "shuffle", "seed": 0, "description": "",
                  "training": {}}],
        "extract": {"layers": ["relu1"], "reductions": {}, "reduction": "auto", "dtype": "float32"},
        "concepts": {"families": [], "csv": [], "folders": {}, "preset": "graziani2019",
                     "random_sets": {"count": 2, "size": 10}},
    }
    new = {**old, "experiment": {"name": "y", "seed": 0},
           "training": {"epochs": 1, "save_epochs": "all", "seed": 0},
           "runs": [{**old["runs"][0], "name": "b"}],
           "concepts": {**old["concepts"], "random_sets": {"count": 3, "size": 10}}}
    growth = compare_content(old, new)
    assert growth.refused == []
    assert growth.added == ["run b", "concept set random_2"]
    assert growth.changed == ['experiment.name: "x" -> "y"']
    kept = [r for r in growth.record["runs"] if r["name"] == "a"]
    assert kept and kept[0]["training"]["epochs"] == 2  # dropped run a keeps its own training
    assert growth.record["experiment"]["name"] == "y"
    refused = compare_content(old, {**old, "concepts": {**old["concepts"],
                                                        "random_sets": {"count": 2, "size": 11}}})
    assert [r.split(":")[0] for r in refused.refused] == ["concepts.sets.random_0", "concepts.sets.random_1"]
    assert compare_content(old, {**old, "extract": {**old["extract"], "reduction": "gap"}}).refused == [
        'extract.reduction: "auto" -> "gap"']


# --------------------------------------------------------------------------- the record and a killed grow


def test_validate_checks_the_history(grown):
    root, suffix, hashes = grown
    copy = root / f"tampered{suffix}"
    (shutil.copytree if suffix == ".zarr" else shutil.copy)(root / f"grown{suffix}", copy)
    store = open_store(copy, "a")
    history = store.root_attrs["history"]
    broken = [dict(e) for e in history]
    broken[1]["previous_config_hash"] = hashes[0]
    del broken[2]["added"]
    broken[-1]["config_hash"] = "sha256:0"
    store.backend.update_attrs("", {"history": broken})
    store.close()
    problems = validate_store(copy)
    assert any("history[1]: previous_config_hash" in p for p in problems), problems
    assert any("history[2]: missing attribute 'added'" in p for p in problems), problems
    assert any("the last entry's config_hash 'sha256:0' is not the store's" in p for p in problems), problems
    store = open_store(copy, "a")
    store.backend.update_attrs("", {"history": history, "schema_version": "1.2"})
    store.close()
    assert [p for p in validate_store(copy) if "history" in p] == [
        "/: schema_version '1.2' with a history, expected '1.3' (SCHEMA.md §2), got history"]


KILL_AFTER_SECOND_CHUNK = """
import os, signal, sys
from storage_schema.store import ActivationStore
write = ActivationStore.write_rows
def write_rows(self, run, checkpoint, block, start, values):
    write(self, run, checkpoint, block, start, values)
    if block == "relu2" and start > 0:  # a chunk of the new layer is on disk: die here
        os.kill(os.getpid(), signal.SIGKILL)
ActivationStore.write_rows = write_rows
from probestore.cli import main
sys.exit(main(["extract", sys.argv[1], "--no-progress"]))
"""


@pytest.mark.slow
def test_sigkill_while_growing_then_rerun_gives_the_one_go_store(trained, tmp_path, capsys):
    """A grow killed mid-layer (real SIGKILL) leaves a valid store and resumes like any extraction."""
    import signal
    import subprocess
    import sys

    for epochs in (1, 2):
        (tmp_path / f"ckpt-{epochs}").symlink_to(trained / f"ckpt-{epochs}")
    extract(write_config(tmp_path, "killed.zarr", layers=("relu1",)))
    config = write_config(tmp_path, "killed.zarr", layers=("relu1", "relu2"))
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_CHUNK, str(config)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = open_store(tmp_path / "killed.zarr")
    assert store.root_attrs["history"][-1]["added"] == ["layer relu2"]
    block = store.block_info("a", "epoch_0000", "relu2")
    assert not block.complete and 0 < block.rows_done < N
    assert store.checkpoint_info("a", "epoch_0000").complete  # its relu1 and outputs stay readable
    assert [b.name for b in store.blocks("a", "epoch_0000")] == ["relu1", "outputs"]
    assert validate_store(tmp_path / "killed.zarr") == []
    capsys.readouterr()
    summary = extract(config)
    assert [s.resumed_from for s in summary.done][0] == 64
    extract(write_config(tmp_path, "one-go.zarr", layers=("relu1", "relu2")))
    assert_same_store(tmp_path / "killed.zarr", tmp_path / "one-go.zarr")


def test_reduction_settings_may_change_only_for_new_layers():
    """Resolved per layer: an override for a new layer is an addition, a new default that
    reaches a stored layer is not (a stand-in resolver: layers as written, reductions as specs)."""
    def resolve(options):
        return {layer: {"kind": options.reduction_for(layer)} for layer in options.layers}

    old = {"experiment": {"seed": 0}, "runs": [],
           "extract": {"layers": ["relu1"], "reduction": "auto", "reductions": {}}}
    grow = {**old, "extract": {"layers": ["relu1", "relu2"], "reduction": "auto", "reductions": {"relu2": "gap"}}}
    growth = compare_content(old, grow, resolve_layers=resolve)
    assert growth.refused == [] and growth.added == ["layer relu2"]
    assert growth.record["extract"]["reductions"] == {"relu2": "gap"}
    default = {**old, "extract": {"layers": ["relu1", "relu2"], "reduction": "gap", "reductions": {}}}
    assert compare_content(old, default, resolve_layers=resolve).refused == [
        "extract.reduction: stored layer relu1 auto -> gap"]
    # a run's training: a [training] change reaches every run that inherits it
    trained = {**old, "training": {"epochs": 1, "lr": 0.01},
               "runs": [{"name": "a", "training": {}}, {"name": "b", "training": {"lr": 0.1}}]}
    relr = {**trained, "training": {"epochs": 1, "lr": 0.05}}
    assert [r.split(":")[0] for r in compare_content(trained, relr).refused] == ["runs[a].training.lr"]
