"""``[extract]``: which layers are stored, how each is reduced, and how the work runs.

The reductions are checked with the schema's grammar
(:func:`storage_schema.reductions.parse_reduction`), so a typo in ``reduction =
"random:1k"`` is reported here, before any network is built, and without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probestore.errors import ConfigError, did_you_mean
from probestore.experiment.keys import Key, KeyTable
from probestore.experiment.keys import choices as one_of
from probestore.experiment.training import AMP_MODES, DEVICES
from probestore.fields import check_keys, check_range, check_type
from probestore.selectors import matches
from storage_schema.backends import COMPRESSIONS
from storage_schema.layout import MIN_CHUNK_ROWS
from storage_schema.reductions import NEEDS_K, SPEC_KINDS, check_row_units, parse_reduction

__all__ = ["INPUT_LAYER", "DTYPES", "EXTRACT_KEYS", "VIEW_SEPARATOR", "ExtractOptions", "parse_extract",
           "split_view"]

#: The pseudo-layer of the network input (its "auto" keeps every pixel when they fit).
INPUT_LAYER = "input"
#: ``LAYER=REDUCTION`` in ``[extract] layers`` stores that layer under that reduction, as its
#: own block named ``LAYER=REDUCTION``: one module seen two ways (a vision transformer block
#: as ``blocks.3=cls`` and ``blocks.3=mean``).
VIEW_SEPARATOR = "="


def split_view(name: str) -> tuple[str, str | None]:
    """``"blocks.3=cls"`` -> ``("blocks.3", "cls")``; a plain name -> ``(name, None)``."""
    layer, sep, spec = name.partition(VIEW_SEPARATOR)
    return (layer, spec) if sep else (name, None)
DTYPES = ("float32", "float16")
_REDUCTIONS = " | ".join(f"{k}:K" if k in NEEDS_K else k for k in SPEC_KINDS)

#: ``[extract]``: one key per :class:`ExtractOptions` field (see :mod:`probestore.experiment.keys`).
EXTRACT_KEYS = KeyTable("[extract]", "Which layers `probestore extract` stores, how each is reduced on the "
                        "device, and how the work runs.", {
    "layers": Key("list of strings", "Layers to store: names or globs (`*` also crosses dots), in the "
                  "network's order; `input` is the network input; a module called twice per forward pass "
                  "only per call (`layer4.1.relu#1`). `LAYER=REDUCTION` stores a layer under its own reduction, "
                  "as a block of that name, so one module can be stored two ways (`blocks.?=cls`, "
                  "`blocks.?=mean`). `probestore layers CONFIG` lists them; `--layers` "
                  "overrides.", example='["input", "relu*"]'),
    "reduction": Key("string", "How every layer's activation becomes a feature vector: 2D average / max "
                     "pooling, all values, a fixed random subset of K, a random projection to K, sequence "
                     "reductions for token models; `auto`: `gap` for a C,H,W output, `flatten` for a flat one "
                     "(the input: every pixel when they fit).", default='"auto"',
                     allowed=_REDUCTIONS, example='"random:1000"'),
    "reductions": Key("table", "Per-layer overrides of `reduction`: layer name or glob = reduction (an exact "
                      "name wins over globs, then the first matching glob).", default="{}",
                      example='{ conv1 = "random:1000", "layer*" = "gap" }'),
    "reduction_seed": Key("integer", "Seed of the random subsets and projections (shared by every run of "
                          "one architecture).", default="the [experiment] seed", allowed=">= 0", example="0"),
    "dtype": Key("string", "Stored feature type.", default='"float32"', allowed=one_of(DTYPES),
                 example='"float16"'),
    "batch_size": Key("integer", "Samples per forward pass (changes the floats slightly: hashed). "
                      "`--batch-size` overrides it.", default="256", allowed=">= 1", example="64"),
    "device": Key("string", "Where the forward pass runs; `auto` takes the GPU when there is one. "
                  "`--device` overrides it.", default='"auto"', allowed=one_of(DEVICES), example='"cuda"',
                  hashed=False),
    "amp": Key("string", "Mixed-precision autocast of the forward pass. `--amp` overrides it.",
               default='"none"', allowed=one_of(AMP_MODES), example='"bf16"'),
    "num_workers": Key("integer", "DataLoader worker processes. `--num-workers` overrides it.", default="0",
                       allowed=">= 0", example="8", hashed=False),
    "max_flatten_features": Key("integer", "Largest layer `flatten` may store whole: a larger one is refused "
                                "(use `random:K`, `project:K` or `gap`), so a typo cannot fill the disk.",
                                default="65536", allowed=">= 1", example="100000"),
    "chunk_rows": Key('integer or "auto"', "Rows per stored chunk: the resume granularity after a kill.",
                      default='"auto" (about 4 MiB per chunk)', allowed=f'"auto" or >= {MIN_CHUNK_ROWS}',
                      example="512", hashed=False),
    "gradients": Key("boolean", "Also store reduced gradients of the own-class logit, for `probestore tcav`.",
                     default="false", example="true"),
    "compression": Key("string", "Chunk compression: fast (lz4 / lzf), small (zstd / gzip, smaller and "
                       "slower to write) or none; readers never need to know. `--compression` overrides it.",
                       default='"fast"', allowed=one_of(COMPRESSIONS), example='"small"', hashed=False),
})


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
        """The reduction spec of ``layer``: its own (``LAYER=REDUCTION``), else exact override,
        else first matching glob, else default."""
        view = split_view(layer)[1]
        if view is not None:
            return view
        if layer in self.reductions:
            return self.reductions[layer]
        for pattern, spec in self.reductions.items():
            if matches(layer, pattern):
                return spec
        return self.reduction


def parse_extract(table: Any, seed: int, where: str, raw: dict[str, Any]) -> ExtractOptions:
    """``[extract]`` with defaults; ``raw["extract"]`` gets the hashed form."""
    d = dict(check_keys(table, EXTRACT_KEYS, where=where, required=EXTRACT_KEYS.required))
    layers = _layers(d["layers"], where)
    d["layers"] = layers
    d.setdefault("reduction", "auto")
    parse_reduction(check_type(d["reduction"], str, where=f"{where}.reduction"))
    reductions = dict(check_type(d.get("reductions", {}), dict, where=f"{where}.reductions"))
    for key, spec in reductions.items():
        parse_reduction(check_type(spec, str, where=f"{where}.reductions.{key}"))
    views = {f"layers.{layer}": view for layer in layers if (view := split_view(layer)[1]) is not None}
    for key, view in views.items():
        if not view or not split_view(key)[0][len("layers."):]:
            raise ConfigError("LAYER=REDUCTION needs both parts", where=f"{where}.{key}",
                              expected='e.g. "blocks.?=cls"', got=repr(key[len("layers."):]))
        try:
            parse_reduction(view)
        except ConfigError as exc:
            raise ConfigError(exc.what, where=f"{where}.{key}", expected=exc.expected, got=exc.got,
                              fix=exc.fix) from None
    # One row unit per store (sequences or tokens): a mix is refused before anything runs.
    # The default reduction counts unless every layer names its own.
    default = {} if len(views) == len(layers) else {"reduction": d["reduction"]}
    check_row_units({**default, **{f"reductions.{k}": v for k, v in reductions.items()}, **views}, where=where)
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
