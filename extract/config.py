"""The experiment file: one TOML that says what to train, what to extract, and where.

The same file drives ``probestore layers``, ``probestore train`` and ``probestore
extract``, and its *content* (everything that changes a stored number) is written
into the store and hashed: a later run with a different file is refused instead of
mixing features of two experiments in one store. Everything is validated here, before
any data is read or any network is built, with the shared validators of
:mod:`storage_schema.validation` (unknown keys get a did-you-mean).

Shape of the file (every table but ``[experiment]``, ``[dataset]``, ``[model]`` and
``[extract].layers`` is optional)::

    [experiment]
    name = "mnist-mlp-memorization"
    store = "demo-output/mnist_mlp.zarr"        # .zarr (default) or .h5; relative to the CWD
    checkpoints_dir = "demo-output/checkpoints/mnist_mlp"   # training output, one folder per run
    seed = 0                                    # default seed of everything below

    [dataset]                                   # extract.datasets.DatasetSpec, plus path candidates
    kind = "idx"
    path = ["$PROBESTORE_DATA/fashion-mnist", "/usr/share/datasets/fashion-mnist"]
    max_samples = 6000

    [splits]                                    # fractions of extract.splits.assign_splits
    train = 0.7
    valid = 0.15
    test = 0.15
    predefined = false                          # true: keep the dataset's own train/test files

    [model]                                     # extract.models.ModelSpec without the data sizes
    name = "mlp"
    options = { depth = 4, width = 256 }

    [training]                                  # extract.train.TrainConfig
    epochs = 10
    save_epochs = [0, 1, 2, 4, 10]

    [[runs]]                                    # trained by `probestore train`
    name = "memorizing-0.5"
    corruption = 0.5                            # fraction of train labels corrupted
    mode = "shuffle"                            # or "uniform" (extract.corruption)
    training = { epochs = 20 }                  # optional per-run override of [training]
    [[runs]]                                    # imported: existing checkpoints, no training
    name = "imported"
    checkpoints = "path/to/manifest.json"       # or a folder of *.pt, or a glob

    [extract]
    layers = ["input", "relu*"]                 # names / globs; "input" = the network input
                                                # (its "auto" keeps every pixel when they fit);
                                                # a module run twice per forward (a ResNet
                                                # block's relu) only per call: "layer4.1.relu#1"
    reduction = "auto"                          # gap | gmp | flatten | random:K | project:K | auto
    reductions = { conv1 = "random:1000" }      # per-layer overrides (names or globs)
    reduction_seed = 0
    dtype = "float32"                           # or "float16" (stored features)
    batch_size = 256
    device = "auto"                             # auto | cpu | cuda
    amp = "none"                                # none | bf16 | fp16
    num_workers = 0                             # DataLoader worker processes
    max_flatten_features = 65536
    chunk_rows = "auto"                         # rows per stored chunk (resume granularity), >= 64
    compression = "fast"                        # fast (lz4/lzf) | small (zstd/gzip) | none

    [analysis]                                  # read by `probestore analyze`, ignored here

    [concepts]
    families = ["shape"]                        # colour, texture, shape (extract.concepts)
    preset = "graziani2019"                     # the authors' formulas (default), or
                                                # "probestore_v1" (docs/science.md §6); hashed
    csv = ["my_concepts.csv"]                   # user concepts: sample_id + one column each
    folders = { striped = "examples/striped" }  # binary concepts from example images
    n_jobs = 1
    # texture_levels = 32                       # GLCM grey levels, with "probestore_v1" only
    types = "auto"                              # sample types of the control task: k-means clusters of
                                                # the raw inputs, "auto" or a count (extract.sample_types)

Paths (``store``, ``checkpoints_dir``, ``dataset.path``, ``runs.checkpoints``,
``concepts.csv`` / ``folders``) expand ``~`` and environment variables and are relative
to the current directory. ``dataset.path`` may be a list of candidates: the first that
exists is used, and when none does the error lists every path tried (an unset variable
is named) and how to get the data. There is never a fallback to other data.

What is hashed: :meth:`ExperimentConfig.content` leaves out where things live and how
fast they run (``store``, ``checkpoints_dir``, ``device``, ``num_workers``,
``chunk_rows``, ``compression``, ``n_jobs``), and records ``dataset.path`` as written (the candidates),
so moving the data or the store, or resuming on another machine, is not a "different
experiment". ``batch_size`` and ``amp`` *are* hashed: they change the floats.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extract.datasets import DatasetSpec
from storage_schema.backends import COMPRESSIONS
from storage_schema.errors import ConfigError, DataError, did_you_mean
from storage_schema.layout import MIN_CHUNK_ROWS
from storage_schema.names import validate_name
from storage_schema.validation import check_keys, check_range, check_type

__all__ = [
    "ExperimentConfig",
    "RunSpec",
    "ExtractOptions",
    "ConceptOptions",
    "ConceptSetSpec",
    "load_config",
    "parse_config",
    "resolve_data_path",
    "apply_overrides",
]

TABLES = ("experiment", "dataset", "splits", "model", "training", "runs", "extract", "concepts",
          "analysis")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16", "fp16")
DTYPES = ("float32", "float16")
INPUT_LAYER = "input"
CONCEPT_FAMILY_NAMES = ("colour", "texture", "shape")
#: extract.concepts.presets.PRESETS, default first (kept here so parsing needs no scikit-image).
CONCEPT_PRESETS = ("graziani2019", "probestore_v1")
_ENV_RE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
#: keys that say where / how fast, not what: kept out of the config hash.
_RUNTIME_KEYS = {
    "experiment": ("store", "checkpoints_dir"),
    "extract": ("device", "num_workers", "chunk_rows", "compression"),
    "training": ("device", "num_workers"),
    "concepts": ("n_jobs",),
}


@dataclass(frozen=True)
class RunSpec:
    """One ``[[runs]]`` entry: a model variant to train, or existing checkpoints to import.

    Attributes
    ----------
    name : str
        Store-safe run name.
    corruption : float
        Fraction of training labels corrupted (0 = generalizing, 1 = fully memorizing).
    mode : str
        ``"shuffle"`` or ``"uniform"`` (see :mod:`extract.corruption`).
    seed : int
        Seed of the label corruption and of the model's initial weights.
    checkpoints : str or None
        Imported runs: manifest / folder / glob (resolved). None: trained by
        ``probestore train`` into ``checkpoints_dir/<name>``.
    training : dict
        Per-run overrides of ``[training]``.
    description : str
    """

    name: str
    corruption: float = 0.0
    mode: str = "shuffle"
    seed: int = 0
    checkpoints: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def trained(self) -> bool:
        """True when probestore trains this run (no ``checkpoints =``)."""
        return self.checkpoints is None


@dataclass(frozen=True)
class ExtractOptions:
    """The ``[extract]`` table (see the module docstring)."""

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
            if fnmatch.fnmatchcase(layer, pattern):
                return spec
        return self.reduction


@dataclass(frozen=True)
class ConceptOptions:
    """The ``[concepts]`` table: which concept targets the store gets."""

    families: tuple[str, ...] = ()
    csv: tuple[str, ...] = ()
    folders: dict[str, str] = field(default_factory=dict)
    n_jobs: int = 1
    texture_levels: int | None = None  # probestore_v1 only (32 when not given)
    sets: dict[str, ConceptSetSpec] = field(default_factory=dict)
    preset: str = CONCEPT_PRESETS[0]
    types: int | str = "auto"


@dataclass(frozen=True)
class ConceptSetSpec:
    """One ``[concepts.sets]`` entry: concept examples or a random counterexample set (TCAV).

    Attributes
    ----------
    name : str
    role : {"concept", "random"}
    folder : str or None
        A folder of images: copies of dataset images (matched by file name) become rows
        of the store, any other image goes through the network as an external example.
    random : int or None
        Size of a seeded random draw of the dataset's own train images (no folder).
    of_class : str or None
        Draw only among the train images of this class (concept examples taken from a
        class of the dataset, e.g. "banded" textures as a concept for "chequered").
    seed : int
        Seed of the draw (experiment seed by default; combined with the set name).
    """

    name: str
    role: str = "concept"
    folder: str | None = None
    random: int | None = None
    seed: int = 0
    of_class: str | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment file.

    Attributes
    ----------
    name : str
    store : pathlib.Path
    checkpoints_dir : pathlib.Path
    seed : int
    dataset : DatasetSpec
        With ``path`` resolved to the first existing candidate.
    splits : dict
        ``train``/``valid``/``test`` fractions and ``predefined``.
    model : dict
        ``name`` and ``options`` (the data sizes are added from the dataset).
    training : dict
        ``[training]`` as written, with ``seed`` defaulted; see :meth:`train_config`.
    runs : tuple of RunSpec
    extract : ExtractOptions
    concepts : ConceptOptions
    raw : dict
        The file after overrides and defaults, before path resolution; the source of
        :meth:`content`.
    analysis : dict
        The ``[analysis]`` table, untouched: it belongs to ``probestore analyze``
        (:mod:`analyze.config` validates it) and is not part of the hashed content.
    source : str
        Where the config came from (for messages).
    """

    name: str
    store: Path
    checkpoints_dir: Path
    seed: int
    dataset: DatasetSpec
    splits: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    runs: tuple[RunSpec, ...]
    extract: ExtractOptions
    concepts: ConceptOptions
    raw: dict[str, Any]
    source: str = "config"
    analysis: dict[str, Any] = field(default_factory=dict)

    def content(self) -> dict[str, Any]:
        """The JSON-able part of the config that determines stored numbers (hashed).

        Returns
        -------
        dict
            ``raw`` without the runtime keys (store and checkpoint locations, device,
            workers, chunking, concept jobs), with every default filled in.
        """
        out = copy.deepcopy(self.raw)
        for table, keys in _RUNTIME_KEYS.items():
            for key in keys:
                out.get(table, {}).pop(key, None)
        for run in out.get("runs", []):
            for key in _RUNTIME_KEYS["training"]:
                run.get("training", {}).pop(key, None)
        return out

    def run(self, name: str) -> RunSpec:
        """The run called ``name`` (ConfigError with did-you-mean otherwise)."""
        for r in self.runs:
            if r.name == name:
                return r
        names = [r.name for r in self.runs]
        raise ConfigError(f"unknown run {name!r}", where=f"{self.source} [[runs]]", expected=names,
                          got=repr(name), fix=did_you_mean(name, names) or "check --runs")

    def select_runs(self, names: Sequence[str] | None) -> list[RunSpec]:
        """Runs named in ``names`` (all when None), in config order."""
        if not names:
            return list(self.runs)
        wanted = {self.run(n).name for n in names}
        return [r for r in self.runs if r.name in wanted]

    def train_config(self, run: RunSpec):
        """The :class:`extract.train.TrainConfig` of ``run`` (``[training]`` + its overrides)."""
        from extract.train import TrainConfig

        table = {**self.training, **run.training}
        if "epochs" not in table:
            raise ConfigError("training needs epochs", where=f"{self.source} [training]",
                              fix="add [training] epochs = N (or per run: training = { epochs = N })")
        return TrainConfig.from_dict(table, where=f"{self.source} [training] (run {run.name!r})")

    def run_dir(self, run: RunSpec) -> Path:
        """Folder of a trained run's checkpoints and manifest."""
        return self.checkpoints_dir / run.name


