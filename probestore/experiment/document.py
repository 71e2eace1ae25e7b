"""The experiment file as a document: reading it, command-line overrides, ``[experiment]``.

Every command that takes an experiment file reads it here, so that a missing file, a
TOML syntax error and ``store = "$DATA/x.zarr"`` behave the same for ``probestore
train``, ``extract`` and ``analyze --config``. This module needs nothing of the stages:
``probestore analyze`` on a machine without the dataset (or torch) reads the
``[analysis]`` table and the store path with :func:`read_analysis` and never touches the
other tables.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probestore.errors import ConfigError, did_you_mean
from probestore.experiment.keys import Key, KeyTable
from probestore.fields import check_keys, check_range, check_type
from probestore.paths import expand_path

__all__ = ["TABLES", "STORE_SUFFIXES", "EXPERIMENT_KEYS", "ExperimentTable", "read_document", "apply_overrides",
           "file_base", "parse_experiment_table", "read_experiment_table", "read_analysis"]

TABLES = ("experiment", "dataset", "splits", "model", "training", "runs", "extract", "concepts",
          "analysis")
STORE_SUFFIXES = (".zarr", ".h5", ".hdf5")

#: ``[experiment]`` (see :mod:`probestore.experiment.keys` to add a key).
EXPERIMENT_KEYS = KeyTable("[experiment]", "The experiment's name, where its store and checkpoints go, and the "
                           "seed every other table defaults to.", {
    "name": Key("string", "Name of the experiment, recorded in the store.", example='"mnist-mlp-memorization"'),
    "store": Key("string (path)", "The store the features are written to; the suffix picks the format "
                 "(Zarr folder or HDF5 file). `--store` overrides it (relative to the current directory).",
                 allowed="ends in .zarr, .h5 or .hdf5", example='"../demo-output/mnist_mlp.zarr"',
                 hashed=False, path=True),
    "checkpoints_dir": Key("string (path)", "Where `probestore train` writes each run's checkpoints "
                           "(one folder per run, with a manifest).",
                           default="the store path without its suffix, plus `-checkpoints`",
                           example='"../demo-output/checkpoints/mnist_mlp"', hashed=False, path=True),
    "seed": Key("integer", "Default seed of every other table (subsample, splits, label corruption, initial "
                "weights, reductions, concept sets).", default="0", allowed=">= 0", example="3"),
})
#: CLI option -> the (table, key) places it overrides.
_OVERRIDES = {
    "store": [("experiment", "store")],
    "device": [("extract", "device"), ("training", "device")],
    "batch_size": [("extract", "batch_size")],
    "layers": [("extract", "layers")],
    "num_workers": [("extract", "num_workers"), ("training", "num_workers")],
    "amp": [("extract", "amp")],
    "compression": [("extract", "compression")],
}


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML document at ``path`` (ConfigError, one line, when unreadable or not TOML)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read the experiment file", where=str(p), got=str(exc),
                          fix="check the path") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("not valid TOML", where=str(p), got=str(exc),
                          fix="fix the syntax (https://toml.io)") from None


def file_base(path: str | os.PathLike[str]) -> Path:
    """The folder the relative paths of the experiment file at ``path`` are relative to: its own.

    Every build tool resolves a file's paths against the file (a Makefile, a
    pyproject.toml), so an experiment file means the same whatever the current directory.
    """
    return Path(path).parent


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Put CLI options into the TOML tables they override (None = not given).

    Recognised keys: ``store``, ``device`` (extract and training), ``batch_size``,
    ``layers`` (list), ``num_workers`` (extract and training), ``amp``, ``compression``.
    A ``store`` given on the command line is relative to the current directory (as
    every command-line path is), so it is made absolute here, before the file's own
    folder would apply to it.
    """
    out = copy.deepcopy(dict(data))
    for key, value in (overrides or {}).items():
        if key not in _OVERRIDES:
            raise ConfigError(f"unknown override {key!r}", where="command line",
                              expected=sorted(_OVERRIDES), fix=did_you_mean(key, _OVERRIDES) or None)
        if value is None:
            continue
        if key == "store":
            value = str(expand_path(value, where="--store", base=Path.cwd()))
        for table, field_name in _OVERRIDES[key]:
            if table == "training" and "training" not in out:
                continue
            sub = out.setdefault(table, {})
            if not isinstance(sub, dict):
                continue  # reported by validation
            sub[field_name] = value
    return out


