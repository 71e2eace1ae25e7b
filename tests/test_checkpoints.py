"""Checkpoints: safe loading, readable mismatch errors, resolving series of checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.checkpoints import (
    NAME_RE,
    CheckpointRef,
    load_into,
    load_state_dict,
    parse_epoch_step,
    resolve_checkpoints,
    sanitize_name,
    sha256_file,
    write_manifest,
)
from probestore.errors import CheckpointError, ConfigError, InvalidNameError

pytestmark = pytest.mark.torch


def _net(hidden=4):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 2), torch.nn.BatchNorm1d(2))


def test_round_trip(tmp_path):
    src = _net()
    torch.save(src.state_dict(), tmp_path / "a.pt")
    dst = load_into(_net_fresh(), load_state_dict(tmp_path / "a.pt"))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def _net_fresh():
    torch.manual_seed(99)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                               torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_wrapped_and_dataparallel_layouts(tmp_path, wrap):
    sd = {f"module.{k}": v for k, v in _net().state_dict().items()}
    torch.save({wrap: sd, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "c.pth")
    loaded = load_state_dict(tmp_path / "c.pth")
    assert set(loaded) == set(_net().state_dict())


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_refused_and_never_run(tmp_path, writer):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.ones(2), "x": _Evil(target)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert not target.exists()
    msg = str(info.value)
    assert "never unpickles code" in msg and "torch.save(model.state_dict(), path)" in msg
    if writer == "torch":
        assert "needs code" in msg and "system" in msg


def test_whole_model_pickle_needs_code(tmp_path):
    torch.save(_net(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="needs code.*Sequential"):
        load_state_dict(tmp_path / "model.pt")


def test_numpy_array_in_checkpoint_needs_code(tmp_path):
    torch.save({"w": np.ones(3)}, tmp_path / "np.pt")
    with pytest.raises(CheckpointError, match="needs code"):
        load_state_dict(tmp_path / "np.pt")


def test_truncated_file(tmp_path):
    torch.save(_net().state_dict(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(tmp_path / "cut.pt")
    torch.save(_net().state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    old = (tmp_path / "old.pt").read_bytes()
    (tmp_path / "oldcut.pt").write_bytes(old[: len(old) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(tmp_path / "oldcut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict(tmp_path / "empty.pt")


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "noise.pt").write_bytes(b"\xff" + raw)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_state_dict(tmp_path / "noise.pt")
    (tmp_path / "zipnoise.pt").write_bytes(b"PK\x03\x04" + raw)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(tmp_path / "zipnoise.pt")


def test_missing_file_suggests_sibling(tmp_path):
    torch.save(_net().state_dict(), tmp_path / "epoch_0003.pt")
    with pytest.raises(CheckpointError, match="not found.*did you mean 'epoch_0003.pt'"):
        load_state_dict(tmp_path / "epoch_003.pt")


def test_non_tensor_values_refused(tmp_path):
    torch.save({"w": torch.ones(1), "lr": 0.1, "name": "x"}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"2 of 3 entries.*'lr' \(float\)"):
        load_state_dict(tmp_path / "mixed.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "tensor.pt")


def test_mismatch_message_lists_keys():
    sd = _net(hidden=5).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["3.running_mean"]
    with pytest.raises(CheckpointError) as info:
        load_into(_net(hidden=4), sd, where="checkpoint 'epoch_0001'")
    msg = str(info.value)
    assert "1 missing keys ('3.running_mean')" in msg
    assert "1 unexpected keys ('extra.weight')" in msg
    assert "3 shape mismatches" in msg and "'0.weight: (5, 3) vs model (4, 3)'" in msg
    assert "wrong architecture?" in msg and "epoch_0001" in msg


def test_mismatch_message_truncates_long_lists():
    sd = {f"k{i}": torch.zeros(1) for i in range(12)}
    with pytest.raises(CheckpointError, match=r"12 unexpected keys \(.* and 7 more\)"):
        load_into(_net(), {**_net().state_dict(), **sd})


def test_sha256_file(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk_size=1000) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fname, expected", [
    ("epoch_003.pt", (3, None)), ("ckpt-e12.pth", (12, None)), ("model_epoch=5.pt", (5, None)),
    ("resnet18_ep7.pt", (7, None)), ("epoch3_step1000.pt", (3, 1000)), ("step_100.pt", (None, 100)),
    ("run2_final_40.pt", (40, None)), ("lr1e-3_epoch2.pt", (2, None)), ("best.pt", (None, None)),
    ("dir_9/E04.PT", (4, None)),
])
def test_epoch_parsing(fname, expected):
    assert parse_epoch_step(fname) == expected


def _touch_ckpts(folder: Path, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        torch.save({"w": torch.zeros(1)}, folder / n)


def test_resolve_directory_sorted_by_epoch(tmp_path):
    _touch_ckpts(tmp_path / "ck", ["epoch_10.pt", "epoch_2.pt", "epoch_0.pth", "best.pt"])
    (tmp_path / "ck" / "notes.txt").write_text("x")
    refs = resolve_checkpoints(tmp_path / "ck")
    assert [r.name for r in refs] == ["epoch_0000", "epoch_0002", "epoch_0010", "best"]
    assert [r.epoch for r in refs] == [0, 2, 10, None]
    assert refs[1].path == (tmp_path / "ck" / "epoch_2.pt").resolve()


def test_resolve_glob(tmp_path):
    _touch_ckpts(tmp_path, ["ckpt-e12.pth", "ckpt-e3.pth", "other-e1.pth"])
    refs = resolve_checkpoints(str(tmp_path / "ckpt-*.pth"))
    assert [(r.name, r.epoch) for r in refs] == [("epoch_0003", 3), ("epoch_0012", 12)]
    assert [r.name for r in resolve_checkpoints(tmp_path / "other-e1.pth")] == ["epoch_0001"]


def test_resolve_duplicate_names_refused(tmp_path):
    _touch_ckpts(tmp_path, ["epoch_3.pt", "epoch_003.pt"])
    with pytest.raises(ConfigError, match="same name 'epoch_0003'"):
        resolve_checkpoints(tmp_path)


def test_resolve_nothing(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoints found"):
        resolve_checkpoints(str(tmp_path / "*.pt"))
    with pytest.raises(ConfigError, match="no checkpoints found"):
        resolve_checkpoints(tmp_path)


def test_manifest_round_trip(tmp_path):
    run = tmp_path / "run"
    _touch_ckpts(run / "ckpts", ["e1.pt", "e2.pt"])
    refs = [CheckpointRef("epoch_0002", 2, 200, run / "ckpts" / "e2.pt"),
            CheckpointRef("epoch_0000", 0, 0, None),
            CheckpointRef("epoch_0001", 1, 100, run / "ckpts" / "e1.pt")]
    manifest = write_manifest(run / "manifest.json", refs, extra={"log": [{"epoch": 1}]})
    data = json.loads(manifest.read_text())
    assert data["checkpoints"][0]["path"] == "ckpts/e2.pt"  # relative to the manifest
    assert data["log"] == [{"epoch": 1}]
    assert data["checkpoints"][0]["sha256"] == sha256_file(run / "ckpts" / "e2.pt")
    # move the whole folder: relative paths still resolve
    moved = tmp_path / "moved"
    run.rename(moved)
    back = resolve_checkpoints(moved / "manifest.json")
    assert [(r.name, r.epoch, r.step) for r in back] == [
        ("epoch_0000", 0, 0), ("epoch_0001", 1, 100), ("epoch_0002", 2, 200)]
    assert back[0].path is None and back[2].path == (moved / "ckpts" / "e2.pt").resolve()
    assert back[2].sha256 == sha256_file(moved / "ckpts" / "e2.pt")
    # a directory holding manifest.json is read through it (random init included)
    assert [r.name for r in resolve_checkpoints(moved)][0] == "epoch_0000"
    assert not list(moved.glob("*.tmp"))


@pytest.mark.parametrize("entry, error, fragment", [
    ({"name": "../x", "path": None}, InvalidNameError, "invalid .*name"),
    ({"name": "a", "path": "missing.pt"}, ConfigError, "does not exist"),
    ({"name": "a", "path": None, "epok": 1}, ConfigError, "did you mean 'epoch'"),
    ({"name": "a", "path": None, "epoch": "3"}, ConfigError, "expected int"),
])
def test_manifest_errors(tmp_path, entry, error, fragment):
    (tmp_path / "m.json").write_text(json.dumps({"checkpoints": [entry]}))
    with pytest.raises(error, match=fragment):
        resolve_checkpoints(tmp_path / "m.json")


def test_manifest_not_json(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read checkpoint manifest"):
        resolve_checkpoints(tmp_path / "m.json")
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(ConfigError, match="not a checkpoint manifest"):
        resolve_checkpoints(tmp_path / "m.json")


@pytest.mark.parametrize("raw", ["epoch 3", "../../etc", ".hidden", "a/b", "ok_name-1.pt", "", "é"])
def test_sanitize_name_always_valid(raw):
    s = sanitize_name(raw)
    assert NAME_RE.match(s) and ".." not in s


def test_checkpoint_ref_refuses_bad_name():
    with pytest.raises(InvalidNameError, match="for example 'a_b'"):
        CheckpointRef("a/b")
