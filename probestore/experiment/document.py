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
from probestore.fields import check_keys, check_range, check_type
from probestore.paths import expand_path

__all__ = ["TABLES", "STORE_SUFFIXES", "ExperimentTable", "read_document", "apply_overrides",
           "parse_experiment_table", "read_experiment_table", "read_analysis"]

TABLES = ("experiment", "dataset", "splits", "model", "training", "runs", "extract", "concepts",
          "analysis")
STORE_SUFFIXES = (".zarr", ".h5", ".hdf5")
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


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Put CLI options into the TOML tables they override (None = not given).

    Recognised keys: ``store``, ``device`` (extract and training), ``batch_size``,
    ``layers`` (list), ``num_workers`` (extract and training), ``amp``, ``compression``.
    """
    out = copy.deepcopy(dict(data))
    for key, value in (overrides or {}).items():
        if key not in _OVERRIDES:
            raise ConfigError(f"unknown override {key!r}", where="command line",
                              expected=sorted(_OVERRIDES), fix=did_you_mean(key, _OVERRIDES) or None)
        if value is None:
            continue
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
    without the locations); ``store`` and ``checkpoints_dir`` are expanded.
    """

    name: str
    store: Path
    checkpoints_dir: Path
    seed: int
    written: dict[str, Any]


def parse_experiment_table(table: Any, where: str) -> ExperimentTable:
    """Validate ``[experiment]`` (``where`` names it in messages, e.g. ``"exp.toml [experiment]"``)."""
    exp = dict(check_keys(table, ("name", "store", "checkpoints_dir", "seed"), where=where,
                          required=("name", "store")))
    check_type(exp["name"], str, where=f"{where}.name")
    check_type(exp["store"], str, where=f"{where}.store")
    seed = exp.setdefault("seed", 0)
    check_type(seed, int, where=f"{where}.seed")
    check_range(seed, low=0, where=f"{where}.seed")
    store = expand_path(exp["store"], where=f"{where}.store")
    if store.suffix.lower() not in STORE_SUFFIXES:
        raise ConfigError("unknown store format", where=f"{where}.store", expected="a path ending in "
                          ".zarr, .h5 or .hdf5", got=exp["store"], fix=f"use {exp['store']}.zarr")
    ckdir = exp.setdefault("checkpoints_dir", str(store.with_suffix("")) + "-checkpoints")
    check_type(ckdir, str, where=f"{where}.checkpoints_dir")
    return ExperimentTable(exp["name"], store, expand_path(ckdir, where=f"{where}.checkpoints_dir"), seed, exp)


def read_experiment_table(path: str | os.PathLike[str]) -> ExperimentTable:
    """Only the ``[experiment]`` table of a file (its store and checkpoint folder, expanded).

    For drivers that need to know where a file's store goes without parsing (and
    finding the data of) the whole experiment, e.g. ``experiments/demo.py``.
    """
    doc = read_document(path)
    check_keys(doc, TABLES, where=str(path), required=("experiment",))
    return parse_experiment_table(doc["experiment"], f"{path} [experiment]")


def read_analysis(path: str | os.PathLike[str]) -> tuple[Mapping[str, Any], Path | None]:
    """The ``[analysis]`` table of a file and its ``[experiment]`` store (expanded), if any.

    The file is an experiment TOML or a TOML holding only an ``[analysis]`` table; only
    these two tables are read (the dataset need not exist on this machine).

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
        store = parse_experiment_table(doc["experiment"], f"{path} [experiment]").store
    table = check_type(doc.get("analysis", {}), dict, where=f"{path} [analysis]")
    return table, store