# --------------------------------------------------------------------------- paths


def _expand(path: str) -> tuple[str, list[str]]:
    """Expand ``~`` and ``$VARS``; also return the names of unset variables."""
    unset = [a or b for a, b in _ENV_RE.findall(path) if (a or b) not in os.environ]
    return os.path.expanduser(os.path.expandvars(path)), unset


def _path(value: str) -> Path:
    return Path(_expand(value)[0])


def resolve_data_path(candidates: str | Sequence[str], *, where: str, kind: str = "") -> str:
    """The first existing path among ``candidates`` (``~`` and ``$VARS`` expanded).

    Parameters
    ----------
    candidates : str or sequence of str
        Tried in order; relative paths are relative to the current directory.
    where : str
        Config location for the error message.
    kind : str
        Dataset kind, for the hint on how to get the data.

    Returns
    -------
    str
        The expanded path that exists.

    Raises
    ------
    DataError
        None exists: every path tried is listed (with unset variables named), and the
        fix says how to get the data. There is no fallback to other data.
    """
    items = [candidates] if isinstance(candidates, str) else list(candidates)
    tried = []
    for raw in items:
        expanded, unset = _expand(raw)
        if unset:
            tried.append(f"{raw} ({', '.join(unset)} not set)")
            continue
        if Path(expanded).exists():
            return expanded
        tried.append(f"{expanded} (does not exist)" if expanded == raw
                     else f"{raw} -> {expanded} (does not exist)")
    joined = " ".join(items).lower()
    if "fashion-mnist" in joined or "fashion_mnist" in joined:
        fix = ("install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist` (puts it in "
               "/usr/share/datasets/fashion-mnist/), or copy its four IDX .gz files into a folder "
               "and set PROBESTORE_DATA to its parent")
    else:
        fix = ("put the data at one of these paths, set the environment variable they use, "
               "or edit [dataset] path" + (f" (a {kind} dataset)" if kind else ""))
    raise DataError("dataset not found at any candidate path", where=where,
                    expected="one existing path", got="tried " + "; ".join(tried), fix=fix)


