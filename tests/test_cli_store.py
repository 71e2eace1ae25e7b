"""`probestore inspect` / `validate` as a user runs them (real subprocesses, real stores)."""

import subprocess
import sys

import numpy as np
import pytest

from storage_schema.store import open_store
from tests.helpers.stores import add_run, create_bare_store, write_checkpoint


def probestore(*args):
    return subprocess.run(
        [sys.executable, "-m", "probestore", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_inspect_and_validate_a_good_store(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    store = create_bare_store(path)
    add_run(store, "mem", fraction=0.5)
    write_checkpoint(
        store, "mem", "epoch_0003", {"relu1": np.ones((50, 8), "float32")}, np.zeros((50, 3), "float32"), epoch=3
    )
    store.add_checkpoint("mem", "epoch_0004", epoch=4)
    out = probestore("inspect", path)
    assert out.returncode == 0, out.stderr
    assert "mem: model mlp, corruption 0.5" in out.stdout
    assert "relu1" in out.stdout and "[50, 8] float32" in out.stdout
    assert "epoch_0004 (epoch 4) INCOMPLETE" in out.stdout
    valid = probestore("validate", path)
    assert valid.returncode == 0 and "valid" in valid.stdout


def test_validate_lists_every_violation(tmp_path):
    path = tmp_path / "s.zarr"
    store = create_bare_store(path)
    add_run(store)
    write_checkpoint(store, "gen", "e0", {"fc1": np.ones((50, 4), "float32")}, np.zeros((50, 3), "float32"))
    store.backend.update_attrs("runs/gen/checkpoints/e0/layers/fc1", {"complete": False})
    store.backend.update_attrs("runs/gen", {"extra": 1})
    out = probestore("validate", path)
    assert out.returncode == 1
    assert "2 violation(s)" in out.stderr
    assert "unknown attribute 'extra'" in out.stderr and "marked complete but this block is not" in out.stderr


def test_bumped_major_version_is_one_clear_line(tmp_path):
    path = tmp_path / "s.zarr"
    create_bare_store(path)
    open_store(path, "a").backend.update_attrs("", {"schema_version": "9.0"})
    out = probestore("inspect", path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "9.0" in lines[0] and "1.x" in lines[0]


def test_missing_store_and_help(tmp_path):
    out = probestore("inspect", tmp_path / "nothing.zarr")
    assert out.returncode == 2 and "no store at this path" in out.stderr
    for command in ("inspect", "validate"):
        assert probestore(command, "--help").returncode == 0
