"""A pretrained network whose head does not match the dataset (issue 14, part 1).

A real torchvision ResNet-18 state dict with ImageNet's 1,000 outputs (random weights,
saved with ``torch.save``) is extracted on the 10-class scikit-learn digits through the
command line: refused with a fix that names ``[model] num_classes = 1000``, accepted
with it (the outputs block holds the network's own 1,000 logits, equal to torchvision's
forward pass), analysed with ``skipped`` model-output rows; with a ``class_map`` the
model-output rows are computed on the mapped classes (checked against scikit-learn);
with ``head = "drop"`` a state dict without ``fc.*`` probes the hidden layers only (no
outputs block) and its features equal the full model's. Every store validates, on Zarr
and HDF5.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from sklearn.metrics import log_loss, top_k_accuracy_score

from analyze.outputs import mapped_output_metrics, model_output_metrics, output_head
from extract.checkpoints import load_into
from extract.models import ModelSpec, build_model, find_head
from probestore.cli import main
from probestore.errors import CheckpointError, ConfigError, DataError
from probestore.experiment import load_config
from storage_schema import layout
from storage_schema.store import create_store, open_store
from storage_schema.validate import validate_store

REPO = Path(__file__).resolve().parents[1]
N_SAMPLES = 100
LAYERS = ["layer4.1.bn2", "avgpool"]
#: 7 of the 10 digit classes, by model index or by the model's own class name
CLASS_MAP = {"0": "imagenet_0003", "1": 7, "2": 99, "3": 500, "4": "imagenet_0999", "5": 0, "6": 321}
MAP_INDICES = {"0": 3, "1": 7, "2": 99, "3": 500, "4": 999, "5": 0, "6": 321}


def _config(folder: Path, store: str, checkpoint: Path, model_lines: str = "", layers=LAYERS) -> Path:
    text = f"""
[experiment]
name = "resnet18-imagenet-on-digits"
store = "{folder / store}"
seed = 0

[dataset]
kind = "digits"
image_size = [16, 16]
channels = 3
max_samples = {N_SAMPLES}

[model]
name = "torchvision:resnet18"
{model_lines}

[[runs]]
name = "imagenet"
checkpoints = "{checkpoint}"