@dataclass(frozen=True)
class ExperimentTable:
    """``[experiment]``: the name, where the store and the checkpoints go, the default seed.

    ``written`` is the table with defaults filled in and paths as written (hashed
    without the locations); ``store`` and ``checkpoints_dir`` are expanded and relative
    to the experiment file's folder.
    """

    name: str
    store: Path
    checkpoints_dir: Path
    seed: int
    written: dict[str, Any]


def parse_experiment_table(table: Any, where: str, base: str | os.PathLike[str] | None = None) -> ExperimentTable:
    """Validate ``[experiment]`` (``where`` names it in messages, e.g. ``"exp.toml [experiment]"``).

    ``base``: the folder relative paths are relative to (:func:`file_base` of the file;
    None: the current directory, for configs that come from no file).
    """
    exp = dict(check_keys(table, EXPERIMENT_KEYS, where=where, required=EXPERIMENT_KEYS.required))
    check_type(exp["name"], str, where=f"{where}.name")
    check_type(exp["store"], str, where=f"{where}.store")
    seed = exp.setdefault("seed", 0)
    check_type(seed, int, where=f"{where}.seed")
    check_range(seed, low=0, where=f"{where}.seed")
    store = expand_path(exp["store"], where=f"{where}.store", base=base)
    if store.suffix.lower() not in STORE_SUFFIXES:
        raise ConfigError("unknown store format", where=f"{where}.store", expected="a path ending in "
                          ".zarr, .h5 or .hdf5", got=exp["store"], fix=f"use {exp['store']}.zarr")
    if "checkpoints_dir" in exp:
        check_type(exp["checkpoints_dir"], str, where=f"{where}.checkpoints_dir")
        ckdir = expand_path(exp["checkpoints_dir"], where=f"{where}.checkpoints_dir", base=base)
    else:  # beside the store, which is resolved already
        ckdir = Path(str(store.with_suffix("")) + "-checkpoints")
        exp["checkpoints_dir"] = str(ckdir)
    return ExperimentTable(exp["name"], store, ckdir, seed, exp)


def read_experiment_table(path: str | os.PathLike[str]) -> ExperimentTable:
    """Only the ``[experiment]`` table of a file (its store and checkpoint folder, expanded).

    For drivers that need to know where a file's store goes without parsing (and
    finding the data of) the whole experiment, e.g. ``experiments/demo.py``.
    """
    doc = read_document(path)
    check_keys(doc, TABLES, where=str(path), required=("experiment",))
    return parse_experiment_table(doc["experiment"], f"{path} [experiment]", file_base(path))


def read_analysis(path: str | os.PathLike[str]) -> tuple[Mapping[str, Any], Path | None]:
    """The ``[analysis]`` table of a file and its ``[experiment]`` store (expanded), if any.

    The file is an experiment TOML or a TOML holding only an ``[analysis]`` table; only
    these two tables are read (the dataset need not exist on this machine). The store
    and ``[analysis] results`` are relative to the file's folder, like every path of it.

    Raises
    ------
    ConfigError
        Unreadable file, neither table present (with a did-you-mean), an ``[experiment]``
        table that the other commands would refuse too, ``[analysis]`` not a table.
    """
    doc = read_document(path)
    if "analysis" not in doc and "experiment" not in doc:
        raise ConfigError(
            "no [analysis] table",
            where=str(path),
            expected="an [analysis] table (or an experiment TOML)",
            got="tables " + ", ".join(sorted(doc)) if doc else "an empty file",
            fix=did_you_mean(next(iter(doc), ""), ["analysis"]) or "add an [analysis] table",
        )
    store = None
    if "experiment" in doc:
        store = parse_experiment_table(doc["experiment"], f"{path} [experiment]", file_base(path)).store
    table = check_type(doc.get("analysis", {}), dict, where=f"{path} [analysis]")
    if isinstance(table.get("results"), str):
        results = expand_path(table["results"], where=f"{path} [analysis].results", base=file_base(path))
        table = {**table, "results": str(results)}
    return table, store
