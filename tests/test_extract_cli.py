"""`probestore layers / train / extract` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from probestore.cli import main
from tests.conftest import DTD_DIR, MNIST_DIR, needs_data

MNIST = MNIST_DIR
needs_mnist = needs_data(MNIST)

CONFIG = f"""
[experiment]
name = "cli"
store = "out/cli.zarr"
checkpoints_dir = "out/checkpoints"
[dataset]
kind = "idx"
path = "{MNIST}"
subset = "test"
max_samples = 200
[model]
name = "mlp"
options = {{ depth = 2, width = 16 }}
[training]
epochs = 1
batch_size = 50
[[runs]]
name = "generalizing"
[[runs]]
name = "memorizing"
corruption = 1.0
[extract]
layers = ["input", "relu*"]
batch_size = 50
"""


def _table(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and not line.startswith("name "):
            parts = line.split()
            rows[parts[0]] = parts[1:]
    return rows


def test_layers_lists_every_hookable_layer(capsys):
    assert main(["layers", "--model", "mlp", "--input-shape", "1,28,28", "--num-classes", "10",
                 "--option", "depth=2", "--option", "width=32"]) == 0
    rows = _table(capsys.readouterr().out)
    assert list(rows) == ["input", "flatten", "fc1", "relu1", "fc2", "relu2", "classifier"]
    assert rows["input"][-2:] == ["1x28x28", "784"]
    assert rows["fc1"] == ["Linear", "32", "32"]
    assert rows["classifier"] == ["Linear", "(head)", "10", "10"]  # the last nn.Linear run


def test_layers_of_the_shallow_cnn_and_json_options(capsys):
    assert main(["layers", "--model", "shallow_cnn", "--input-shape", "3,64,64", "--num-classes", "5",
                 "--option", "channels=8", "--option", "fc=[12,6]"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows["conv1"] == ["Conv2d", "8x64x64", str(8 * 64 * 64)]
    assert rows["pool2"][1] == "8x16x16"
    assert rows["gap"][1:] == ["8", "8"]
    assert rows["fc2"][1:] == ["6", "6"]


@needs_mnist
def test_layers_from_a_config_shows_what_is_stored(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.toml").write_text(CONFIG)
    assert main(["layers", "exp.toml"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert rows["relu1"][-3:] == ["flatten", "->", "16"]
    assert rows["input"][-3:] == ["flatten", "->", "784"]
    assert rows["fc1"] == ["Linear", "16", "16"]  # listed, not selected


def test_layers_usage_errors(capsys):
    assert main(["layers"]) == 2
    assert "give either an experiment file or --model" in capsys.readouterr().err
    assert main(["layers", "--model", "mlpp", "--input-shape", "1,28,28"]) == 2
    assert "did you mean 'mlp'" in capsys.readouterr().err
    assert main(["layers", "--model", "mlp", "--input-shape", "1,28"]) == 2
    assert "C,H,W" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "options"), [
    ("layers", ["--model", "--input-shape", "--num-classes", "--option", "--device"]),
    ("train", ["--runs", "--device", "--num-workers", "--quiet"]),
    ("extract", ["--store", "--runs", "--layers", "--device", "--batch-size", "--num-workers", "--amp",
                 "--shard", "--overwrite", "--dry-run", "--no-progress"]),
])
def test_help_documents_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in options:
        assert option in out
    assert "example" in out


def test_commands_import_no_torch_and_explain_how_to_install_it(tmp_path):
    """Without torch: `--help` works and the extract commands say what to install."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from probestore.cli import build_parser, main\n"
        "build_parser()\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m]), 'torch imported'\n"
        "rc = main(['extract', 'missing.toml'])\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "PyTorch is not installed" in proc.stderr and "probestore[extract]" in proc.stderr