# --------------------------------------------------------------------------- parsing


def load_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment TOML file.

    Parameters
    ----------
    path : path-like
        The ``.toml`` file.
    overrides : mapping, optional
        CLI options, see :func:`apply_overrides`.

    Returns
    -------
    ExperimentConfig

    Raises
    ------
    ConfigError
        Unreadable TOML, unknown keys (did-you-mean), wrong types or values.
    DataError
        No dataset path candidate exists.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("cannot read the experiment file", where=str(p), got=str(exc),
                          fix="check the path") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("not valid TOML", where=str(p), got=str(exc),
                          fix="fix the syntax (https://toml.io)") from None
    return parse_config(data, overrides=overrides, source=str(p))


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Put CLI options into the TOML tables they override (None = not given).

    Recognised keys: ``store``, ``device`` (extract and training), ``batch_size``,
    ``layers`` (list), ``num_workers`` (extract and training), ``amp``, ``compression``.
    """
    out = copy.deepcopy(dict(data))
    targets = {
        "store": [("experiment", "store")],
        "device": [("extract", "device"), ("training", "device")],
        "batch_size": [("extract", "batch_size")],
        "layers": [("extract", "layers")],
        "num_workers": [("extract", "num_workers"), ("training", "num_workers")],
        "amp": [("extract", "amp")],
        "compression": [("extract", "compression")],
    }
    for key, value in (overrides or {}).items():
        if key not in targets:
            raise ConfigError(f"unknown override {key!r}", where="command line",
                              expected=sorted(targets), fix=did_you_mean(key, targets) or None)
        if value is None:
            continue
        for table, field_name in targets[key]:
            if table == "training" and "training" not in out:
                continue
            sub = out.setdefault(table, {})
            if not isinstance(sub, dict):
                continue  # reported by validation
            sub[field_name] = value
    return out


def parse_config(data: Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None,
                 source: str = "config") -> ExperimentConfig:
    """Validate a config already parsed from TOML (see :func:`load_config`)."""
    data = apply_overrides(data, overrides)
    check_keys(data, TABLES, where=source, required=("experiment", "dataset", "model", "extract"))
    raw: dict[str, Any] = {}

    # [experiment]
    w = f"{source} [experiment]"
    exp = dict(check_keys(data["experiment"], ("name", "store", "checkpoints_dir", "seed"),
                          where=w, required=("name", "store")))
    check_type(exp["name"], str, where=f"{w}.name")
    check_type(exp["store"], str, where=f"{w}.store")
    seed = exp.setdefault("seed", 0)
    check_type(seed, int, where=f"{w}.seed")
    check_range(seed, low=0, where=f"{w}.seed")
    store = _path(exp["store"])
    if store.suffix.lower() not in (".zarr", ".h5", ".hdf5"):
        raise ConfigError("unknown store format", where=f"{w}.store", expected="a path ending in "
                          ".zarr, .h5 or .hdf5", got=exp["store"], fix=f"use {exp['store']}.zarr")
    ckdir = exp.setdefault("checkpoints_dir", str(store.with_suffix("")) + "-checkpoints")
    check_type(ckdir, str, where=f"{w}.checkpoints_dir")
    raw["experiment"] = exp

    dataset = _parse_dataset(data["dataset"], seed, f"{source} [dataset]", raw)
    raw["splits"] = _parse_splits(data.get("splits", {}), f"{source} [splits]")
    raw["model"] = _parse_model(data["model"], f"{source} [model]")

    w = f"{source} [training]"
    training = dict(check_type(data.get("training", {}), dict, where=w))
    training.setdefault("seed", seed)
    if "epochs" in training:  # validate now (all runs inherit it); per-run tables checked too
        _check_training(training, w)
    raw["training"] = training

    runs = _parse_runs(data.get("runs", []), seed, training, f"{source} [[runs]]", raw)
    extract = _parse_extract(data["extract"], seed, f"{source} [extract]", raw)
    concepts = _parse_concepts(data.get("concepts", {}), f"{source} [concepts]", raw, seed)

    return ExperimentConfig(
        name=exp["name"], store=store, checkpoints_dir=_path(ckdir), seed=seed, dataset=dataset,
        splits=raw["splits"], model=raw["model"], training=training, runs=tuple(runs),
        extract=extract, concepts=concepts, raw=raw, source=source,
        analysis=dict(check_type(data.get("analysis", {}), dict, where=f"{source} [analysis]")))


def _check_training(table: dict[str, Any], where: str) -> None:
    from extract.train import TrainConfig  # lazy: extract.train imports torch

    TrainConfig.from_dict(table, where=where)


def _parse_dataset(table: Any, seed: int, where: str, raw: dict[str, Any]) -> DatasetSpec:
    fields = [f.name for f in dataclasses.fields(DatasetSpec)]
    d = dict(check_keys(table, fields, where=where, required=("kind",)))
    d.setdefault("seed", seed)
    written = copy.deepcopy(d)
    path = d.get("path")
    if path is not None:
        if isinstance(path, list):
            if not path or not all(isinstance(p, str) for p in path):
                raise ConfigError("path candidates must be a non-empty list of strings",
                                  where=f"{where}.path", got=repr(path))
        else:
            check_type(path, str, where=f"{where}.path")
    # Validate everything but the path first, so a typo is not hidden behind "not found".
    probe = {**d, "path": None if d.get("kind") == "digits" else "."}
    DatasetSpec.from_dict(probe, where=where)
    if path is not None:
        d["path"] = resolve_data_path(path, where=f"{where}.path", kind=str(d.get("kind")))
    spec = DatasetSpec.from_dict(d, where=where)
    if "name" not in written:
        # Named after the first candidate, not the one found: the same experiment must
        # get the same dataset name (and config hash) on every machine.
        first = path[0] if isinstance(path, list) else path
        named = DatasetSpec.from_dict({**d, "path": _expand(first)[0] if first else None},
                                      where=where)
        spec.name = written["name"] = named.name
    raw["dataset"] = written
    return spec


def _parse_splits(table: Any, where: str) -> dict[str, Any]:
    d = dict(check_keys(table, ("train", "valid", "test", "predefined"), where=where))
    d.setdefault("train", 0.7)
    d.setdefault("valid", 0.15)
    d.setdefault("test", 0.15)
    d.setdefault("predefined", False)
    check_type(d["predefined"], bool, where=f"{where}.predefined")
    total = 0.0
    for key in ("train", "valid", "test"):
        check_type(d[key], (int, float), where=f"{where}.{key}")
        check_range(d[key], low=0, high=1, where=f"{where}.{key}")
        if not d[key] > 0:
            raise ConfigError("every split needs a positive fraction", where=f"{where}.{key}",
                              expected="a value in (0, 1)", got=d[key])
        total += float(d[key])
    if abs(total - 1.0) > 1e-6:
        raise ConfigError("split fractions must sum to 1", where=where, expected=1.0,
                          got=f"{total:g}", fix="rescale train, valid and test")
    return d


def _parse_model(table: Any, where: str) -> dict[str, Any]:
    d = dict(check_keys(table, ("name", "options"), where=where, required=("name",)))
    check_type(d["name"], str, where=f"{where}.name")
    d["options"] = dict(check_type(d.get("options", {}), dict, where=f"{where}.options"))
    return d


def _parse_runs(items: Any, seed: int, training: dict[str, Any], where: str,
                raw: dict[str, Any]) -> list[RunSpec]:
    from extract.corruption import CORRUPTION_MODES

    check_type(items, list, where=where)
    if not items:
        raise ConfigError("no runs", where=where, expected="at least one [[runs]] table",
                          fix='add [[runs]] name = "generalizing" corruption = 0.0')
    runs, written, seen = [], [], set()
    keys = ("name", "corruption", "mode", "seed", "checkpoints", "training", "description")
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        d = dict(check_keys(item, keys, where=w, required=("name",)))
        name = validate_name(check_type(d["name"], str, where=f"{w}.name"), "run")
        if name in seen:
            raise ConfigError(f"two runs are called {name!r}", where=w, fix="rename one")
        seen.add(name)
        d.setdefault("corruption", 0.0)
        check_type(d["corruption"], (int, float), where=f"{w}.corruption")
        check_range(d["corruption"], low=0, high=1, where=f"{w}.corruption")
        d["corruption"] = float(d["corruption"])
        d.setdefault("mode", "shuffle")
        check_type(d["mode"], str, where=f"{w}.mode")
        if d["mode"] not in CORRUPTION_MODES:
            raise ConfigError("unknown corruption mode", where=f"{w}.mode",
                              expected=" or ".join(map(repr, CORRUPTION_MODES)), got=repr(d["mode"]),
                              fix=did_you_mean(d["mode"], CORRUPTION_MODES) or None)
        d.setdefault("seed", seed)
        check_type(d["seed"], int, where=f"{w}.seed")
        check_range(d["seed"], low=0, where=f"{w}.seed")
        d.setdefault("description", "")
        check_type(d["description"], str, where=f"{w}.description")
        d["training"] = dict(check_type(d.get("training", {}), dict, where=f"{w}.training"))
        ckpt = d.get("checkpoints")
        if ckpt is not None:
            check_type(ckpt, str, where=f"{w}.checkpoints")
            if d["training"]:
                raise ConfigError("an imported run (checkpoints = ...) is not trained",
                                  where=f"{w}.training", fix="remove training or checkpoints")
            ckpt = _expand(ckpt)[0]
        else:
            table = {**training, **d["training"]}
            if "epochs" not in table:
                raise ConfigError("run is trained but no epochs are given", where=w,
                                  fix="add [training] epochs = N, or checkpoints = \"...\" to import")
            _check_training(table, f"{w}.training")
        written.append(d)
        runs.append(RunSpec(name=name, corruption=d["corruption"], mode=d["mode"], seed=d["seed"],
                            checkpoints=ckpt, training=d["training"], description=d["description"]))
    raw["runs"] = written
    return runs


def _parse_extract(table: Any, seed: int, where: str, raw: dict[str, Any]) -> ExtractOptions:
    from extract.reductions import parse_reduction  # numpy-only use; module imports torch

    names = [f.name for f in dataclasses.fields(ExtractOptions)]
    d = dict(check_keys(table, names, where=where, required=("layers",)))
    layers = d["layers"]
    if isinstance(layers, str):
        layers = [layers]
    check_type(layers, list, where=f"{where}.layers")
    if not layers or not all(isinstance(x, str) and x for x in layers):
        raise ConfigError("layers must be a non-empty list of names or globs", where=f"{where}.layers",
                          got=repr(layers), fix='e.g. layers = ["input", "relu*"]; '
                                                '`probestore layers CONFIG` lists the names')
    d["layers"] = layers
    d.setdefault("reduction", "auto")
    parse_reduction(check_type(d["reduction"], str, where=f"{where}.reduction"))
    reductions = dict(check_type(d.get("reductions", {}), dict, where=f"{where}.reductions"))
    for key, spec in reductions.items():
        parse_reduction(check_type(spec, str, where=f"{where}.reductions.{key}"))
    d["reductions"] = reductions
    d.setdefault("reduction_seed", seed)
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
    chunk = d.setdefault("chunk_rows", "auto")
    if chunk != "auto":
        check_type(chunk, int, where=f"{where}.chunk_rows")
        # SCHEMA.md §7: chunks hold at least 64 rows (a chunk per few rows would mean a
        # file and a metadata update per few samples: slow to write and to read back).
        if chunk < MIN_CHUNK_ROWS:
            raise ConfigError("chunk_rows too small", where=f"{where}.chunk_rows",
                              expected=f'"auto" or an integer >= {MIN_CHUNK_ROWS} (SCHEMA.md §7)', got=chunk,
                              fix=f'use chunk_rows = "auto" (about 4 MiB per chunk) or >= {MIN_CHUNK_ROWS}')
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
        chunk_rows=None if chunk == "auto" else chunk, gradients=gradients, compression=d["compression"])


def _parse_concepts(table: Any, where: str, raw: dict[str, Any], seed: int = 0) -> ConceptOptions:
    d = dict(check_keys(table, ("families", "csv", "folders", "n_jobs", "preset", "texture_levels", "sets",
                               "random_sets", "types"), where=where))
    families = d.setdefault("families", [])
    if isinstance(families, str):
        families = d["families"] = [families]
    check_type(families, list, where=f"{where}.families")
    for fam in families:
        check_type(fam, str, where=f"{where}.families")
        if fam not in CONCEPT_FAMILY_NAMES:
            raise ConfigError(f"unknown concept family {fam!r}", where=f"{where}.families",
                              expected=", ".join(CONCEPT_FAMILY_NAMES), got=repr(fam),
                              fix=did_you_mean(fam, CONCEPT_FAMILY_NAMES) or None)
    csvs = d.setdefault("csv", [])
    if isinstance(csvs, str):
        csvs = d["csv"] = [csvs]
    check_type(csvs, list, where=f"{where}.csv")
    for c in csvs:
        check_type(c, str, where=f"{where}.csv")
    folders = dict(check_type(d.setdefault("folders", {}), dict, where=f"{where}.folders"))
    for name, folder in folders.items():
        validate_name(name, "target")
        check_type(folder, str, where=f"{where}.folders.{name}")
    d.setdefault("n_jobs", 1)
    check_type(d["n_jobs"], int, where=f"{where}.n_jobs")
    if d["n_jobs"] == 0:
        raise ConfigError("n_jobs must not be 0", where=f"{where}.n_jobs",
                          expected="a positive count, or -1 for all cores", got=0)
    _parse_concept_preset(d, where)
    sets = _parse_concept_sets(d, where, seed)
    types = _parse_types(d.get("types", "auto"), f"{where}.types")  # hashed only when written
    raw["concepts"] = d
    return ConceptOptions(
        families=tuple(families), csv=tuple(str(_path(c)) for c in csvs),
        folders={k: str(_path(v)) for k, v in folders.items()}, n_jobs=d["n_jobs"],
        texture_levels=d.get("texture_levels"), sets=sets, preset=d["preset"], types=types)


def _parse_types(value: Any, where: str) -> int | str:
    """``[concepts] types``: ``"auto"`` or a number of k-means sample types (>= 2)."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("types must be \"auto\" or a whole number", where=where,
                          expected='"auto" or an integer >= 2', got=repr(value),
                          fix='types = "auto" (about 10 samples per type in the smallest split)')
    check_range(value, low=2, where=where)
    return int(value)


