"""One writer per checkpoint, no lock files left behind, one line where nothing can be written.

All with real processes and real permissions: a process that holds a checkpoint's
writer lock while ``probestore extract`` runs; two extractions of one store at once; an
extraction SIGKILLed while it holds a lock; extraction into a folder the user cannot
write (run as ``nobody`` when the tests run as root, since root ignores ``chmod``).
Before the writer lock, two extractions of one store both wrote the same checkpoints
and the loser died with advice to re-create the store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from probestore.cli import main
from probestore.locking import file_lock, writer_lock_path
from storage_schema.store import create_store, open_store
from storage_schema.validate import validate_store
from tests.conftest import MNIST_DIR, REPO, needs_data
from tests.helpers.experiments import CHECKPOINTS, lock_files, write_experiment

NOBODY = 65534


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "probestore", *args]


def _complete(path: Path) -> list[str]:
    store = open_store(path)
    return [f"{r}/{c.name}" for r in store.runs() for c in store.checkpoints(r)]


def _extracted(output: str) -> int:
    line = next(x for x in output.splitlines() if x.startswith("extracted "))
    return int(line.split()[1])


_HOLDER = """
import sys
from pathlib import Path
from probestore.locking import writer_lock
with writer_lock(Path(sys.argv[1]), what="test"):
    print("held", flush=True)
    sys.stdin.read()
"""


def _wait_for_lock_of(proc: subprocess.Popen, store: Path, timeout: float = 120) -> Path:
    """The writer lock file of ``store`` that ``proc`` holds, once it holds one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for path in store.parent.glob(f"{store.name}.writer-*.lock"):
            try:
                if path.read_text().startswith(f"{proc.pid} "):
                    return path
            except FileNotFoundError:
                pass
        time.sleep(0.005)
    raise AssertionError(f"process {proc.pid} never held a writer lock of {store}")


@needs_data(MNIST_DIR)
def test_a_second_extraction_does_the_free_checkpoints_then_waits_for_the_held_one(tmp_path, capsys):
    config = write_experiment(tmp_path, "store.zarr")
    store = tmp_path / "store.zarr"
    lock = writer_lock_path(store, "a", "epoch_0001")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    released = threading.Event()
    seen: list[str] = []  # what the extraction printed before the holder let go

    def release_once_it_waits() -> None:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "waiting for" not in "".join(seen):
                seen.append(capsys.readouterr().err)
                time.sleep(0.05)
            done = sorted(p.parents[2].name + "/" + p.parent.name for p in
                          store.glob("runs/*/checkpoints/*/zarr.json") if '"complete": true' in p.read_text())
            if done == ["a/epoch_0000", "b/epoch_0000"]:  # the free ones first, nothing else
                released.set()
        finally:
            holder.stdin.close()  # the holder finishes without writing anything

    try:
        assert holder.stdout.readline().strip() == "held"
        thread = threading.Thread(target=release_once_it_waits, daemon=True)
        thread.start()
        assert main(["extract", str(config), "--no-progress"]) == 0
        thread.join(timeout=30)
        out = capsys.readouterr()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    err = "".join(seen)
    assert released.is_set(), err  # it waited, after doing the two free checkpoints
    assert f"a/epoch_0001: checkpoint a/epoch_0001 is being written by process {holder.pid} on host " in err
    assert f"a/epoch_0001: waiting for process {holder.pid} on host " in err
    assert _extracted(out.out) == 3
    assert sorted(_complete(store)) == sorted(CHECKPOINTS)
    assert validate_store(store) == []
    assert lock_files(tmp_path) == []
    # --overwrite would delete a store that another process is writing: refused, one line.
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["extract", str(config), "--overwrite", "--no-progress"]) == 2
    finally:
        holder.kill()
        holder.wait(timeout=30)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"it is being written by process {holder.pid}" in err, err
    assert sorted(_complete(store)) == sorted(CHECKPOINTS)


