"""Stores written directly through the store API, for tests that need one without extracting.

``make_store`` builds a *complete, analysable* synthetic store (runs, checkpoints, layers,
targets, logits); ``create_bare_store`` opens a new writable store holding only its
dataset, for tests of the contract itself that add runs and checkpoints by hand
(``add_run``, ``write_checkpoint``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from storage_schema import layout
from storage_schema.store import create_store

RUNS = (("clean", 0.0), ("noisy", 0.5))
LAYERS = (("l1", 6), ("l2", 10), ("l3", 8))
EPOCHS = (0, 1, 3)


def make_store(path, *, n=240, n_classes=4, runs=RUNS, layers=LAYERS, epochs=EPOCHS, seed=0,
               extra_targets=None, labels=None, types=True):
    """A small store: class-structured Gaussian features, targets linear in them + noise.

    A latent ``z`` (class means + noise) drives everything: each layer is a random linear
    map of ``z`` plus noise that shrinks with the epoch (so probes improve with training),
    concept targets are linear in ``z`` plus noise, logits are a noisy class readout.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes if labels is None else np.asarray(labels)
    y = rng.permutation(y)
    splits = np.zeros(n, dtype=np.int8)
    order = rng.permutation(n)
    splits[order[int(0.6 * n):int(0.8 * n)]] = 1
    splits[order[int(0.8 * n):]] = 2
    store = create_store(path, dataset_name="synthetic", sample_ids=[f"s{i:04d}" for i in range(n)],
                         labels=y, splits=splits, class_names=[f"c{k}" for k in range(n_classes)],
                         source={"kind": "synthetic"}, config={"seed": seed})
    if types:  # the control task's recurring types (own generator: the data below stay as they were)
        store.set_sample_types(np.random.default_rng(seed + 100).integers(0, 24, n), method={"kind": "test"})
    centers = rng.normal(size=(n_classes, 5)) * 1.2
    z = centers[y] + rng.normal(size=(n, 5))
    store.add_target("area", z @ rng.normal(size=5) + 0.3 * rng.normal(size=n), "continuous")
    store.add_target("eccentricity", z @ rng.normal(size=5) + 0.8 * rng.normal(size=n), "continuous")
    store.add_target("class_copy", y, "class")
    for name, values in (extra_targets or {}).items():
        store.add_target(name, values, "continuous")
    train = np.flatnonzero(splits == 0)
    for run, frac in runs:
        train_labels = y.copy()
        chosen = rng.choice(train, size=int(round(frac * train.size)), replace=False)
        train_labels[chosen] = (y[chosen] + rng.integers(1, n_classes, chosen.size)) % n_classes
        store.add_run(run, model={"name": "mlp"}, architecture="mlp", train_labels=train_labels,
                      corrupted=train_labels != y, corruption={"fraction": frac, "mode": "uniform", "seed": 0})
        for e in epochs:
            ck = f"epoch_{e:04d}"
            store.add_checkpoint(run, ck, epoch=e, sha256=f"{run}-{e}")
            names = []
            for name, F in layers:
                A = rng.normal(size=(5, F))
                X = z @ A + rng.normal(size=(n, F)) * (2.0 / (1 + e))
                store.create_block(run, ck, name, n_features=F, reduction={"kind": "flatten"})
                store.write_rows(run, ck, name, 0, X.astype(np.float32))
                store.mark_block_complete(run, ck, name)
                names.append(name)
            logits = 2.0 * np.eye(n_classes)[train_labels] * (e > 0) + rng.normal(size=(n, n_classes))
            store.create_block(run, ck, layout.OUTPUTS, n_features=n_classes)
            store.write_rows(run, ck, layout.OUTPUTS, 0, logits.astype(np.float32))
            store.mark_block_complete(run, ck, layout.OUTPUTS)
            store.set_layer_order(run, ck, names)
            store.mark_checkpoint_complete(run, ck)
    store.close()
    return path


def create_bare_store(path: Path, n: int = 50, n_classes: int = 3):
    """A new store, open for writing, holding only its dataset (no runs, no targets)."""
    rng = np.random.default_rng(0)
    return create_store(
        path,
        dataset_name="toy",
        sample_ids=[f"img/{i:04d}.png" for i in range(n)],
        labels=rng.integers(0, n_classes, n),
        splits=np.arange(n) % 3,
        class_names=[f"c{i}" for i in range(n_classes)],
        config={"experiment": {"name": "toy"}},
    )


def add_run(store, name: str = "gen", fraction: float = 0.0):
    n = store.n_samples
    labels = store.labels()
    train = labels.copy()
    if fraction:
        train[: int(n * fraction)] = (train[: int(n * fraction)] + 1) % len(store.dataset.class_names)
    store.add_run(
        name,
        model={"name": "mlp", "num_classes": 3},
        architecture="mlp-abc",
        train_labels=train,
        corrupted=train != labels,
        corruption={"fraction": fraction, "mode": "uniform" if fraction else "none", "seed": 0},
        training={"lr": 0.01},
    )


def write_checkpoint(store, run: str, ckpt: str, layers: dict[str, np.ndarray], logits: np.ndarray, epoch=0):
    store.add_checkpoint(run, ckpt, epoch=epoch, source=None, sha256=None)
    for name, values in {**layers, layout.OUTPUTS: logits}.items():
        store.create_block(run, ckpt, name, n_features=values.shape[1], dtype=str(values.dtype))
        store.write_rows(run, ckpt, name, 0, values)
        store.mark_block_complete(run, ckpt, name)
    store.set_layer_order(run, ckpt, list(layers))
    store.mark_checkpoint_complete(run, ckpt)


def zarr_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a Zarr store, read straight from disk (not through the store API), by node path."""
    out = {}
    for meta in sorted(path.rglob("zarr.json")):
        node = json.loads(meta.read_text())
        if node.get("node_type") == "array":
            out[meta.parent.relative_to(path).as_posix()] = np.asarray(zarr.open_array(str(meta.parent), mode="r")[...])
    return out