def _parse_concept_preset(d: dict[str, Any], where: str) -> None:
    """``preset`` (default graziani2019, always written so it is hashed) and ``texture_levels``.

    ``texture_levels`` belongs to probestore_v1 (default 32); with graziani2019 it is
    refused, since the authors' GLCM has 256 grey levels by construction.
    """
    preset = check_type(d.setdefault("preset", CONCEPT_PRESETS[0]), str, where=f"{where}.preset")
    if preset not in CONCEPT_PRESETS:
        raise ConfigError("unknown concept preset", where=f"{where}.preset",
                          expected=" or ".join(repr(p) for p in CONCEPT_PRESETS), got=repr(preset),
                          fix=did_you_mean(preset, CONCEPT_PRESETS) or f'preset = "{CONCEPT_PRESETS[0]}"')
    if preset == "graziani2019":
        if "texture_levels" in d:
            raise ConfigError("texture_levels does not apply to the graziani2019 preset",
                              where=f"{where}.texture_levels",
                              expected="no texture_levels (the authors' GLCM has 256 grey levels)",
                              got=repr(d["texture_levels"]),
                              fix='remove texture_levels, or set preset = "probestore_v1" to quantize')
        return
    d.setdefault("texture_levels", 32)
    check_type(d["texture_levels"], int, where=f"{where}.texture_levels")
    check_range(d["texture_levels"], low=2, high=256, where=f"{where}.texture_levels")


