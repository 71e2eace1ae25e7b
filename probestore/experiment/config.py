"""The whole experiment file: :class:`ExperimentConfig`, :func:`load_config`, :func:`parse_config`.

Each table has its own module in this package; this one puts them together in the
order that makes the first error the most useful one (``[experiment]``, then the
dataset, splits, model, training, runs, extraction, concepts), and defines what of the
file is hashed into the store (:meth:`ExperimentConfig.content`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probestore.errors import ConfigError, did_you_mean
from probestore.experiment.concepts import ConceptOptions, parse_concepts
from probestore.experiment.dataset import DatasetSpec, parse_dataset
from probestore.experiment.document import (
    TABLES,
    apply_overrides,
    file_base,
    parse_experiment_table,
    read_document,
)
from probestore.experiment.extraction import ExtractOptions, parse_extract
from probestore.experiment.growth import runtime_keys
from probestore.experiment.keys import Key, KeyTable
from probestore.experiment.model import MODEL_KEYS, parse_model  # noqa: F401  (MODEL_KEYS: the [model] registry)
from probestore.experiment.runs import RunSpec, parse_runs
from probestore.experiment.training import TRAINING_KEYS, TrainConfig, check_training
from probestore.fields import check_keys, check_range, check_type
from probestore.selectors import select
from storage_schema.store import config_hash

__all__ = ["SPLITS_KEYS", "ExperimentConfig", "load_config", "parse_config"]

#: ``[splits]`` (see :mod:`probestore.experiment.keys` to add a key).
SPLITS_KEYS = KeyTable("[splits]", "How the samples are split into train / valid / test (stratified by class, "
                       "seeded by the [experiment] seed). Probes are fitted on train, their penalty chosen on "
                       "valid, and scored on every split.", {
    "train": Key("float", "Fraction of the samples in the train split.", default="0.7", allowed="(0, 1); the "
                 "three fractions sum to 1", example="0.6", example_with="valid = 0.2; test = 0.2"),
    "valid": Key("float", "Fraction in the valid split.", default="0.15", allowed="(0, 1)", example="0.2",
                 example_with="train = 0.6; test = 0.2"),
    "test": Key("float", "Fraction in the test split.", default="0.15", allowed="(0, 1)", example="0.2",
                example_with="train = 0.6; valid = 0.2"),
    "predefined": Key("boolean", "Keep the dataset's own train / test files as the test split (idx "
                      "`subset = \"all\"`); valid is drawn from train.", default="false", example="true"),
})

#: keys that say where / how fast, not what: kept out of the config hash (classified,
#: with every other key, in :data:`probestore.experiment.growth.KEYS`).
_RUNTIME_KEYS = {table: runtime_keys(table) for table in ("experiment", "extract", "training", "concepts")}


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
        ``name``, ``options``, ``num_classes`` (None: the dataset's class count),
        ``head`` (``"keep"`` / ``"drop"``), ``class_names`` (list or None, read from
        its file) and ``class_map`` (or None); see :mod:`probestore.experiment.model`.
        The input shape is added from the dataset.
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

    def content_hash(self) -> str:
        """The ``config_hash`` a store built from this file records (SCHEMA.md §4.1).

        :meth:`content` through JSON (non-JSON values such as paths become strings),
        then :func:`storage_schema.store.config_hash`.
        """
        digest = config_hash(json.loads(json.dumps(self.content(), default=str)))
        assert digest is not None  # content() is a dict, never None
        return digest

    def run(self, name: str) -> RunSpec:
        """The run called ``name`` (ConfigError with did-you-mean otherwise)."""
        for r in self.runs:
            if r.name == name:
                return r
        names = [r.name for r in self.runs]
        raise ConfigError(f"unknown run {name!r}", where=f"{self.source} [[runs]]", expected=names,
                          got=repr(name), fix=did_you_mean(name, names) or "check --runs")

    def select_runs(self, names: Sequence[str] | None) -> list[RunSpec]:
        """Runs matching ``names`` (exact names or globs; all when None), in config order."""
        if not names:
            return list(self.runs)
        wanted = set(select([r.name for r in self.runs], names, what="run", where="--runs",
                            hint=f"the [[runs]] of {self.source}"))
        return [r for r in self.runs if r.name in wanted]

    def train_config(self, run: RunSpec) -> TrainConfig:
        """The :class:`~probestore.experiment.training.TrainConfig` of ``run`` (``[training]`` + its overrides)."""
        table = {**self.training, **run.training}
        if "epochs" not in table:
            raise ConfigError("training needs epochs", where=f"{self.source} [training]",
                              fix="add [training] epochs = N (or per run: training = { epochs = N })")
        return TrainConfig.from_dict(table, where=f"{self.source} [training] (run {run.name!r})")

    def run_dir(self, run: RunSpec) -> Path:
        """Folder of a trained run's checkpoints and manifest."""
        return self.checkpoints_dir / run.name


