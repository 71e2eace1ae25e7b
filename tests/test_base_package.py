"""The neutral base package: one atomic write, one lock, one selector, one path expansion, the CLI.

Each piece replaces several copies that behaved differently (issue 13), so the tests
check the guarantees every former copy relied on, and that every command now behaves
the same (the selector's error through three commands' real CLI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from probestore import atomic
from probestore.atomic import atomic_path, atomic_write, temp_name_pattern
from probestore.errors import ConfigError, NotFoundError
from probestore.locking import try_file_lock
from probestore.paths import expand_path, unset_variables
from probestore.selectors import NoMatchError, check_matched, matches, select

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- atomic writes


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_content_of_every_kind(tmp_path):
    assert atomic_write(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"streamed"))
    assert (tmp_path / "c.bin").read_bytes() == b"streamed"
    atomic_write(tmp_path / "a.txt", "replaced")  # over an existing file
    assert (tmp_path / "a.txt").read_text() == "replaced"
    with atomic_path(tmp_path / "d.csv") as tmp:  # a library that writes to a path itself
        assert tmp.parent == tmp_path and tmp.exists() and tmp.name != "d.csv"
        tmp.write_text("x,y\n")
    assert (tmp_path / "d.csv").read_text() == "x,y\n"
    assert _temps(tmp_path) == []


def test_mode_follows_the_umask_or_is_explicit(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", "x")
        with atomic_path(tmp_path / "b") as tmp:
            tmp.write_text("y")
    finally:
        os.umask(old)
    # what any new file gets (0666 & ~027), not mkstemp's 0600
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o640
    atomic_write(tmp_path / "c", "z", mode=0o600)
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o600


def test_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.parquet"
    target.write_text("old")

    def half_then_fail(f):
        f.write(b"half of a new ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert _temps(tmp_path) == []


def test_temporary_names_are_unique_under_concurrency(tmp_path, monkeypatch):
    target = tmp_path / "t.txt"
    seen: list[str] = []
    barrier = threading.Barrier(8)
    real = atomic._create_temp

    def record(path, mode):
        tmp = real(path, mode)
        seen.append(tmp.name)
        return tmp

    monkeypatch.setattr(atomic, "_create_temp", record)

    def writer(i):
        def body(f):
            barrier.wait(timeout=10)  # all eight temporaries exist at once
            f.write(f"writer {i}\n".encode() * 1000)
        atomic_write(target, body)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 8
    assert all(re.fullmatch(r"\.t\.txt\.[0-9a-f]+\.tmp", n) for n in seen)
    assert all(Path(tmp_path / n).match(temp_name_pattern(target)) for n in seen)
    # the survivor is one writer's whole content, never an interleaving
    lines = set(target.read_text().splitlines())
    assert len(lines) == 1 and lines.pop().startswith("writer ")
    assert _temps(tmp_path) == []


def test_durable_syncs_file_and_folder_and_not_durable_does_not(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def counting(fd):
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    atomic_write(tmp_path / "a", "x")
    assert synced == ["file", "dir"]
    synced.clear()
    atomic_write(tmp_path / "b", "x", durable=False)
    assert synced == []


# --------------------------------------------------------------------------- the lock


def test_try_file_lock_refuses_a_second_holder_process(tmp_path):
    lock_path = tmp_path / "res.parquet.lock"
    held = try_file_lock(lock_path)
    assert held is not None and lock_path.exists()
    code = ("import sys\nfrom probestore.locking import try_file_lock\n"
            f"print(try_file_lock({str(lock_path)!r}) is None)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert other.stdout.strip() == "True", other.stderr
    held.release()
    held.release()  # idempotent
    assert not lock_path.exists()  # the last holder removes the file
    with try_file_lock(lock_path) as again:
        assert again is not None and again.held
    assert not lock_path.exists()


# --------------------------------------------------------------------------- paths


def test_expand_path_home_vars_base_and_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("PROBESTORE_T_DATA", str(tmp_path))
    monkeypatch.delenv("PROBESTORE_T_UNSET", raising=False)
    assert expand_path("$PROBESTORE_T_DATA/x.zarr", where="w") == tmp_path / "x.zarr"
    assert expand_path("${PROBESTORE_T_DATA}/x.zarr", where="w") == tmp_path / "x.zarr"
    assert expand_path("~/x", where="w") == Path.home() / "x"
    assert expand_path("rel/x", where="w", base=tmp_path) == tmp_path / "rel" / "x"
    assert expand_path("/abs/x", where="w", base=tmp_path) == Path("/abs/x")
    assert unset_variables("$PROBESTORE_T_UNSET/$PROBESTORE_T_DATA") == ["PROBESTORE_T_UNSET"]
    with pytest.raises(ConfigError, match=r"\$PROBESTORE_T_UNSET not set; in exp.toml \[experiment\].store.*"
                                          r"fix: export PROBESTORE_T_UNSET="):
        expand_path("$PROBESTORE_T_UNSET/x.zarr", where="exp.toml [experiment].store")


def test_store_with_a_variable_works_for_analyze_config(monkeypatch, tmp_path):
    """``store = "$DATA/x.zarr"`` means the same to ``analyze --config`` as to ``extract``."""
    from analyze.config import load_config

    monkeypatch.setenv("PROBESTORE_T_DATA", str(tmp_path))
    toml = tmp_path / "a.toml"
    toml.write_text('[experiment]\nname = "x"\nstore = "$PROBESTORE_T_DATA/x.zarr"\n'
                    '[analysis]\nresults = "~/r.parquet"\n')
    config, store = load_config(toml)
    assert store == str(tmp_path / "x.zarr")
    assert config.results == str(Path.home() / "r.parquet")
    monkeypatch.delenv("PROBESTORE_T_DATA")
    with pytest.raises(ConfigError, match=r"PROBESTORE_T_DATA not set; in .*a.toml \[experiment\].store"):
        load_config(toml)


# --------------------------------------------------------------------------- selectors


def test_select_keeps_candidate_order_and_takes_exact_names_and_globs():
    names = ["input", "conv1", "relu1", "conv2", "relu2", "fc"]
    assert select(names, ["fc", "relu*"], what="layer", where="w") == ["relu1", "relu2", "fc"]
    assert select(names, "conv?", what="layer", where="w") == ["conv1", "conv2"]
    assert select(names, ["relu1", "relu[12]"], what="layer", where="w") == ["relu1", "relu2"]  # once each
    assert select(names, None, what="layer", where="w") == names
    assert select(["a[1]", "a1"], ["a[1]"], what="layer", where="w") == ["a[1]", "a1"]  # exact wins, glob too
    assert matches("layer4.1.relu", "layer*.relu") and not matches("Relu1", "relu*")  # crosses dots; case-sensitive
    assert select(names, ["nope"], what="layer", where="w", must_match=False) == []


def test_select_error_names_the_closest_and_the_known_names():
    names = ["noisy", "clean"]
    with pytest.raises(NoMatchError) as info:
        select(names, ["clean", "noisey"], what="run", where="analyze --runs", hint="see `probestore inspect S`")
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, NotFoundError)
    assert str(err) == ("no run matches 'noisey'; in analyze --runs; expected one of 'noisy', 'clean', or a glob; "
                        "got 'noisey'; fix: did you mean 'noisy'?; see `probestore inspect S`")
    many = [f"layer{i}" for i in range(30)]
    with pytest.raises(NoMatchError, match=r"'layer19' \(and 10 more\)"):
        select(many, "fc*", what="layer", where="w")
    with pytest.raises(NoMatchError, match=r"no checkpoint matches 'e9'.*expected one of 'e1', 'e2'"):
        check_matched(["e*", "e9"], ["e1"], ["e2", "e1"], what="checkpoint", where="w")


_ERROR = re.compile(r"probestore (\w+): error: no layer matches 'nope'; in \w+ of (\S+) \(--layers\); "
                    r"expected one of '[^']+'(, '[^']+')*, or a glob; got 'nope'; "
                    r"fix: `probestore inspect (\S+)` lists the layers\n")


def test_every_command_selects_layers_the_same_way(tmp_path, capsys):
    """analyze, similarity and tcav refuse an unknown layer with one error shape."""
    from probestore.cli import main
    from tests.helpers.stores import make_store
    from tests.helpers.tcav import planted_store

    store = str(make_store(tmp_path / "s.zarr", n=60, runs=(("clean", 0.0),), epochs=(0,)))
    planted, _ = planted_store(tmp_path / "t.zarr")
    planted.close()
    commands = {
        "analyze": ["analyze", store, "--dry-run", "--layers", "nope", "--workers", "0"],
        "similarity": ["similarity", store, "-o", str(tmp_path / "c.parquet"), "--layers", "nope",
                       "--workers", "0"],
        "tcav": ["tcav", str(tmp_path / "t.zarr"), "--layers", "nope", "--workers", "0", "--repeats", "2"],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        match = _ERROR.fullmatch(err)
        assert match, (name, err)
        assert match.group(1) == name and match.group(2) == match.group(4) == argv[1]
        # the suggested fix works: it lists the layers
        assert main(["inspect", argv[1]]) == 0
        assert re.search(r"\bfc\b|\bl1\b", capsys.readouterr().out)
    # and the same globs select the same layers everywhere
    assert main(["analyze", store, "--dry-run", "--layers", "l[12]", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "l1" in out and "l2" in out and " l3 " not in out


# --------------------------------------------------------------------------- the command line


def test_python_m_probestore_and_the_deprecated_forwarder():
    new = subprocess.run([sys.executable, "-m", "probestore", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert new.returncode == 0 and "usage: probestore" in new.stdout and new.stderr == ""
    old = subprocess.run([sys.executable, "-m", "storage_schema", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert old.returncode == 0 and old.stdout == new.stdout
    assert old.stderr == "python -m storage_schema is deprecated; use python -m probestore\n"


def test_base_modules_import_nothing_of_the_project():
    """probestore's base imports no stage (so every stage may import it without a cycle)."""
    base = ["errors", "fields", "paths", "atomic", "locking", "selectors"]
    code = ("import sys\n" + "".join(f"import probestore.{m}\n" for m in base)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('storage_schema', 'extract', 'analyze', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
