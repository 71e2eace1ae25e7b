"""Experiment files (TOML) for tests that drive the command line or parse configs.

``EXAMPLE`` exercises every table of an experiment file (the parser's tests edit it
line by line); ``write_experiment`` writes a small MNIST MLP experiment with three real
checkpoints (runs ``a``: 2, ``b``: 1), for tests that extract, damage and repair stores.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import MNIST_DIR

MNIST = MNIST_DIR

EXAMPLE = f"""
[experiment]
name = "mnist-mlp-memorization"
store = "demo-output/mnist_mlp.zarr"
checkpoints_dir = "demo-output/checkpoints/mnist_mlp"
seed = 3

[dataset]
kind = "idx"
path = ["$PROBESTORE_TEST_NOT_SET/mnist", "{MNIST}"]
subset = "test"
max_samples = 300

[splits]
train = 0.6
valid = 0.2
test = 0.2

[model]
name = "mlp"
options = {{ depth = 2, width = 16 }}

[training]
epochs = 2
save_epochs = [0, 1, 2]

[[runs]]
name = "generalizing"
corruption = 0.0

[[runs]]
name = "memorizing-0.5"
corruption = 0.5
mode = "uniform"
training = {{ epochs = 3 }}

[[runs]]
name = "imported"
checkpoints = "some/dir"

[extract]
layers = ["input", "relu*"]
reductions = {{ relu1 = "random:8" }}
batch_size = 64
dtype = "float16"

[concepts]
families = ["shape"]

[analysis]
probes = ["classifier"]
"""


MLP_SAMPLES = 300
MLP_CONFIG = """
[experiment]
name = "repair"
store = "{store}"
[dataset]
kind = "idx"
path = "{mnist}"
subset = "test"
max_samples = {n}
[model]
name = "mlp"
options = {{ depth = 2, width = 32 }}
[[runs]]
name = "a"
checkpoints = "{ckpts}/a"
[[runs]]
name = "b"
checkpoints = "{ckpts}/b"
corruption = 0.5
[extract]
layers = ["input", "relu*"]
batch_size = 50
chunk_rows = 64
"""
CHECKPOINTS = ("a/epoch_0000", "a/epoch_0001", "b/epoch_0000")


def write_experiment(root: Path, store: str = "store.zarr", n: int = MLP_SAMPLES) -> Path:
    """Three checkpoints of a small MLP (runs a: 2, b: 1) and ``exp.toml`` pointing at ``store``."""
    import torch  # here, not at the top: the config tests that use EXAMPLE need no torch

    from extract.models import ModelSpec, build_model

    spec = ModelSpec("mlp", 10, (1, 28, 28), {"depth": 2, "width": 32})
    for seed, name in enumerate(CHECKPOINTS, start=1):
        run, ckpt = name.split("/")
        path = root / "ckpt" / run / f"{ckpt.replace('_000', '_')}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            torch.save(build_model(spec, seed=seed).state_dict(), path)
    config = root / f"exp-{Path(store).stem}{Path(store).suffix.replace('.', '-')}.toml"
    config.write_text(MLP_CONFIG.format(store=root / store, mnist=MNIST_DIR, n=n, ckpts=root / "ckpt"))
    return config


def lock_files(folder: Path) -> list[str]:
    """The lock files left in a folder (a finished command must leave none)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".lock", "-lock")))