@needs_mnist
def test_train_extract_and_unknown_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.toml").write_text(CONFIG)
    # an unknown layer fails before any training or data reading, with the closest names
    assert main(["extract", "exp.toml", "--layers", "relu3"]) == 2
    err = capsys.readouterr().err
    assert "no layer matches 'relu3'" in err and "'relu1'" in err
    assert "probestore layers" in err
    assert not (tmp_path / "out").exists()
    # extraction before training says what to run
    assert main(["extract", "exp.toml", "--no-progress"]) == 2
    assert "probestore train exp.toml --runs generalizing" in capsys.readouterr().err
    assert main(["train", "exp.toml", "--runs", "memorizing", "--quiet"]) == 0
    assert (tmp_path / "out/checkpoints/memorizing/manifest.json").is_file()
    assert not (tmp_path / "out/checkpoints/generalizing").exists()
    assert main(["train", "exp.toml", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["extract", "exp.toml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 checkpoint(s)" in out and "relu2" in out and not (tmp_path / "out/cli.zarr").exists()
    assert main(["extract", "exp.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "extracted 4 checkpoint(s)" in out and "samples/s" in out and "MiB" in out
    from storage_schema.store import open_store

    store = open_store(tmp_path / "out/cli.zarr")
    assert store.runs() == ["generalizing", "memorizing"]
    assert [c.epoch for c in store.checkpoints("memorizing")] == [0, 1]
    assert store.run_info("memorizing").corruption_fraction == 1.0
    assert store.corrupted_mask("memorizing").sum() > 0
    assert main(["extract", "exp.toml", "--shard", "2/2"]) == 2
    assert "shards are numbered from 0" in capsys.readouterr().err


RESNET_CONFIG = """
[experiment]
name = "shared-modules"
store = "{store}"
[dataset]
kind = "imagefolder"
path = "{dtd}"
image_size = 32
max_samples = 24
[model]
name = "torchvision:resnet18"
[[runs]]
name = "r"
checkpoints = "{ckpts}"
[extract]
layers = {layers}
reduction = "flatten"
batch_size = 8
"""


@needs_data(DTD_DIR)
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_module_called_twice_per_forward_is_refused_or_stored_per_call(tmp_path, capsys, suffix):
    """The ReLU of a torchvision BasicBlock runs after bn1 and after the residual add."""
    import numpy as np
    import torch

    from extract.models import ModelSpec, build_model
    from storage_schema.store import open_store
    from storage_schema.validate import validate_store

    (tmp_path / "ck").mkdir()
    spec = ModelSpec("torchvision:resnet18", 10, (3, 32, 32), {})
    torch.save(build_model(spec, seed=3).state_dict(), tmp_path / "ck" / "epoch_1.pt")
    store = tmp_path / f"s{suffix}"

    def config(layers: list[str]) -> str:
        path = tmp_path / "exp.toml"
        path.write_text(RESNET_CONFIG.format(store=store, dtd=DTD_DIR, ckpts=tmp_path / "ck",
                                             layers=json.dumps(layers)))
        return str(path)

    # The bare name is refused before any data is read: one line that lists the calls.
    assert main(["extract", config(["layer4.1.relu"]), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'layer4.1.relu' runs 2 times per forward pass" in err
    assert "layer4.1.relu#0 (512x1x1), layer4.1.relu#1 (512x1x1)" in err and "fix: select" in err
    assert not store.exists()
    # A call index out of range names the calls that exist.
    assert main(["extract", config(["layer4.1.relu#2"]), "--no-progress"]) == 2
    assert "expected #0 .. #1" in capsys.readouterr().err
    # Each call picked by name is stored as its own block.
    layers = ["layer4.1.bn1", "layer4.1.relu#0", "layer4.1.relu#1", "layer4.1"]
    assert main(["extract", config(layers), "--no-progress"]) == 0
    s = open_store(store)
    assert [b.name for b in s.layers("r", "epoch_0001")] == ["layer4.1", *layers[:3]]  # named_modules order
    read = {name: s.read_layer("r", "epoch_0001", name) for name in layers}
    np.testing.assert_array_equal(read["layer4.1.relu#0"], np.maximum(read["layer4.1.bn1"], 0))
    np.testing.assert_array_equal(read["layer4.1.relu#1"], read["layer4.1"])  # the block output
    assert not np.array_equal(read["layer4.1.relu#0"], read["layer4.1.relu#1"])
    assert validate_store(store) == []
    # `probestore layers` lists each call under the name to select it by.
    capsys.readouterr()
    assert main(["layers", "--model", "torchvision:resnet18", "--input-shape", "3,32,32"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows["layer4.1.relu"][:3] == ["ReLU", "(x2", "per"]
    assert rows["layer4.1.relu#1"] == ["ReLU", "(call", "1)", "512x1x1", "512"]


@pytest.mark.parametrize("value", [1, 63])
def test_chunk_rows_below_64_is_refused_in_one_line(tmp_path, capsys, value):
    (tmp_path / "exp.toml").write_text(CONFIG + f"chunk_rows = {value}\n")
    assert main(["extract", str(tmp_path / "exp.toml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "chunk_rows too small; in" in err and "[extract].chunk_rows" in err and ">= 64" in err, err
