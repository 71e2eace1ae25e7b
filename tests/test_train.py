"""Training N-memorizing networks: checkpoints, manifest, determinism, the update itself."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from extract.checkpoints import load_into, load_state_dict, resolve_checkpoints, sha256_file
from extract.corruption import corrupt_labels
from extract.datasets import load_dataset
from extract.models import ModelSpec, build_model
from extract.splits import assign_splits
from extract.train import train_model
from probestore.errors import ConfigError, DataError, InvalidNameError
from probestore.experiment import DatasetSpec, TrainConfig

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def setup():
    ds = load_dataset(DatasetSpec("digits", max_samples=300, seed=0))
    splits = assign_splits(ds.labels, {"train": 0.7, "valid": 0.15, "test": 0.15}, seed=0)
    train_labels, corrupted = corrupt_labels(ds.labels, splits, 0.5, 10, "uniform", seed=0)
    return ds, splits, train_labels, corrupted


def _model(seed=0, num_classes=10):
    return build_model(ModelSpec("mlp", num_classes, (1, 8, 8), {"hidden": [32, 16]}), seed=seed)


def _train(setup, out, config=None, run_name="mlp_n0.5", model=None, **kw):
    ds, splits, train_labels, corrupted = setup
    config = config or TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, seed=3)
    return train_model(model or _model(), ds, splits, train_labels, corrupted, config, out,
                       run_name=run_name, progress=False, **kw)


def _load_all(manifest):
    return {r.epoch: load_state_dict(r.path) for r in resolve_checkpoints(manifest)}


def test_manifest_checkpoints_and_log(setup, tmp_path, capsys):
    ds, splits, train_labels, corrupted = setup
    model = _model()
    init = copy.deepcopy(model.state_dict())
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, seed=3)
    manifest = train_model(model, ds, splits, train_labels, corrupted, config, tmp_path,
                           run_name="mlp_n0.5", progress=True)
    assert manifest == tmp_path / "mlp_n0.5" / "manifest.json"
    assert len(capsys.readouterr().err.strip().splitlines()) == 3  # epochs 0, 1, 2
    data = json.loads(manifest.read_text())
    entries = data["checkpoints"]
    assert [e["epoch"] for e in entries] == [0, 1, 2]
    assert [e["path"] for e in entries] == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    steps_per_epoch = -(-int((splits == 0).sum()) // 32)
    assert [e["step"] for e in entries] == [0, steps_per_epoch, 2 * steps_per_epoch]
    for e in entries:
        path = manifest.parent / e["path"]
        assert e["sha256"] == sha256_file(path)
        sd = torch.load(path, weights_only=True)
        assert set(sd) == set(init) and all(v.device.type == "cpu" for v in sd.values())
    states = _load_all(manifest)
    for k, v in init.items():
        assert torch.equal(states[0][k], v)  # epoch 0 is the untouched random init
    assert not torch.equal(states[2]["fc1.weight"], init["fc1.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(states[2][k], v)  # the last checkpoint is the trained model
    assert data["n_corrupted"] == int(corrupted.sum()) > 0
    assert data["config"] == config.to_dict() and data["dataset"]["spec"]["kind"] == "digits"
    log = data["log"]
    assert [e["epoch"] for e in log] == [0, 1, 2] and log[0]["train_loss"] is None
    assert all(isinstance(e["train_loss"], float) for e in log[1:])
    # the logged accuracies are those of the saved weights, recomputed here by hand
    load_into(model, states[2]).eval()
    with torch.no_grad():
        x = torch.stack([ds.torch_dataset()[i][0] for i in range(len(ds))])
        pred = model(x).argmax(1).numpy()
    clean = (splits == 0) & ~corrupted
    assert log[2]["clean_acc"] == pytest.approx((pred[clean] == ds.labels[clean]).mean())
    assert log[2]["corrupted_acc"] == pytest.approx((pred[corrupted] == train_labels[corrupted]).mean())
    assert log[2]["corrupted_true_acc"] == pytest.approx((pred[corrupted] == ds.labels[corrupted]).mean())
    assert log[2]["valid_acc"] == pytest.approx((pred[splits == 1] == ds.labels[splits == 1]).mean())


def test_same_seed_bit_identical_other_seed_differs(setup, tmp_path):
    a = _load_all(_train(setup, tmp_path / "a"))
    b = _load_all(_train(setup, tmp_path / "b"))
    c = _load_all(_train(setup, tmp_path / "c",
                         TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, seed=4)))
    for epoch in (0, 1, 2):
        for k in a[epoch]:
            assert torch.equal(a[epoch][k], b[epoch][k])
    assert torch.equal(a[0]["fc1.weight"], c[0]["fc1.weight"])  # same init (model seed)
    assert not torch.equal(a[2]["fc1.weight"], c[2]["fc1.weight"])  # other shuffling


def test_full_batch_epoch_is_one_sgd_step_on_corrupted_train_labels(setup, tmp_path):
    """Against autograd by hand: the update uses the train split and the training labels."""
    ds, splits, train_labels, corrupted = setup
    model = _model(seed=1)
    ref = copy.deepcopy(model)
    config = TrainConfig(epochs=1, batch_size=10_000, lr=0.1, seed=0)
    states = _load_all(_train(setup, tmp_path, config, model=model))
    tr = np.flatnonzero(splits == 0)
    x = torch.stack([ds.torch_dataset()[int(i)][0] for i in tr])
    loss = torch.nn.functional.cross_entropy(ref(x), torch.as_tensor(train_labels[tr]))
    loss.backward()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            torch.testing.assert_close(states[1][name], p - 0.1 * p.grad, rtol=1e-5, atol=1e-6)
    # and with the *true* labels the result would differ (the corruption is used)
    assert corrupted[tr].any()


def test_save_epochs_and_rerun_skip(setup, tmp_path, capsys):
    config = TrainConfig(epochs=3, batch_size=64, save_epochs=[1], seed=0)
    manifest = _train(setup, tmp_path, config)
    assert sorted(p.name for p in manifest.parent.glob("*.pt")) == [
        "epoch_0000.pt", "epoch_0001.pt", "epoch_0003.pt"]
    assert len(json.loads(manifest.read_text())["log"]) == 4  # every epoch is logged
    before = {p.name: p.stat().st_mtime_ns for p in manifest.parent.iterdir()}
    model = _model()
    untouched = copy.deepcopy(model.state_dict())
    ds, splits, train_labels, corrupted = setup
    again = train_model(model, ds, splits, train_labels, corrupted, config, tmp_path,
                        run_name="mlp_n0.5", progress=True)
    assert again == manifest and "skipping" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in manifest.parent.iterdir()} == before
    assert all(torch.equal(v, untouched[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="different inputs"):
        _train(setup, tmp_path, TrainConfig(epochs=3, batch_size=64, save_epochs=[1], seed=1))


def test_input_validation(setup, tmp_path):
    ds, splits, train_labels, corrupted = setup
    cfg = TrainConfig(epochs=1)
    bad = corrupted.copy()
    bad[np.flatnonzero(splits == 2)[0]] = True
    with pytest.raises(DataError, match="outside the train split"):
        train_model(_model(), ds, splits, train_labels, bad, cfg, tmp_path, run_name="r")
    with pytest.raises(DataError, match="does not match the dataset"):
        train_model(_model(), ds, splits[:-1], train_labels, corrupted, cfg, tmp_path, run_name="r")
    with pytest.raises(ConfigError, match="num_classes = 10"):
        train_model(_model(num_classes=5), ds, splits, train_labels, corrupted, cfg, tmp_path,
                    run_name="r")
    with pytest.raises(InvalidNameError, match="invalid run name"):
        train_model(_model(), ds, splits, train_labels, corrupted, cfg, tmp_path, run_name="../x")
    assert not any(tmp_path.iterdir())  # nothing written before validation passed


def test_train_config_validation():
    cfg = TrainConfig.from_dict({"epochs": 5, "save_epochs": [5, 0, 2], "optimizer": "adam"})
    assert cfg.save_epochs == [0, 2, 5] and cfg.epochs_to_save() == [0, 2, 5]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(epochs=2).epochs_to_save() == [0, 1, 2]
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        TrainConfig.from_dict({"epochs": 1, "batchsize": 8}, where="exp.toml [train]")
    with pytest.raises(ConfigError, match=r"in train\.save_epochs"):
        TrainConfig.from_dict({"epochs": 3, "save_epochs": [4]})
    with pytest.raises(ConfigError, match="did you mean 'adam'"):
        TrainConfig(epochs=1, optimizer="adan")
    with pytest.raises(ConfigError, match="wrong type"):
        TrainConfig(epochs=1, lr="0.1")
    with pytest.raises(ConfigError, match="missing required key 'epochs'"):
        TrainConfig.from_dict({})


def test_worker_processes_give_the_same_weights(setup, tmp_path):
    """DataLoader workers (pickled dataset, per-worker seeds) change nothing numerically."""
    cfg = dict(epochs=1, batch_size=32, lr=0.05, seed=3)
    a = _load_all(_train(setup, tmp_path / "a", TrainConfig(**cfg)))
    b = _load_all(_train(setup, tmp_path / "b", TrainConfig(**cfg, num_workers=2)))
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