@needs_data(MNIST_DIR)
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_two_extractions_of_one_store_at_once_write_each_checkpoint_once(tmp_path, suffix, capsys):
    """This process and a second ``probestore extract`` process fill one store together."""
    store = tmp_path / f"store{suffix}"
    config = write_experiment(tmp_path, store.name, n=1500)
    other = subprocess.Popen(_cli("extract", str(config), "--no-progress"), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock_of(other, store)  # it is writing its first checkpoint: start the second
        assert main(["extract", str(config), "--no-progress"]) == 0
        out, err = other.communicate(timeout=180)
    finally:
        if other.poll() is None:
            other.kill()
    assert other.returncode == 0, err
    mine = capsys.readouterr()
    assert _extracted(out) + _extracted(mine.out) == len(CHECKPOINTS), (out, mine.out)
    assert sorted(_complete(store)) == sorted(CHECKPOINTS)
    assert validate_store(store) == []
    assert lock_files(tmp_path) == []


@needs_data(MNIST_DIR)
def test_the_lock_of_a_sigkilled_extraction_is_taken_over(tmp_path, capsys):
    config = write_experiment(tmp_path, "store.zarr", n=2000)
    proc = subprocess.Popen(_cli("extract", str(config), "--no-progress"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        held = _wait_for_lock_of(proc, tmp_path / "store.zarr")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert held.exists()  # a killed writer cannot clean up: the lock file stays, unheld
    capsys.readouterr()
    assert main(["extract", str(config), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"taking over from process {proc.pid} on host " in err
    assert sorted(_complete(tmp_path / "store.zarr")) == sorted(CHECKPOINTS)
    assert validate_store(tmp_path / "store.zarr") == []
    assert lock_files(tmp_path) == []


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_reading_and_writing_a_store_leaves_no_lock_file(tmp_path, suffix, capsys):
    path = tmp_path / f"s{suffix}"
    n = 80
    store = create_store(path, dataset_name="t", sample_ids=[f"s{i}" for i in range(n)],
                         labels=np.arange(n) % 2, splits=np.arange(n) % 3, class_names=["a", "b"])
    store.add_run("r", model={"name": "m"}, architecture="m-1", train_labels=store.labels(),
                  corrupted=np.zeros(n, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("r", "c", epoch=0)
    for block, width in (("fc", 3), ("outputs", 2)):
        store.create_block("r", "c", block, n_features=width)
        store.write_rows("r", "c", block, 0, np.ones((n, width), "float32"))
        store.mark_block_complete("r", "c", block)
    store.mark_checkpoint_complete("r", "c")
    assert lock_files(tmp_path) == []
    assert main(["inspect", str(path)]) == 0
    assert main(["validate", str(path)]) == 0
    reader = open_store(path)
    assert reader.read_layer("r", "c", "fc").shape == (n, 3)
    assert float(reader.block_dask("r", "c", "fc").sum().compute()) == 3 * n  # what analyze reads
    assert lock_files(tmp_path) == []


def test_a_lock_file_is_removed_by_its_last_holder_only(tmp_path):
    lock = tmp_path / "x.lock"
    with file_lock(lock, exclusive=False):
        with file_lock(lock, exclusive=False):  # a second reader (another fd)
            assert lock.exists()
        assert lock.exists()  # the first reader still holds it
    assert not lock.exists()


def _usable_by_others(path: Path) -> bool:
    """Whether another user can run ``path`` (o+x on it and on every folder above it)."""
    path = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _interpreter_for_nobody() -> str | None:
    """This interpreter, or another one of the same version, that ``nobody`` may execute."""
    candidates = [Path(sys.executable)]
    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found:
            candidates.append(Path(found))
    for exe in candidates:
        if not _usable_by_others(exe):
            continue
        probe = subprocess.run([str(exe), "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return str(exe)
    return None


def _extract_as_another_user(root: Path, configs: list[Path]) -> tuple[list[int], list[str]]:
    """``probestore extract`` of each config by a user who cannot write the stores' folder.

    As root (CI) the process runs as ``nobody``: root ignores permission bits, so chmod
    alone would test nothing. It uses this environment's packages (``PYTHONPATH``), and
    an interpreter of the same version that ``nobody`` may execute.
    """
    kwargs: dict = {}
    exe = sys.executable
    if os.geteuid() == 0:
        found = _interpreter_for_nobody()
        if found is None:
            pytest.skip("running as root and no Python interpreter of this version is executable by "
                        "nobody: a read-only location cannot be simulated (root ignores chmod)")
        exe = found
        kwargs = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    import site

    if os.geteuid() == 0 and not all(_usable_by_others(Path(p)) for p in [REPO, *site.getsitepackages()]):
        pytest.skip(f"running as root without mount permission, and nobody cannot reach the checkout {REPO} "
                    "or its packages: a read-only location cannot be simulated")

    env = {**os.environ, "HOME": str(root), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()])}
    script = ("import sys\nfrom probestore.cli import main\n"
              "for config in sys.argv[1:]:\n"
              "    rc = main(['extract', config, '--no-progress'])\n"
              "    print(f'\\x00rc={rc}', file=sys.stderr, flush=True)\n")
    proc = subprocess.run([exe, "-c", script, *map(str, configs)], cwd=root, capture_output=True,
                          text=True, timeout=300, env=env, **kwargs)
    parts = proc.stderr.split("\x00rc=")
    rcs = [int(p.split()[0]) for p in parts[1:]]
    outputs = [parts[0]] + ["\n".join(p.splitlines()[1:]) for p in parts[1:-1]]
    assert proc.returncode == 0 and len(rcs) == len(configs), proc.stdout + proc.stderr
    return rcs, outputs


def _mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a small tmpfs at ``path`` (root only); False when mounting is not allowed here."""
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64m,{options}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def _assert_one_line_write_errors(configs: dict, outputs: list[str], reason: str) -> None:
    for store, output in zip(configs, outputs):
        lines = [x for x in output.splitlines() if x.strip() and not x.startswith("opened ")]
        assert "Traceback" not in output, output
        assert len(lines) == 1, output
        assert lines[0].startswith(f"probestore extract: error: cannot write the store ({reason}); "
                                   f"in {store}"), lines[0]
        assert "fix: make " in lines[0] and "writable" in lines[0], lines[0]


@needs_data(MNIST_DIR)
def test_extraction_where_nothing_can_be_written_is_one_line(tmp_path, capsys):
    """A read-only folder for a new store, and existing stores that cannot be written.

    As root, chmod stops nothing: the folders are read-only tmpfs mounts (the stores of
    ``rw`` are written first, then the mount is remounted read-only), which works
    wherever the checkout lives. Without mount permission the extraction runs as another
    user (:func:`_extract_as_another_user`).
    """
    if os.geteuid() != 0:
        return _extraction_as_another_user_is_one_line()
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    if not _mount_tmpfs(ro, "ro"):
        return _extraction_as_another_user_is_one_line()
    try:
        assert _mount_tmpfs(rw, "rw")
        configs = {ro / name: write_experiment(tmp_path, str(ro / name)) for name in ("new.zarr", "new.h5")}
        for name in ("old.zarr", "old.h5"):  # existing stores (run a only), then made read-only
            configs[rw / name] = write_experiment(tmp_path, str(rw / name))
            assert main(["extract", str(configs[rw / name]), "--runs", "a", "--no-progress"]) == 0
        assert lock_files(rw) == []
        remount = subprocess.run(["mount", "-o", "remount,ro", str(rw)], capture_output=True, text=True)
        assert remount.returncode == 0, remount.stderr
        capsys.readouterr()
        rcs, outputs = [], []
        for config in configs.values():
            rcs.append(main(["extract", str(config), "--no-progress"]))
            outputs.append(capsys.readouterr().err)
        assert rcs == [2, 2, 2, 2], outputs
        _assert_one_line_write_errors(configs, outputs, "Read-only file system")
        for name in ("old.zarr", "old.h5"):
            assert validate_store(rw / name) == [] and _complete(rw / name) == ["a/epoch_0000", "a/epoch_0001"]
        assert not (ro / "new.zarr").exists() and not (ro / "new.h5").exists()
        assert lock_files(ro) == [] and lock_files(rw) == []
    finally:
        for folder in (ro, rw):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _extraction_as_another_user_is_one_line() -> None:
    """The same checks with permission bits: as a user who may not write (root: as nobody)."""
    root = Path(tempfile.mkdtemp(prefix="probestore-ro-"))  # not under pytest's 0700 tmp root
    try:
        os.chmod(root, 0o755)
        ro, rw = root / "ro", root / "rw"  # a read-only folder; a writable one holding unwritable stores
        ro.mkdir()
        rw.mkdir()
        configs = {ro / name: write_experiment(root, str(ro / name)) for name in ("new.zarr", "new.h5")}
        for name in ("old.zarr", "old.h5"):  # existing stores (run a only), then made read-only
            configs[rw / name] = write_experiment(root, str(rw / name))
            assert main(["extract", str(configs[rw / name]), "--runs", "a", "--no-progress"]) == 0
        assert lock_files(rw) == []
        rw.chmod(0o777)
        if os.geteuid() != 0:
            for p in [ro, *rw.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
        rcs, outputs = _extract_as_another_user(root, list(configs.values()))
        assert rcs == [2, 2, 2, 2], outputs
        _assert_one_line_write_errors(configs, outputs, "Permission denied")
        for name in ("old.zarr", "old.h5"):
            assert validate_store(rw / name) == [] and _complete(rw / name) == ["a/epoch_0000", "a/epoch_0001"]
        assert not (ro / "new.zarr").exists() and not (ro / "new.h5").exists()
        assert lock_files(ro) == [] and lock_files(rw) == []
    finally:
        for p in [root, *root.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
