"""``[extract]``: which layers are stored, how each is reduced, and how the work runs.

The reductions are checked with the schema's grammar
(:func:`storage_schema.reductions.parse_reduction`), so a typo in ``reduction =
"random:1k"`` is reported here, before any network is built, and without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from probestore.errors import ConfigError, did_you_mean
from probestore.experiment.training import AMP_MODES, DEVICES
from probestore.fields import check_keys, check_range, check_type
from probestore.selectors import matches
from storage_schema.backends import COMPRESSIONS
from storage_schema.layout import MIN_CHUNK_ROWS
from storage_schema.reductions import parse_reduction

__all__ = ["INPUT_LAYER", "DTYPES", "ExtractOptions", "parse_extract"]

#: The pseudo-layer of the network input (its "auto" keeps every pixel when they fit).
INPUT_LAYER = "input"
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractOptions:
    """The ``[extract]`` table (see :mod:`probestore.experiment`)."""

    layers: tuple[str, ...]
    reduction: str = "auto"
    reductions: dict[str, str] = field(default_factory=dict)
    reduction_seed: int = 0
    dtype: str = "float32"
    batch_size: int = 256
    device: str = "auto"
    amp: str = "none"
    num_workers: int = 0
    max_flatten_features: int = 65536
    chunk_rows: int | None = None
    gradients: bool = False
    compression: str = "fast"

    def reduction_for(self, layer: str) -> str:
        """The reduction spec of ``layer``: exact override, else first matching glob, else default."""
        if layer in self.reductions:
            return self.reductions[layer]
        for pattern, spec in self.reductions.items():
            if matches(layer, pattern):
                return spec
        return self.reduction


def parse_extract(table: Any, seed: int, where: str, raw: dict[str, Any]) -> ExtractOptions:
    """``[extract]`` with defaults; ``raw["extract"]`` gets the hashed form."""
    names = [f.name for f in dataclasses.fields(ExtractOptions)]
    d = dict(check_keys(table, names, where=where, required=("layers",)))
    layers = _layers(d["layers"], where)
    d["layers"] = layers
    d.setdefault("reduction", "auto")
    parse_reduction(check_type(d["reduction"], str, where=f"{where}.reduction"))
    reductions = dict(check_type(d.get("reductions", {}), dict, where=f"{where}.reductions"))
    for key, spec in reductions.items():
        parse_reduction(check_type(spec, str, where=f"{where}.reductions.{key}"))
    d["reductions"] = reductions
    d.setdefault("reduction_seed", seed)
    _numbers_and_choices(d, seed, where)
    chunk = _chunk_rows(d, where)
    # Only written into the hashed content when on: stores extracted before the option
    # existed keep their config hash.
    gradients = check_type(d.pop("gradients", False), bool, where=f"{where}.gradients")
    if gradients:
        d["gradients"] = True
    raw["extract"] = d
    return ExtractOptions(
        layers=tuple(layers), reduction=d["reduction"], reductions=reductions,
        reduction_seed=d["reduction_seed"], dtype=d["dtype"], batch_size=d["batch_size"],
        device=d["device"], amp=d["amp"], num_workers=d["num_workers"],
        max_flatten_features=d["max_flatten_features"],
        chunk_rows=chunk, gradients=gradients, compression=d["compression"])


def _layers(layers: Any, where: str) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    check_type(layers, list, where=f"{where}.layers")
    if not layers or not all(isinstance(x, str) and x for x in layers):
        raise ConfigError("layers must be a non-empty list of names or globs", where=f"{where}.layers",
                          got=repr(layers), fix='e.g. layers = ["input", "relu*"]; '
                                                '`probestore layers CONFIG` lists the names')
    return layers


def _numbers_and_choices(d: dict[str, Any], seed: int, where: str) -> None:
    """Integer settings (with their lower bounds) and the settings chosen from a list."""
    int_fields: tuple[tuple[str, int, int], ...] = (
        ("reduction_seed", seed, 0), ("batch_size", 256, 1), ("num_workers", 0, 0),
        ("max_flatten_features", 65536, 1))
    for key, number, low in int_fields:
        d.setdefault(key, number)
        check_type(d[key], int, where=f"{where}.{key}")
        check_range(d[key], low=low, where=f"{where}.{key}")
    str_fields: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        ("dtype", "float32", DTYPES), ("device", "auto", DEVICES), ("amp", "none", AMP_MODES),
        ("compression", "fast", COMPRESSIONS))
    for key, text, choices in str_fields:
        d.setdefault(key, text)
        check_type(d[key], str, where=f"{where}.{key}")
        if d[key] not in choices:
            raise ConfigError("unknown value", where=f"{where}.{key}",
                              expected="one of " + ", ".join(map(repr, choices)), got=repr(d[key]),
                              fix=did_you_mean(d[key], choices) or None)


def _chunk_rows(d: dict[str, Any], where: str) -> int | None:
    """Rows per stored chunk (None: ``"auto"``, sized by the writer)."""
    chunk = d.setdefault("chunk_rows", "auto")
    if chunk == "auto":
        return None
    check_type(chunk, int, where=f"{where}.chunk_rows")
    # SCHEMA.md §7: chunks hold at least 64 rows (a chunk per few rows would mean a
    # file and a metadata update per few samples: slow to write and to read back).
    if chunk < MIN_CHUNK_ROWS:
        raise ConfigError("chunk_rows too small", where=f"{where}.chunk_rows",
                          expected=f'"auto" or an integer >= {MIN_CHUNK_ROWS} (SCHEMA.md §7)', got=chunk,
                          fix=f'use chunk_rows = "auto" (about 4 MiB per chunk) or >= {MIN_CHUNK_ROWS}')
    return chunk