def _parse_concept_sets(d: dict[str, Any], where: str, seed: int) -> dict[str, ConceptSetSpec]:
    """``[concepts.sets]`` and ``[concepts.random_sets]`` (TCAV example sets).

    Forms::

        [concepts.sets]
        banded = "examples/banded"                          # concept examples (folder)
        noise_0 = { folder = "noise/0", role = "random" }   # a random counterexample folder
        random_a = { random = 50 }                          # 50 seeded dataset images
        banded = { random = 40, class = "banded" }          # 40 train images of one class
        [concepts.random_sets]                              # shorthand: random_0 .. random_{count-1}
        count = 20
        size = 50

    Both tables are left out of the hashed content when absent.
    """
    out: dict[str, ConceptSetSpec] = {}
    table = d.get("sets")
    if table is not None:
        check_type(table, dict, where=f"{where}.sets")
        for name, entry in table.items():
            w = f"{where}.sets.{name}"
            validate_name(name, "concept set")
            if isinstance(entry, str):
                entry = {"folder": entry}
            check_type(entry, dict, where=w)
            e = dict(check_keys(entry, ("folder", "random", "role", "seed", "class"), where=w))
            default_role = "random" if "random" in e and "class" not in e else "concept"
            role = check_type(e.get("role", default_role), str, where=f"{w}.role")
            if role not in ("concept", "random"):
                raise ConfigError("unknown role", where=f"{w}.role", expected="'concept' or 'random'",
                                  got=repr(role), fix=did_you_mean(role, ("concept", "random")) or None)
            if ("folder" in e) == ("random" in e):
                raise ConfigError("a concept set is either a folder or a random draw", where=w,
                                  expected='folder = "path" or random = N', got=sorted(e),
                                  fix='e.g. banded = "examples/banded" or random_0 = { random = 50 }')
            if "random" in e:
                check_type(e["random"], int, where=f"{w}.random")
                check_range(e["random"], low=1, where=f"{w}.random")
                if "class" in e:
                    check_type(e["class"], str, where=f"{w}.class")
            else:
                check_type(e["folder"], str, where=f"{w}.folder")
                if "class" in e:
                    raise ConfigError("'class' only restricts a random draw", where=f"{w}.class",
                                      fix='write { random = N, class = "..." }, or drop class')
            s = check_type(e.get("seed", seed), int, where=f"{w}.seed")
            out[name] = ConceptSetSpec(name, role, str(_path(e["folder"])) if "folder" in e else None,
                                       e.get("random"), s, e.get("class"))
    rs = d.get("random_sets")
    if rs is not None:
        w = f"{where}.random_sets"
        r = dict(check_keys(check_type(rs, dict, where=w), ("count", "size", "seed", "prefix"), where=w,
                            required=("count", "size")))
        for key in ("count", "size"):
            check_type(r[key], int, where=f"{w}.{key}")
            check_range(r[key], low=1, where=f"{w}.{key}")
        prefix = check_type(r.get("prefix", "random_"), str, where=f"{w}.prefix")
        s = check_type(r.get("seed", seed), int, where=f"{w}.seed")
        for i in range(r["count"]):
            name = validate_name(f"{prefix}{i}", "concept set")
            if name in out:
                raise ConfigError(f"concept set {name!r} is defined twice", where=w,
                                  fix="rename the [concepts.sets] entry or change random_sets.prefix")
            out[name] = ConceptSetSpec(name, "random", None, r["size"], s)
    return out
