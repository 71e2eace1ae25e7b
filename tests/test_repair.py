"""Repair advice that works: every "fix:" printed for a damaged store is a command that,
run as printed, leaves a valid store equal, array for array, to an undamaged one.

Real stores on both backends are damaged the way copies and disks damage them (a
truncated chunk file, a deleted chunk file, corrupted chunk bytes inside an HDF5 file, a
block's array deleted, a dataset array's metadata garbled); the advice is read from the
errors the user sees (``probestore validate`` and reading the store), and the command
in it is run through the ``probestore`` entry point. Before ``--repair``, the advice
named ``probestore extract ...`` (which printed "skipped 3 complete" and left the store
invalid) or a ``--overwrite-checkpoint`` option that did not exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from probestore.cli import main
from probestore.errors import ProbestoreError
from storage_schema.store import open_store
from storage_schema.validate import validate_store
from tests.conftest import MNIST_DIR, needs_data
from tests.helpers.experiments import lock_files, write_experiment

pytestmark = needs_data(MNIST_DIR)

def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store (either backend), by node path."""
    store = open_store(path)
    backend = store.backend
    out: dict[str, np.ndarray] = {}

    def walk(node: str) -> None:
        groups, arrays = backend.list_children(node)
        for a in arrays:
            out[f"{node}/{a}".strip("/")] = backend.read(f"{node}/{a}".strip("/"))
        for g in groups:
            walk(f"{node}/{g}".strip("/"))

    walk("")
    return out


def assert_same_store(a: Path, b: Path) -> None:
    left, right = store_arrays(a), store_arrays(b)
    assert sorted(left) == sorted(right)
    assert any(k.endswith("relu2/features") for k in left)
    for key in left:
        assert left[key].dtype == right[key].dtype and np.array_equal(left[key], right[key]), key
    sa, sb = open_store(a), open_store(b)
    for run in ("a", "b"):
        assert [c.name for c in sa.checkpoints(run)] == [c.name for c in sb.checkpoints(run)]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Undamaged reference stores (Zarr and HDF5), extracted in this process like the repairs."""
    root = tmp_path_factory.mktemp("repair")
    for store in ("ref.zarr", "ref.h5"):
        config = write_experiment(root, store)
        assert main(["extract", str(config), "--no-progress"]) == 0
    assert lock_files(root) == []  # a clean extraction leaves no lock file
    return root


def suggested_commands(messages: list[str]) -> list[str]:
    """The backquoted commands of every ``fix:`` in the messages."""
    return [cmd for m in messages for cmd in re.findall(r"fix: [^`]*`([^`]+)`", m)]


def run_printed(command: str, config: Path, capsys) -> str:
    """Run a printed ``probestore ...`` command as printed (CONFIG is the experiment file)."""
    argv = shlex.split(command)
    assert argv[0] == "probestore"
    argv = [str(config) if a == "CONFIG" else a for a in argv[1:]]
    capsys.readouterr()
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out + out.err


def what_the_user_sees(path: Path, blocks: list[tuple[str, str, str]], capsys) -> list[str]:
    """``probestore validate`` output plus the errors of reading each damaged block."""
    messages = []
    capsys.readouterr()
    assert main(["validate", str(path)]) == 1
    messages += capsys.readouterr().err.splitlines()
    store = open_store(path)
    for run, ckpt, block in blocks:
        try:
            store.read_block(run, ckpt, block)
        except ProbestoreError as exc:
            messages.append(str(exc))
    return messages


def test_zarr_truncated_chunk_deleted_chunk_and_deleted_array_are_repaired(experiment, tmp_path, capsys):
    config = write_experiment(experiment, str(tmp_path / "store.zarr"))
    store = tmp_path / "store.zarr"
    shutil.copytree(experiment / "ref.zarr", store)
    ckpt = store / "runs" / "a" / "checkpoints"
    chunk = ckpt / "epoch_0000" / "layers" / "relu1" / "features" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])          # truncated chunk
    (ckpt / "epoch_0000" / "outputs" / "logits" / "c" / "2" / "0").unlink()   # deleted chunk
    shutil.rmtree(store / "runs" / "b" / "checkpoints" / "epoch_0000" / "layers" / "relu2" / "features")
    untouched = ckpt / "epoch_0001" / "layers" / "relu1" / "features" / "c" / "0" / "0"
    before = untouched.stat().st_mtime_ns, untouched.stat().st_ino

    messages = what_the_user_sees(store, [("a", "epoch_0000", "relu1"), ("a", "epoch_0000", "outputs"),
                                          ("b", "epoch_0000", "relu2")], capsys)
    commands = suggested_commands(messages)
    assert commands and set(commands) == {"probestore extract CONFIG --repair"}, messages
    # The plain rerun the old advice pointed at does not repair anything:
    capsys.readouterr()
    assert main(["extract", str(config), "--no-progress"]) == 0
    assert "skipped 3 complete" in capsys.readouterr().out and validate_store(store)

    out = run_printed(commands[0], config, capsys)
    assert "repaired 2 damaged checkpoint(s): a/epoch_0000, b/epoch_0000" in out
    assert validate_store(store) == []
    assert_same_store(store, experiment / "ref.zarr")
    assert (untouched.stat().st_mtime_ns, untouched.stat().st_ino) == before  # exactly the damaged ones
    assert lock_files(tmp_path) == []


def test_hdf5_corrupt_chunk_and_deleted_array_are_repaired(experiment, tmp_path, capsys):
    config = write_experiment(experiment, str(tmp_path / "store.h5"))
    store = tmp_path / "store.h5"
    shutil.copyfile(experiment / "ref.h5", store)
    with h5py.File(store, "r+") as f:
        info = f["runs/a/checkpoints/epoch_0001/layers/relu1/features"].id.get_chunk_info(1)
        del f["runs/b/checkpoints/epoch_0000/outputs/logits"]
    with open(store, "r+b") as fh:  # garbage over one compressed chunk
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)

    messages = what_the_user_sees(store, [("a", "epoch_0001", "relu1"), ("b", "epoch_0000", "outputs")], capsys)
    commands = suggested_commands(messages)
    assert commands and set(commands) == {"probestore extract CONFIG --repair"}, messages

    out = run_printed(commands[0], config, capsys)
    assert "repaired 2 damaged checkpoint(s): a/epoch_0001, b/epoch_0000" in out
    assert validate_store(store) == []
    assert_same_store(store, experiment / "ref.h5")
    assert lock_files(tmp_path) == []


def test_damage_outside_checkpoints_names_a_working_re_creation(experiment, tmp_path, capsys):
    config = write_experiment(experiment, str(tmp_path / "store.zarr"))
    store = tmp_path / "store.zarr"
    shutil.copytree(experiment / "ref.zarr", store)
    (store / "samples" / "label" / "zarr.json").write_text("{ garbled")
    with pytest.raises(ProbestoreError) as info:
        open_store(store).labels()
    commands = suggested_commands([str(info.value)])
    assert commands == ["probestore extract CONFIG --overwrite"], str(info.value)
    run_printed(commands[0], config, capsys)
    assert validate_store(store) == []
    assert_same_store(store, experiment / "ref.zarr")


def test_repair_and_overwrite_exclude_each_other(experiment, capsys):
    config = write_experiment(experiment, "ref.zarr")
    assert main(["extract", str(config), "--repair", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exclude each other" in err