# --------------------------------------------------------------------------- parsing


def load_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment TOML file.

    Parameters
    ----------
    path : path-like
        The ``.toml`` file.
    overrides : mapping, optional
        CLI options, see :func:`~probestore.experiment.document.apply_overrides`.

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
    return parse_config(read_document(path), overrides=overrides, source=str(Path(path)), base=file_base(path))


def parse_config(data: Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None,
                 source: str = "config", base: str | Path | None = None) -> ExperimentConfig:
    """Validate a config already parsed from TOML (see :func:`load_config`).

    ``base`` is the folder relative paths of the config are relative to: the
    experiment file's own (:func:`load_config` passes it); None, for a config that
    comes from no file, leaves them relative to the current directory.
    """
    data = apply_overrides(data, overrides)
    check_keys(data, TABLES, where=source, required=("experiment", "dataset", "model", "extract"))
    raw: dict[str, Any] = {}
    exp = parse_experiment_table(data["experiment"], f"{source} [experiment]", base)
    raw["experiment"] = exp.written
    seed = exp.seed

    dataset = parse_dataset(data["dataset"], seed, f"{source} [dataset]", raw, base)
    raw["splits"] = _parse_splits(data.get("splits", {}), f"{source} [splits]")
    raw["model"], model = _parse_model(data["model"], f"{source} [model]", base)
    training = _parse_training(data.get("training", {}), seed, f"{source} [training]")
    raw["training"] = training
    runs = parse_runs(data.get("runs", []), seed, training, f"{source} [[runs]]", raw, base)
    extract = parse_extract(data["extract"], seed, f"{source} [extract]", raw)
    concepts = parse_concepts(data.get("concepts", {}), f"{source} [concepts]", raw, seed, base)

    return ExperimentConfig(
        name=exp.name, store=exp.store, checkpoints_dir=exp.checkpoints_dir, seed=seed, dataset=dataset,
        splits=raw["splits"], model=model, training=training, runs=tuple(runs),
        extract=extract, concepts=concepts, raw=raw, source=source,
        analysis=dict(check_type(data.get("analysis", {}), dict, where=f"{source} [analysis]")))


def _parse_training(table: Any, seed: int, where: str) -> dict[str, Any]:
    """``[training]`` as written plus the default seed; checked now when it has ``epochs``
    (every run inherits it; per-run tables are checked with their overrides)."""
    training = dict(check_keys(table, TRAINING_KEYS, where=where))
    training.setdefault("seed", seed)
    if "epochs" in training:
        check_training(training, where)
    return training


def _parse_splits(table: Any, where: str) -> dict[str, Any]:
    d = dict(check_keys(table, SPLITS_KEYS, where=where))
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


def _parse_model(table: Any, where: str, base: str | Path | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[model]`` as written (hashed) and resolved (:mod:`probestore.experiment.model`;
    ``base``: the folder a relative ``class_names`` file is relative to)."""
    return parse_model(table, where, base=base)