[extract]
layers = {json.dumps(layers)}
batch_size = 64
device = "cpu"   # compared with torchvision's forward on the CPU (a GPU's TF32 convolutions differ by ~1e-3)
"""
    path = folder / f"{Path(store).stem}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """ImageNet-shaped ResNet-18 state dicts: the whole network, and without its head."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    assert state["fc.weight"].shape == (1000, 512)
    (folder / "full").mkdir()
    (folder / "headless").mkdir()
    torch.save(state, folder / "full" / "imagenet.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, folder / "headless" / "imagenet.pt")
    names = folder / "imagenet_classes.txt"
    names.write_text("".join(f"imagenet_{i:04d}\n" for i in range(1000)))
    return {"full": folder / "full" / "imagenet.pt", "headless": folder / "headless" / "imagenet.pt",
            "names": names, "state": state}  # type: ignore[dict-item]


def _analyze(store: Path, capsys, probes: str = "classifier,outputs") -> pd.DataFrame:
    out = store.parent / f"{store.stem}.results.parquet"
    assert main(["analyze", str(store), "-o", str(out), "--probes", probes, "--layers", "avgpool",
                 "--Cs", "0.1,1", "--workers", "0", "--no-progress"]) == 0, capsys.readouterr().err
    return pd.read_parquet(out)


def _reference_logits(state: dict, config_path: Path) -> np.ndarray:
    """torchvision's own forward pass of the checkpoint over the dataset, in store order."""
    from extract.pipeline import load_experiment

    exp = load_experiment(load_config(config_path))
    model = torchvision.models.resnet18(num_classes=1000)
    model.load_state_dict(state)
    model.eval()
    x = torch.stack([exp.dataset.torch_dataset()[i][0] for i in range(len(exp.dataset))])
    with torch.inference_mode():
        return model(x).numpy()


def test_imagenet_head_on_a_10_class_dataset_through_the_cli(tmp_path, checkpoints, capsys, suffix=".zarr"):
    # Without num_classes: one line that names the fix, and no store is created.
    config = _config(tmp_path, f"rn18{suffix}", checkpoints["full"])
    assert main(["extract", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "fc.weight: (1000, 512) vs model (10, 512)" in err
    assert "set [model] num_classes = 1000" in err and '[model] head = "drop"' in err
    store_path = tmp_path / f"rn18{suffix}"
    assert not store_path.exists()

    # The fix works: the same file with the suggested line, through the real command line.
    # (HDF5 stores of such a head: the class_map and head = "drop" tests.)
    config = _config(tmp_path, f"rn18{suffix}", checkpoints["full"], "num_classes = 1000")
    proc = subprocess.run([sys.executable, "-m", "probestore", "extract", str(config), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert validate_store(store_path) == []
    with open_store(store_path) as store:
        assert store.run_info("imagenet").model["num_classes"] == 1000
        [ckpt] = store.checkpoints("imagenet")
        logits = store.read_logits("imagenet", ckpt.name)
        assert logits.shape == (N_SAMPLES, 1000)
        assert len(store.dataset.class_names) == 10  # the dataset keeps its labels
    np.testing.assert_allclose(logits, _reference_logits(checkpoints["state"], config), rtol=1e-4, atol=1e-4)
    assert main(["inspect", str(store_path)]) == 0
    assert "head: 1000 model classes, not the dataset's" in capsys.readouterr().out

    table = _analyze(store_path, capsys)
    outputs = table[table["probe"] == "model_output"]
    assert list(outputs["status"]) == ["skipped"]
    message = outputs["message"].iloc[0]
    assert message.startswith("skipped: the model's head has 1000 classes, the dataset 10") and "class_map" in message
    assert outputs[["train_error", "valid_error", "test_error", "test_loss"]].isna().all().all()
    probe = table[table["probe"] == "classifier"]
    assert list(probe["status"].unique()) != ["skipped"] and probe["test_error"].notna().all()


def test_class_map_restricts_the_model_output_rows_to_the_mapped_classes(tmp_path, checkpoints, capsys):
    cmap = ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in CLASS_MAP.items())
    config = _config(tmp_path, "mapped.h5", checkpoints["full"],
                     f'num_classes = 1000\nclass_names = "{checkpoints["names"]}"\nclass_map = {{ {cmap} }}')
    assert main(["extract", str(config), "--no-progress"]) == 0, capsys.readouterr().err
    store_path = tmp_path / "mapped.h5"
    assert validate_store(store_path) == []
    with open_store(store_path) as store:
        model = store.run_info("imagenet").model
        assert model["class_map"] == MAP_INDICES and model["class_names"][999] == "imagenet_0999"
        assert store.schema_version >= (1, 3)
        logits = store.read_logits("imagenet", store.checkpoints("imagenet")[0].name).astype(np.float64)
        labels, splits = store.labels(), store.splits()
    table = _analyze(store_path, capsys, probes="outputs")
    row = table[table["probe"] == "model_output"].iloc[0]
    assert row["status"] == "ok"
    assert "argmax over the 7 mapped of the model's 1000 logits" in row["message"]
    assert "3 unmapped dataset class(es) left out" in row["message"]

    # numpy / scikit-learn reference: the 7 mapped columns, samples of mapped classes only
    mapped = sorted(MAP_INDICES, key=int)
    columns = [MAP_INDICES[c] for c in mapped]
    for code, split in enumerate(("train", "valid", "test")):
        rows = np.flatnonzero((splits == code) & (labels < 7))
        sub, y = logits[rows][:, columns], labels[rows]
        assert row[f"n_{split}"] == rows.size > 0
        assert row[f"{split}_error"] == pytest.approx(np.mean(np.argmax(sub, 1) != y))
        prob = np.exp(sub - sub.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        assert row[f"{split}_loss"] == pytest.approx(log_loss(y, prob, labels=range(7)), rel=1e-9)
        assert row[f"{split}_top5_error"] == pytest.approx(1 - top_k_accuracy_score(y, sub, k=5, labels=range(7)))


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_head_drop_probes_hidden_layers_of_a_headless_state_dict(tmp_path, checkpoints, capsys, suffix):
    if suffix == ".h5":  # the dropped head cannot be probed (refused before any store is made)
        bad = _config(tmp_path, f"bad{suffix}", checkpoints["headless"], 'head = "drop"', layers=["avgpool", "fc"])
        assert main(["extract", str(bad), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "are the dropped head or come after it" in err and "'fc'" in err

    config = _config(tmp_path, f"drop{suffix}", checkpoints["headless"], 'head = "drop"')
    assert main(["extract", str(config), "--no-progress"]) == 0, capsys.readouterr().err
    store_path = tmp_path / f"drop{suffix}"
    assert validate_store(store_path) == []
    with open_store(store_path) as store:
        assert store.run_info("imagenet").model["head"] == "drop"
        name = store.checkpoints("imagenet")[0].name
        assert [b.name for b in store.blocks("imagenet", name)] == LAYERS  # no outputs block
        features = store.read_layer("imagenet", name, "avgpool")
    # the hidden layers are the full checkpoint's: ResNet-18's avgpool from torchvision directly
    model = torchvision.models.resnet18(num_classes=1000)
    model.load_state_dict(checkpoints["state"])
    model.fc = torch.nn.Identity()
    from extract.pipeline import load_experiment

    exp = load_experiment(load_config(config))
    x = torch.stack([exp.dataset.torch_dataset()[i][0] for i in range(N_SAMPLES)])
    with torch.inference_mode():
        np.testing.assert_allclose(features, model.eval()(x).numpy(), rtol=1e-4, atol=1e-4)
    assert main(["inspect", str(store_path)]) == 0
    assert "head: dropped" in capsys.readouterr().out

    table = _analyze(store_path, capsys)
    outputs = table[table["probe"] == "model_output"]
    assert list(outputs["status"]) == ["skipped"] and 'head = "drop"' in outputs["message"].iloc[0]
    assert (table.loc[table["probe"] == "classifier", "status"] != "skipped").all()


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("name, shape, head", [
    ("torchvision:resnet18", (3, 32, 32), "fc"),
    ("torchvision:mobilenet_v3_small", (3, 32, 32), "classifier.3"),
    ("mlp", (1, 8, 8), "classifier"),
    ("shallow_cnn", (3, 16, 16), "classifier"),
    ("ab_mnist_convnet", (1, 28, 28), "logits"),
])
def test_the_head_is_the_last_linear_layer_the_forward_pass_reaches(name, shape, head):
    spec = ModelSpec(name, 7, shape, {"hidden": [8]} if name == "mlp" else {})
    info = find_head(build_model(spec, seed=0), shape)
    assert info is not None and (info.name, info.out_features) == (head, 7)
    if name == "torchvision:mobilenet_v3_small":
        assert info.after == ("classifier",)  # its container's output is the head's


def test_a_network_without_a_linear_head_cannot_drop_it():
    assert find_head(build_model(ModelSpec("torchvision:squeezenet1_1", 5, (3, 32, 32)), seed=0), (3, 32, 32)) is None


def test_head_drop_ignores_only_the_head_keys():
    spec = ModelSpec("mlp", 10, (1, 8, 8), {"hidden": [6]})
    model = build_model(spec, seed=0)
    head = find_head(model, spec.input_shape)
    other = build_model(ModelSpec("mlp", 1000, (1, 8, 8), {"hidden": [6]}), seed=1).state_dict()
    load_into(model, other, head=head, drop_head=True)
    assert torch.equal(model.fc1.weight, other["fc1.weight"])
    wrong = {**other, "fc1.weight": other["fc1.weight"][:, :3]}
    with pytest.raises(CheckpointError, match=r"fc1.weight: \(6, 3\) vs model \(6, 64\)"):
        load_into(model, wrong, head=head, drop_head=True)
    with pytest.raises(CheckpointError, match=r"set \[model\] num_classes = 1000"):
        load_into(model, other, head=head)


@pytest.mark.parametrize("lines, message", [
    ('head = "dorp"', "unknown head mode 'dorp'"),
    ("num_classes = 0", "num_classes must be positive"),
    ('class_names = ["a", "b"]', "class_names needs num_classes"),
    ('num_classes = 3\nclass_names = ["a", "b"]', "class_names does not name every class"),
    ('num_classes = 2\nclass_names = ["a", "a"]', "class name 'a' given twice"),
    ('num_classes = 2\nclass_map = { "0" = 2 }', "model class index outside the head"),
    ('num_classes = 2\nclass_map = { "0" = "cat" }', "the model has no class_names"),
    ('num_classes = 2\nclass_names = ["cat", "dog"]\nclass_map = { "0" = "cta" }', "unknown model class 'cta'"),
    ('num_classes = 5\nclass_map = { "0" = 1, "1" = 1 }', "two dataset classes mapped to one model class"),
    ('head = "drop"\nclass_map = { "0" = 1 }', 'class_map with head = "drop"'),
])
def test_model_table_errors_are_one_line_with_a_fix(tmp_path, lines, message):
    config = _config(tmp_path, "x.zarr", tmp_path / "none.pt", lines)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(config)


def test_class_map_names_are_checked_against_the_dataset(tmp_path, checkpoints):
    from extract.pipeline import load_experiment

    config = _config(tmp_path, "x.zarr", checkpoints["full"], 'num_classes = 1000\nclass_map = { "seven" = 7 }')
    with pytest.raises(ConfigError, match="'seven', which is not a class of the dataset"):
        load_experiment(load_config(config))


def test_gradients_and_training_need_a_head_of_the_dataset_classes(tmp_path, checkpoints):
    from extract.pipeline import check_head_plan, load_experiment, train_runs

    config = _config(tmp_path, "x.zarr", checkpoints["full"], "num_classes = 1000")
    config.write_text(config.read_text() + "gradients = true\n")
    exp = load_experiment(load_config(config))
    with pytest.raises(ConfigError, match="gradients need the logit of each sample's own class"):
        check_head_plan(exp)
    trained = load_config(config).runs[0].__class__(name="t", checkpoints=None)
    with pytest.raises(ConfigError, match="probestore train needs a head of the dataset's classes"):
        train_runs(exp, [trained], progress=False)


def test_a_model_without_head_keys_keeps_its_architecture_id():
    from extract.pipeline import architecture_id

    plain = ModelSpec("mlp", 10, (1, 8, 8))
    assert plain.to_dict() == {"name": "mlp", "num_classes": 10, "input_shape": [1, 8, 8], "options": {}}
    mapped = ModelSpec("mlp", 10, (1, 8, 8), head="keep", class_map={"a": 1})
    assert architecture_id(mapped.network_dict()) == architecture_id(plain.to_dict())
    assert ModelSpec.from_dict(mapped.to_dict()) == mapped


def test_output_head_reads_the_recorded_model():
    classes = [str(k) for k in range(3)]
    assert output_head({"num_classes": 3}, classes).kind == "dataset"
    assert output_head({}, classes).kind == "dataset"  # a store from before num_classes was a key
    renamed = output_head({"num_classes": 3, "class_names": ["a", "b", "c"]}, classes)
    assert renamed.kind == "skipped" and "class names are not the dataset's" in renamed.message
    assert output_head({"num_classes": 3, "head": "drop"}, classes).kind == "skipped"
    mapped = output_head({"num_classes": 9, "class_map": {"2": 8, "0": 5}}, classes)
    assert mapped.kind == "mapped" and mapped.columns.tolist() == [5, -1, 8]
    with pytest.raises(DataError, match="does not fit the store"):  # a hand-edited store: a failed row, no guess
        output_head({"num_classes": 9, "class_map": {"7": 1}}, classes)


def test_mapped_metrics_leave_out_unmapped_samples_per_labeling():
    rng = np.random.default_rng(0)
    n = 60
    logits = rng.normal(size=(n, 6))
    y = rng.integers(0, 3, n)
    y_train = y.copy()
    corrupted = np.zeros(n, bool)
    corrupted[:10] = True
    y_train[:10] = (y[:10] + 1) % 3
    split_index = {"train": np.arange(40), "valid": np.arange(40, 50), "test": np.arange(50, 60)}
    columns = np.array([4, -1, 1])  # dataset class 1 unmapped
    got = mapped_output_metrics(logits, {"true_labels": y, "train_labels": y_train}, split_index, corrupted,
                                columns)
    for name, labels in (("true_labels", y), ("train_labels", y_train)):
        keep = labels != 1
        recoded = np.where(labels == 2, 1, 0)
        index = {s: i[keep[i]] for s, i in split_index.items()}
        want = model_output_metrics(logits[:, [4, 1]], {name: recoded}, index, corrupted, 2)[name]
        assert got[name] == pytest.approx(want, nan_ok=True)
        tr = index["train"]
        pred = np.argmax(logits[tr][:, [4, 1]], 1)
        assert got[name]["corrupted_error"] == pytest.approx(np.mean(pred[corrupted[tr]] != recoded[tr][corrupted[tr]]))
        assert got[name]["n_train"] == tr.size


def test_validate_checks_the_head_keys_and_the_outputs_block(tmp_path):
    n = 12
    store = create_store(tmp_path / "s.zarr", dataset_name="t", sample_ids=[f"s{i}" for i in range(n)],
                         labels=np.arange(n) % 3, splits=np.arange(n) % 3, class_names=["a", "b", "c"])
    labels = store.labels()
    for run, model in (("dropped", {"name": "mlp", "num_classes": 3, "head": "drop"}),
                       ("mapped", {"name": "mlp", "num_classes": 5, "class_map": {"a": 4, "z": 7}})):
        store.add_run(run, model={**model, "input_shape": [1, 2, 2], "options": {}}, architecture="mlp-x",
                      train_labels=labels, corrupted=np.zeros(n, bool),
                      corruption={"fraction": 0.0, "mode": "none", "seed": 0})
        store.add_checkpoint(run, "epoch_0001", epoch=1)
        for block, width in (("relu1", 4), (layout.OUTPUTS, model["num_classes"])):
            store.create_block(run, "epoch_0001", block, n_features=width)
            store.write_rows(run, "epoch_0001", block, 0, np.ones((n, width), np.float32))
            store.mark_block_complete(run, "epoch_0001", block)
        store.mark_checkpoint_complete(run, "epoch_0001")
    store.close()
    problems = validate_store(tmp_path / "s.zarr")
    assert any("dropped/checkpoints/epoch_0001: outputs block in a run whose model.head is 'drop'" in p
               for p in problems)
    assert any("runs/mapped: model.class_map, expected dataset classes mapped to distinct indices in [0, 5)" in p
               for p in problems)
    assert len(problems) == 2, problems


def test_class_names_file_is_relative_to_the_experiment_file(tmp_path, checkpoints):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "names.txt").write_text("cat\n\ndog\nbird\n")  # blank lines ignored
    config = _config(tmp_path, "x.zarr", checkpoints["full"], 'num_classes = 3\nclass_names = "names.txt"\n'
                     'class_map = { "1" = "dog" }')
    moved = tmp_path / "conf" / "x.toml"
    config.rename(moved)
    cfg = load_config(moved)
    assert cfg.model["class_names"] == ["cat", "dog", "bird"] and cfg.raw["model"]["class_names"] == "names.txt"


def test_conexp_uses_only_the_mapped_logits(tmp_path):
    from types import SimpleNamespace

    from analyze.tcav import _conexp_rows

    n, rng = 40, np.random.default_rng(1)
    store = create_store(tmp_path / "s.h5", dataset_name="t", sample_ids=[f"s{i}" for i in range(n)],
                         labels=np.arange(n) % 3, splits=np.arange(n) % 3, class_names=["a", "b", "c"])
    concept = rng.random(n) < 0.5
    store.add_target("striped", concept, "binary")
    logits = rng.normal(size=(n, 5)).astype(np.float32)
    for run, extra in (("mapped", {"class_map": {"a": 4, "c": 1}}), ("other", {})):
        store.add_run(run, model={"name": "mlp", "num_classes": 5, "input_shape": [1, 2, 2], "options": {},
                                  **extra}, architecture="mlp-x", train_labels=store.labels(),
                      corrupted=np.zeros(n, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
        store.add_checkpoint(run, "e1", epoch=1)
        store.create_block(run, "e1", layout.OUTPUTS, n_features=5)
        store.write_rows(run, "e1", layout.OUTPUTS, 0, logits)
        store.mark_block_complete(run, "e1", layout.OUTPUTS)
        store.mark_checkpoint_complete(run, "e1")
    rows_ = np.arange(n)
    opts = SimpleNamespace(conexp_score="logit")
    rows = {r["class_name"]: r for r in _conexp_rows(store, "mapped", "e1", ["striped"], rows_, [0, 1, 2],
                                                       ["a", "b", "c"], opts, {"run": "mapped"})}
    f64 = logits.astype(np.float64)
    want = f64[concept].mean(0) - f64[~concept].mean(0)
    assert rows["a"]["score_mean"] == pytest.approx(want[4]) and rows["c"]["score_mean"] == pytest.approx(want[1])
    assert rows["b"]["status"] == "failed" and "not in the model's class_map" in rows["b"]["message"]
    other = _conexp_rows(store, "other", "e1", ["striped"], rows_, [0, 1, 2], ["a", "b", "c"], opts, {})
    assert [r["status"] for r in other] == ["failed"] * 3 and "class_map" in other[0]["message"]
    store.close()


def test_head_keys_raise_an_older_store_to_schema_1_3(tmp_path):
    n = 6
    store = create_store(tmp_path / "old.zarr", dataset_name="t", sample_ids=[f"s{i}" for i in range(n)],
                         labels=np.arange(n) % 2, splits=np.arange(n) % 3, class_names=["a", "b"])
    store.backend.update_attrs("", {"schema_version": "1.2"})
    store.close()
    store = open_store(tmp_path / "old.zarr", "a")
    assert store.schema_version == (1, 2)
    store.add_run("r", model={"name": "mlp", "num_classes": 2, "input_shape": [1, 2, 2], "options": {},
                              "head": "drop"}, architecture="mlp-x", train_labels=store.labels(),
                  corrupted=np.zeros(n, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    assert store.schema_version == (1, 3)
    store.backend.update_attrs("", {"schema_version": "1.2"})  # what a writer that forgot §2 leaves
    store.close()
    assert any("schema_version '1.2' with runs/r model.head, expected '1.3'" in p
               for p in validate_store(tmp_path / "old.zarr"))


def test_default_head_keys_keep_the_config_hash(tmp_path, checkpoints):
    plain = load_config(_config(tmp_path, "x.zarr", checkpoints["full"]))
    keep = load_config(_config(tmp_path, "y.zarr", checkpoints["full"], 'head = "keep"'))
    assert plain.raw["model"] == {"name": "torchvision:resnet18", "options": {}}  # as before these keys
    assert plain.content_hash() == keep.content_hash()
