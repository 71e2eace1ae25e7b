"""Glue from an experiment config to trained checkpoints and a filled store.

The order of work is chosen so that every mistake a user can make surfaces before
anything expensive happens: the config is parsed, the dataset indexed, the model built
and the layers and reductions planned (one dry forward pass), every run's checkpoint
list resolved, and the store's config hash compared, all before concept measures are
computed or the first real batch runs.

Several processes (``--shard i/n``) may fill one store at once. Setting the store up
(creating it, adding targets, runs and shared random indices) happens under an
exclusive lock on ``<store>.extract-lock``, so exactly one shard creates the store and
computes the concept measures while the others wait and then open it and check its
config hash. After setup each shard writes only its own checkpoints (every n-th of a
fixed global order: runs in config order, checkpoints by epoch), which the store
allows concurrently.

Each checkpoint is written under its own writer lock
(:func:`probestore.locking.writer_lock`), held from the first check of what is
missing to the completion marker. A second extraction of the same store started by
mistake (or on purpose, without ``--shard``) therefore never writes a checkpoint that
another process is writing: it extracts the free ones first, then waits for the held
ones, so exit status 0 still means every checkpoint is complete. A lock whose holder was
killed is free again (the kernel drops it) and is taken over: the checkpoint resumes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extract.sample_types import add_sample_types
from probestore.errors import (
    CheckpointError,
    ConfigError,
    ProbestoreError,
    SchemaVersionError,
    StoreFormatError,
    did_you_mean,
)
from probestore.experiment import ExperimentConfig, RunSpec
from probestore.locking import (
    Holder,
    LockHeldError,
    file_lock,
    held_writer_locks,
    setup_lock_path,
    writer_lock,
    writer_lock_path,
)
from probestore.progress import Log, Progress, format_rate
from storage_schema.names import validate_name

__all__ = [
    "Experiment",
    "architecture_id",
    "load_experiment",
    "train_runs",
    "run_extraction",
    "parse_shard",
    "ExtractionSummary",
]



#: The stage's messages: flushed line by line, timestamped outside a terminal (probestore.progress).
_log = Log()
#: Its progress: a bar per checkpoint on a terminal, one line per checkpoint elsewhere.
_progress_log = Log("extract")


def _checkpoint_note(summary: ExtractionSummary, run: str, ckpt: str) -> str:
    """What happened to one checkpoint, for its progress line (samples, time, rate)."""
    name = f"{run}/{ckpt}"
    stats = summary.done[-1] if summary.done else None
    if stats is not None and (stats.run, stats.checkpoint) == (run, ckpt):
        rate = format_rate(stats.rows, stats.seconds, "sample")
        resumed = f", resumed at row {stats.resumed_from}" if stats.resumed_from else ""
        return f"{name}: {stats.rows} samples in {stats.seconds:.1f} s ({rate}{resumed})"
    if summary.skipped and summary.skipped[-1] == name:
        return f"{name}: complete, skipped"
    return f"{name}: completed (gradients / concept sets)"


def architecture_id(spec_dict: dict[str, Any]) -> str:
    """Stable store-safe id of a model spec: runs with equal specs share random indices.

    ``<name>-<first 12 hex of sha256(canonical JSON of the spec)>``, e.g.
    ``mlp-3f9a0c12be47``; the name part is for humans only.
    """
    text = json.dumps(spec_dict, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    name = str(spec_dict.get("name", "model")).replace("factory:", "").replace(":", "-")
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:60] or "model"
    return validate_name(f"{name}-{digest}", "architecture")


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        i_text, n_text = str(text).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ConfigError("bad --shard", where="--shard", expected="i/n, e.g. 0/2", got=repr(text)) from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError("bad --shard", where="--shard", expected="0 <= i < n", got=repr(text),
                          fix="shards are numbered from 0: --shard 0/2 and --shard 1/2")
    return i, n


@dataclass
class Experiment:
    """A config with its dataset loaded and derived pieces computed (no store yet).

    Attributes
    ----------
    config : ExperimentConfig
    dataset : ImageDataset
    splits : numpy.ndarray of int8
        Split codes in dataset order.
    spec : ModelSpec
        Model spec with the dataset's class count and input shape.
    architecture : str
        :func:`architecture_id` of ``spec``.
    """

    config: ExperimentConfig
    dataset: Any
    splits: np.ndarray
    spec: Any
    architecture: str
    _labels: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _head: dict[str, Any] = field(default_factory=dict)

    def run_labels(self, run: RunSpec) -> tuple[np.ndarray, np.ndarray]:
        """``(train_labels, corrupted)`` of a run (corruption seeded by the run's seed)."""
        if run.name not in self._labels:
            from extract.corruption import corrupt_labels

            labels = self.dataset.labels
            if run.corruption == 0:
                out = (labels.astype(np.int64).copy(), np.zeros(len(labels), bool))
            else:
                out = corrupt_labels(labels, self.splits, run.corruption,
                                     len(self.dataset.class_names), run.mode, run.seed)
            self._labels[run.name] = out
        return self._labels[run.name]

    def build_model(self, seed: int):
        from extract.models import build_model

        return build_model(self.spec, seed=seed)

    def head(self, model=None):
        """The model's head (:func:`extract.models.find_head`; None when no linear layer
        runs), found once by a dry forward pass of ``model`` (default: the seed's network)."""
        if "head" not in self._head:
            from extract.models import find_head

            model = self.build_model(self.config.seed) if model is None else model
            try:
                self._head["head"] = find_head(model, self.spec.input_shape)
            except Exception as exc:  # noqa: BLE001 - a kept head is only named in error hints
                if self.spec.head == "drop":
                    raise ConfigError("cannot find the model's head to drop: a dry forward pass of zeros failed",
                                      where=f"{self.config.source} [model].head",
                                      got=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}",
                                      fix='set head = "keep" (the head rule needs a forward pass on an image-shaped '
                                          'input)') from None
                self._head["head"] = None
        return self._head["head"]


def load_experiment(config: ExperimentConfig) -> Experiment:
    """Load the dataset, assign splits and build the model spec of ``config``."""
    from extract.datasets import load_dataset
    from extract.splits import assign_splits
    from extract.text_experiment import is_text, load_text_experiment

    if is_text(config):  # token rows, splits drawn by sequence (extract.text_experiment)
        return load_text_experiment(config)
    ds = load_dataset(config.dataset)
    fractions = {k: config.splits[k] for k in ("train", "valid", "test")}
    predefined = None
    if config.splits["predefined"]:
        if ds.predefined_split is None:
            raise ConfigError("the dataset has no predefined split", where=f"{config.source} [splits].predefined",
                              got=config.dataset.kind, fix="set predefined = false")
        predefined = ds.predefined_split
    splits = assign_splits(ds.labels, fractions, config.seed, predefined=predefined)
    h, w = ds.image_shape[:2]
    spec = _model_spec(config, ds.class_names, (int(ds.channels), int(h), int(w)))
    return Experiment(config, ds, splits, spec, architecture_id(spec.network_dict()))


def _model_spec(config: ExperimentConfig, dataset_classes: list[str], input_shape: tuple[int, ...]):
    """The model spec: the head's own width (default: the dataset's class count), head
    mode, the model's class names and ``class_map`` as model indices (checked against the
    dataset's classes)."""
    from extract.models import ModelSpec
    from probestore.experiment.model import resolve_class_map

    m = config.model
    num_classes = m.get("num_classes") or len(dataset_classes)
    class_map = resolve_class_map(m.get("class_map"), m.get("class_names"), list(dataset_classes), num_classes,
                                  f"{config.source} [model].class_map")
    names = m.get("class_names")
    # (T,) for text models: ModelSpec checks the length of the shape itself
    return ModelSpec(name=m["name"], num_classes=num_classes, input_shape=input_shape,  # type: ignore[arg-type]
                     options=m["options"],
                     head=m.get("head", "keep"), class_names=None if names is None else tuple(names),
                     class_map=class_map)


def head_matches(spec, dataset_classes: Sequence[str]) -> bool:
    """Whether the model's outputs are the dataset's classes, in order: a kept head of
    the dataset's width whose class names (when given) are the dataset's."""
    return (spec.head == "keep" and spec.num_classes == len(dataset_classes)
            and (spec.class_names is None or list(spec.class_names) == list(dataset_classes)))


# --------------------------------------------------------------------------- training


def train_runs(exp: Experiment, runs: Sequence[RunSpec], *, progress: bool = True) -> list[Path]:
    """Train every run without ``checkpoints =`` (skipping runs whose manifest is complete)."""
    from extract.train import train_model

    manifests = []
    if any(run.trained for run in runs) and not head_matches(exp.spec, exp.dataset.class_names):
        raise ConfigError("probestore train needs a head of the dataset's classes",
                          where=f"{exp.config.source} [model]",
                          expected=f"head = \"keep\" with num_classes = {len(exp.dataset.class_names)} "
                                   "(the dataset's classes)",
                          got=f"head = {exp.spec.head!r}, num_classes = {exp.spec.num_classes}",
                          fix="remove num_classes / class_names / head from [model] to train on this dataset, "
                              "or import pretrained checkpoints with [[runs]] checkpoints = ...")
    for run in runs:
        if not run.trained:
            what = "random initialization only" if run.random_init else f"imported checkpoints ({run.checkpoints})"
            _log(f"[{run.name}] {what}: nothing to train")
            continue
        config = exp.config.train_config(run)
        train_labels, corrupted = exp.run_labels(run)
        model = exp.build_model(run.seed)
        t0 = time.perf_counter()
        manifest = train_model(model, exp.dataset, exp.splits, train_labels, corrupted, config,
                               exp.config.checkpoints_dir, run_name=run.name, progress=progress)
        _log(f"[{run.name}] manifest {manifest} ({time.perf_counter() - t0:.1f} s)")
        manifests.append(manifest)
    return manifests


def checkpoint_refs(exp: Experiment, run: RunSpec) -> list:
    """The run's checkpoints: its training manifest, or the imported source."""
    from extract.checkpoints import resolve_checkpoints
    from extract.train import MANIFEST

    if run.trained:
        manifest = exp.config.run_dir(run) / MANIFEST
        if not manifest.is_file():
            raise ConfigError(f"run {run.name!r} has not been trained yet", where=str(manifest),
                              expected="a training manifest", got="no manifest",
                              fix=f"run `probestore train {exp.config.source} --runs {run.name}` first")
        return resolve_checkpoints(manifest)
    if run.random_init:  # the seeded random network only (Graziani et al.'s epoch 0)
        from extract.checkpoints import CheckpointRef

        return [CheckpointRef("epoch_0000", epoch=0)]
    assert run.checkpoints is not None  # imported run
    return resolve_checkpoints(run.checkpoints)


# --------------------------------------------------------------------------- store setup


@contextlib.contextmanager
def setup_lock(store_path: Path):
    """Exclusive inter-process lock for creating / setting up one store."""
    lock = setup_lock_path(store_path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock, exclusive=True):
        yield


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def open_or_create_store(exp: Experiment, *, overwrite: bool = False, sharded: bool = False):
    """Open the experiment's store, creating or growing it (call under :func:`setup_lock`).

    An existing store of a different config is *grown* when the config only adds to the
    store's recorded one (runs, checkpoints, layers, gradients, concept measures and
    sets; :mod:`probestore.experiment.growth`): the store then records the union and a
    ``history`` entry. Any other change is refused, naming the keys, unless
    ``overwrite``, which re-creates the store. With ``sharded``, ``overwrite`` re-creates
    only a store of a *different* config: n shards started with ``--overwrite`` then
    agree on one store instead of deleting each other's work.

    Returns
    -------
    (ActivationStore, bool)
        The store, open for appending, and whether it was created.
    """
    store, created, growth = open_grown_or_created(exp, overwrite=overwrite, sharded=sharded)
    return record_growth(store, growth), created


def open_grown_or_created(exp: Experiment, *, overwrite: bool = False, sharded: bool = False):
    """:func:`open_or_create_store` without writing the grown record yet.

    :func:`run_extraction` records it (:func:`record_growth`) at the end of its setup,
    once every new run, target and concept set was accepted: a typo caught there must
    not become part of the store's record.

    Returns
    -------
    (ActivationStore, bool, Growth or None)
        ``Growth`` when the store's config differs from the experiment's (None when the
        store was created or its config hash is the experiment's).
    """
    from storage_schema.fingerprint import dataset_fingerprint
    from storage_schema.store import open_store

    cfg = exp.config
    content = _json_safe(cfg.content())
    want = cfg.content_hash()  # = config_hash(content), the hash a store made from it records
    path = cfg.store
    ds = exp.dataset
    exists = path.exists()
    if exists and overwrite:
        try:
            open_store(path, "r").close()
        except (StoreFormatError, SchemaVersionError) as exc:  # damaged beyond repair: --overwrite re-creates it
            _log(f"re-creating {path} (--overwrite): {exc.what}")
            _refuse_if_written(path)
            return _create(exp, content, exists=True), True, None
    if exists:
        store = open_store(path, "a")
        same = store.config_hash == want
        if not (overwrite and (not sharded or not same)):
            try:
                growth = None if same else _growth(store, exp, content)
            except ConfigError:
                store.close()
                raise
            store.check_fingerprint(dataset_fingerprint(ds.sample_ids, ds.labels),
                                    where=f"{path} vs the dataset of {cfg.source}")
            return store, False, growth
        store.close()
        _refuse_if_written(path)
        _log(f"re-creating {path} (--overwrite)")
    return _create(exp, content, exists=exists), True, None


def _growth(store, exp: Experiment, content: dict[str, Any]):
    """The growth from the store's recorded config to ``content``; ConfigError unless it only adds."""
    from probestore.experiment.growth import compare_content

    path, source = store.path, exp.config.source
    old = store.config
    suffix = Path(path).suffix
    fix = (f"use another store path (--store NEW{suffix}), or --overwrite to delete and re-extract it")
    if not isinstance(old, dict) or "extract" not in old:
        raise ConfigError("the store was not written from an experiment file", where=f"{path} (config)",
                          expected="a recorded experiment config", got=repr(old)[:60], fix=fix)
    clash = _concept_preset_clash(old, content, path, source)
    if clash is not None:
        raise clash
    growth = compare_content(old, content, resolve_layers=_layer_resolver(exp))
    if growth.refused:
        shown = "; ".join(growth.refused[:6]) + (f" (and {len(growth.refused) - 6} more)"
                                                 if len(growth.refused) > 6 else "")
        raise ConfigError(
            "the store was written with a different experiment config, and the change is not only an "
            "addition (it would alter stored numbers)", where=f"{path} (recorded config) vs {source}",
            expected="the stored values of these keys (new runs, checkpoints, layers, gradients, concept "
                     "measures and sets may be added)",
            got=shown, fix=f"set these keys back to the stored values shown, {fix}")
    return growth


def _layer_resolver(exp: Experiment):
    """``ExtractOptions -> {layer: reduction}`` on the experiment's network (built on first use)."""
    built: list[Any] = []

    def resolve(options) -> dict[str, Any]:
        from extract.runner import plan_extraction
        from extract.text_experiment import is_text
        from extract.text_runner import plan_text_extraction

        if not built:
            built.append(exp.build_model(exp.config.seed))
        plan = plan_text_extraction(built[0], exp.dataset, options, head=exp.spec.head) if is_text(exp) else \
            plan_extraction(built[0], exp.spec.input_shape, options, head=dropped_head(exp))
        return {name: p.to_dict() for name, p in plan.reductions.items()}

    return resolve


def record_growth(store, growth):
    """Record a grown config: the union as ``config``, its hash, a ``history`` entry (SCHEMA.md §4.1).

    Nothing is written when the union is the recorded config already (a file that only
    drops runs or layers, or a shard that finds another shard's record). Returns the
    store, reopened when its root attributes changed.
    """
    from storage_schema.metadata import HISTORY_SCHEMA, history_entry
    from storage_schema.store import config_hash, open_store, probestore_version
    from storage_schema.version import parse_version

    if growth is None:
        return store
    digest = config_hash(growth.record)
    if digest == store.config_hash:
        return store
    entry = history_entry(config_hash=digest, previous_config_hash=store.config_hash, added=growth.added,
                          changed=growth.changed, probestore_version=probestore_version())
    history = [*(store.root_attrs.get("history") or []), entry]
    attrs: dict[str, Any] = {"config": growth.record, "config_hash": digest, "history": history}
    if store.schema_version < parse_version(HISTORY_SCHEMA, ""):  # SCHEMA.md §2: a 1.3 item raises it
        attrs["schema_version"] = HISTORY_SCHEMA
    store.backend.update_attrs("", attrs)
    path = store.path
    store.close()
    _log(f"grew {path}: " + "; ".join(growth.added + growth.changed or ["the record only"]))
    return open_store(path, "a")


def preview_growth(exp: Experiment) -> tuple[str, Any]:
    """What extracting ``exp`` would do to its store, writing nothing (``probestore extract --dry-run``).

    The same checks as :func:`open_grown_or_created` in the same order (the growth
    classification of :mod:`probestore.experiment.growth`, then the dataset
    fingerprint), so a change the real run refuses raises the same ``ConfigError``.

    Returns
    -------
    (str, Growth or None)
        ``("create", None)`` when there is no store yet, ``("same", None)`` when the store
        records this config, ``("grow", Growth)`` when the config only adds to it.
    """
    from storage_schema.fingerprint import dataset_fingerprint
    from storage_schema.store import open_store

    cfg = exp.config
    if not cfg.store.exists():
        return "create", None
    with open_store(cfg.store, "r") as store:
        growth = None if store.config_hash == cfg.content_hash() else _growth(store, exp, _json_safe(cfg.content()))
        store.check_fingerprint(dataset_fingerprint(exp.dataset.sample_ids, exp.dataset.labels),
                                where=f"{cfg.store} vs the dataset of {cfg.source}")
    if growth is None:
        return "same", None
    return "grow", growth


def _create(exp: Experiment, content: dict[str, Any], *, exists: bool):
    from extract.text_experiment import is_text, store_kwargs
    from storage_schema.store import create_store

    ds = exp.dataset
    rows = store_kwargs(ds) if is_text(exp) else {}  # schema 1.3: unit, sequence, position, tokenization
    return create_store(exp.config.store, dataset_name=ds.name, sample_ids=ds.sample_ids, labels=ds.labels,
                        splits=exp.splits, class_names=ds.class_names,
                        split_names=("train", "valid", "test"), source=_json_safe(ds.to_dict()),
                        config=content, overwrite=exists, **rows)


def _refuse_if_written(path: Path) -> None:
    """``--overwrite`` must not delete a store another extraction is writing."""
    busy = held_writer_locks(path)
    if busy:
        lock, holder = busy[0]
        raise LockHeldError(
            f"cannot re-create the store (--overwrite): it is being written by "
            f"{holder or 'another process'}", where=str(lock),
            fix="wait for that extraction to finish (or stop it), then rerun the same command")


def _concept_preset_clash(old: dict[str, Any], new: dict[str, Any], path: Path,
                          source: str) -> ConfigError | None:
    """The error for a store whose concept preset differs from the config's, else None.

    Its own message because the same concept names then mean other formulas
    (docs/science.md §6); the fix names the store's preset when that alone would match.
    """
    if "concepts" not in old:  # a store made without an experiment config
        return None
    was, now = old["concepts"].get("preset"), (new.get("concepts") or {}).get("preset")
    if was == now:
        return None
    others = [d for d in _differences(old, new)
              if not d.startswith(("concepts.preset:", "concepts.texture_levels:"))]
    recompute = f"use another store path (--store), or --overwrite to delete it and re-extract with {now!r}"
    if was is None:
        got = "no preset: a store from before presets (its concept measures are probestore_v1's)"
        fix = recompute
    else:
        got = f"preset {was!r}"
        levels = old["concepts"].get("texture_levels")
        line = f'preset = "{was}"' + (f", texture_levels = {levels}" if levels is not None else "")
        if levels is None and (new.get("concepts") or {}).get("texture_levels") is not None:
            line += " without texture_levels"
        fix = ("" if others else f"set [concepts] {line} in {source} to reuse the store, or ") + recompute
    if others:
        got += "; other differences: " + "; ".join(others[:4]) + (" ..." if len(others) > 4 else "")
    return ConfigError("the store was extracted with another concept preset",
                       where=f"{path} (config concepts.preset)", expected=f"preset {now!r} ({source})",
                       got=got, fix=fix)


def add_targets(store, exp: Experiment, *, progress: bool = True) -> None:
    """Class label and concept targets (computed once; present ones are kept)."""
    from extract.concepts import (
        CONCEPT_FAMILIES,
        binary_concept_from_folder,
        compute_concepts,
        concept_descriptions,
        load_concept_csv,
    )
    from extract.text_experiment import add_text_targets, is_text

    if is_text(exp):
        return add_text_targets(store, exp)
    ds, opts = exp.dataset, exp.config.concepts
    present = set(store.target_names())
    store.add_target("label", ds.labels, "class", family="class",
                     description="true class label: index into the dataset's class_names")
    missing = [f for f in opts.families if not set(CONCEPT_FAMILIES[f]) <= present]
    if missing:
        t0 = time.perf_counter()
        images = _RawImages(ds)
        values = compute_concepts(images, families=missing,  # type: ignore[arg-type]
                                  n_jobs=opts.n_jobs, progress=progress,
                                  texture_levels=opts.texture_levels, preset=opts.preset)
        desc = concept_descriptions(opts.preset, opts.texture_levels)
        for family in missing:
            for name in CONCEPT_FAMILIES[family]:
                store.add_target(name, values[name], "continuous", family=family,
                                 description=desc.get(name, ""))
        _log(f"concepts {', '.join(missing)} ({opts.preset}): {len(ds)} images in "
             f"{time.perf_counter() - t0:.1f} s")
    for csv_path in opts.csv:
        for name, vals in load_concept_csv(csv_path, ds.sample_ids).items():
            store.add_target(name, vals, "continuous", family="user",
                             description=f"user concept from {Path(csv_path).name}")
    for name, folder in opts.folders.items():
        store.add_target(name, binary_concept_from_folder(folder, ds.sample_ids), "binary",
                         family="user", description=f"1 = example image in {folder}")


class _RawImages:
    """Sequence view of the resized uint8 images (what concept measures are computed on)."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ds.raw(int(i))


def add_runs(store, exp: Experiment, runs: Sequence[RunSpec]) -> None:
    """Register runs (idempotent): model spec, architecture id, labels, corruption."""
    for run in runs:
        train_labels, corrupted = exp.run_labels(run)
        training = (exp.config.train_config(run).to_dict() if run.trained
                    else {"random_init": True} if run.random_init
                    else {"imported_from": str(run.checkpoints)})
        store.add_run(run.name, model=exp.spec.to_dict(), architecture=exp.architecture,
                      train_labels=train_labels, corrupted=corrupted,
                      corruption={"fraction": float(run.corruption),
                                  "mode": run.mode if run.corruption > 0 else "none",
                                  "seed": int(run.seed)},
                      training=_json_safe(training), description=run.description)
        if run.trained:
            _grow_run_training(store, run.name, _json_safe(training))


def _grow_run_training(store, run: str, training: dict[str, Any]) -> None:
    """A grown run (more saved epochs) records its new training, as a one-go store would.

    ``add_run`` keeps an existing run's attributes; the growth rules
    (:mod:`probestore.experiment.growth`) allow only the saved epochs to differ. A
    training that saves fewer epochs than recorded is not recorded: the store keeps
    those checkpoints, so the recorded training must still describe them.
    """
    from probestore.experiment.training import TrainConfig
    from storage_schema import layout

    recorded = store.run_info(run).training
    if not isinstance(recorded, dict) or "epochs" not in recorded:
        return
    runtime = ("device", "num_workers")
    if {k: v for k, v in recorded.items() if k not in runtime} == {k: v for k, v in training.items()
                                                                  if k not in runtime}:
        return
    before = set(TrainConfig.from_dict(dict(recorded)).epochs_to_save())
    if set(TrainConfig.from_dict(dict(training)).epochs_to_save()) >= before:
        store.backend.update_attrs(layout.run_node(run), {"training": training})


def save_indices(store, exp: Experiment, plan) -> None:
    """Store each random-subset layer's indices once per architecture (refuse a mismatch)."""
    for name, p in plan.reductions.items():
        if p.kind == "random":
            store.save_reduction_indices(exp.architecture, name, p.indices, reduction=p.to_dict(),
                                         source_shape=list(p.source_shape))


# --------------------------------------------------------------------------- extraction


@dataclass
class ExtractionSummary:
    """Totals over the checkpoints this process handled."""

    store: Path
    done: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_stored(self) -> int:
        return sum(s.bytes_stored for s in self.done)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.done)

    def lines(self) -> list[str]:
        out = [f"{s.run}/{s.checkpoint}: {s.rows} samples"
               + (f" (resumed at row {s.resumed_from})" if s.resumed_from else "")
               + f" in {s.seconds:.1f} s, {s.samples_per_s:.0f} samples/s, "
               f"{s.bytes_stored / 2**20:.1f} MiB" for s in self.done]
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        if self.repaired:
            out.append(f"repaired {len(self.repaired)} damaged checkpoint(s): {', '.join(self.repaired)}")
        out.append(f"extracted {len(self.done)} checkpoint(s), skipped {len(self.skipped)} complete; "
                   f"{self.bytes_stored / 2**20:.1f} MiB stored in {self.seconds:.1f} s "
                   f"({rate:.0f} samples/s) -> {self.store}")
        return out


def global_order(exp: Experiment, runs: Sequence[RunSpec]) -> list[tuple[RunSpec, Any]]:
    """Every (run, checkpoint ref) in the fixed order shards split by index."""
    return [(run, ref) for run in runs for ref in checkpoint_refs(exp, run)]


@contextlib.contextmanager
def store_write_errors(store_path: Path):
    """Turn an OS error while writing the store (disk full, read-only, quota) into one line.

    Why here: the OS error surfaces deep inside zarr / h5py (often in the writer
    thread), where nothing knows which command was running or what the user can do.
    Nothing is lost by stopping: chunks and metadata are written atomically, complete
    checkpoints stay complete, and the interrupted one resumes from its ``rows_done``.
    """
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else (str(exc).splitlines() or [type(exc).__name__])[0]
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            failed = Path(exc.filename) if exc.filename else store_path
            place = store_path if store_path in (failed, *failed.parents) else failed.parent
            fix = (f"make {place} writable for this user, or choose a writable location with "
                   "--store PATH, and rerun the same command: complete checkpoints are kept")
        else:
            fix = ("free disk space and rerun the same command: complete checkpoints are kept and "
                   "the interrupted one resumes where it stopped")
        raise ProbestoreError(
            f"cannot write the store ({reason})",
            where=str(store_path) + (f" ({exc.filename})" if exc.filename else ""),
            got=f"{type(exc).__name__} errno {exc.errno}" if exc.errno else type(exc).__name__,
            fix=fix,
        ) from exc


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def add_concept_sets(store, exp: Experiment) -> dict[str, Any]:
    """Register the ``[concepts.sets]`` of the config (TCAV examples); return the external ones.

    A folder whose every image is a dataset sample (same file name, one sample each)
    becomes rows of the store; any other folder is *external*: its images are decoded
    and normalized exactly like the dataset's and pass through the network per
    checkpoint. ``random = N`` draws N of the dataset's *train* images with the stream
    ``(seed, sha256(name))`` (the test split is what TCAV scores, so it is never a
    counterexample). Call under :func:`setup_lock`; registering is idempotent.

    Returns
    -------
    dict of str to torch Dataset
        External sets, in name order.
    """
    from extract.reductions import stable_hash
    from storage_schema.concept_sets import add_concept_set

    sets = exp.config.concepts.sets
    if not sets:
        return {}
    ds = exp.dataset
    by_base: dict[str, list[int]] = {}
    for row, sid in enumerate(ds.sample_ids):
        by_base.setdefault(Path(str(sid)).name, []).append(row)
    train_rows = np.flatnonzero(exp.splits == 0)
    external = {}
    for name in sorted(sets):
        spec = sets[name]
        where = f"{exp.config.source} [concepts.sets].{name}"
        if spec.random is not None:
            pool, source = train_rows, f"random:{spec.random}"
            if spec.of_class is not None:
                if spec.of_class not in ds.class_names:
                    raise ConfigError(f"unknown class {spec.of_class!r}", where=f"{where}.class",
                                      expected=ds.class_names[:20], got=repr(spec.of_class),
                                      fix=did_you_mean(spec.of_class, ds.class_names) or None)
                pool = train_rows[ds.labels[train_rows] == ds.class_names.index(spec.of_class)]
                source += f" of class {spec.of_class}"
            if spec.random > len(pool):
                raise ConfigError("random concept set larger than the train images it is drawn from",
                                  where=where, expected=f"<= {len(pool)}", got=spec.random,
                                  fix="draw fewer images")
            rng = np.random.default_rng([spec.seed, stable_hash(name)])
            rows = np.sort(rng.choice(pool, size=spec.random, replace=False))
            add_concept_set(store, name, kind="dataset", sample_ids=ds.sample_ids[rows], rows=rows,
                            role=spec.role, source=source, seed=spec.seed)
            continue
        folder = Path(spec.folder or "")
        if not folder.is_dir():
            from probestore.errors import NotFoundError

            raise NotFoundError("concept set folder not found", where=where, got=str(folder),
                                fix="create the folder of example images, or fix the path")
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError("concept set folder has no images", where=where, got=str(folder),
                              expected=", ".join(IMAGE_SUFFIXES))
        matches = [by_base.get(p.name, []) for p in files]
        if all(len(m) == 1 for m in matches):
            rows = np.sort(np.array([m[0] for m in matches], dtype=np.int64))
            add_concept_set(store, name, kind="dataset", sample_ids=ds.sample_ids[rows], rows=rows,
                            role=spec.role, source=str(folder))
        else:
            add_concept_set(store, name, kind="external", sample_ids=[p.name for p in files],
                            role=spec.role, source=str(folder))
            external[name] = _external_images(ds, files).torch_dataset()
    return external


def _external_images(ds, files: Sequence[Path]):
    """Images outside the dataset, decoded at its size and normalized with *its* statistics."""
    from extract.datasets import ImageDataset

    images = ImageDataset(ds.spec, np.array([p.name for p in files]), np.zeros(len(files), np.int64),
                          ds.class_names, files=list(files))
    images._hw = tuple(ds.image_shape[:2])  # in-memory datasets know their size from the arrays
    images._norm = ds.normalization()       # never the set's own statistics
    return images


def _missing_extras(store, config: ExperimentConfig, plan, run: str, ckpt: str,
                    external_sets: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint still lacks beyond its features: gradients, external set blocks."""
    from storage_schema.concept_sets import concept_block_complete

    out: dict[str, Any] = {"gradients": False, "sets": []}
    if store.checkpoint_info(run, ckpt) is None:
        return {"gradients": config.extract.gradients, "sets": sorted(external_sets)}
    if config.extract.gradients:
        from extract.gradients import gradients_complete

        out["gradients"] = not gradients_complete(store, run, ckpt, plan.layers)
    out["sets"] = [s for s in sorted(external_sets)
                   if not all(concept_block_complete(store, run, ckpt, s, m) for m in plan.layers)]
    return out


def _extract_extras(store, config: ExperimentConfig, plan, run: str, ckpt: str, model, tds,
                    external_sets: dict[str, Any], extras: dict[str, Any], *, device, progress: bool) -> None:
    """Gradient pass and external concept sets of one checkpoint whose features are complete."""
    if extras["gradients"]:
        from extract.gradients import extract_gradients

        seconds = extract_gradients(store, run, ckpt, model, tds, plan.reductions,
                                    batch_size=config.extract.batch_size, device=device,
                                    num_workers=config.extract.num_workers, progress=progress)
        _log(f"{run}/{ckpt}: gradients of {len(plan.layers)} layer(s) in {seconds:.1f} s")
    if extras["sets"]:
        from extract.runner import extract_set_features

        for name in extras["sets"]:
            extract_set_features(store, run, ckpt, model, name, external_sets[name], plan, config.extract,
                                 device=device)
        _log(f"{run}/{ckpt}: {len(extras['sets'])} external concept set(s)")


def _load_checkpoint_model(exp: Experiment, run: RunSpec, ref):
    from extract.checkpoints import load_into, load_state_dict, sha256_file

    model = exp.build_model(run.seed)
    if ref.path is None:
        return model, None, f"random-init:seed={run.seed}"
    digest = sha256_file(ref.path)
    if ref.sha256 is not None and ref.sha256 != digest:
        raise CheckpointError("checkpoint file changed since its manifest was written",
                              where=str(ref.path), expected=f"sha256 {ref.sha256}", got=f"sha256 {digest}",
                              fix="retrain the run, or fix the manifest")
    load_into(model, load_state_dict(ref.path), where=str(ref.path), head=exp.head(),
              drop_head=exp.spec.head == "drop")
    return model, digest, str(ref.path)


def checkpoint_damage(store, run: str, checkpoint: str, plan) -> list[str]:
    """What is wrong with the data of one registered checkpoint (empty when nothing).

    Every array under the checkpoint is read back (in slices of about 64 MiB, so a
    large block never has to fit in memory), so truncated or corrupted chunk files are
    found as well as missing ones; the blocks the plan expects must exist. Incomplete
    blocks are checked up to their ``rows_done`` (what a resume keeps).
    """
    from storage_schema import layout

    problems: list[str] = []
    info = store.checkpoint_info(run, checkpoint)
    if info is None:
        return problems
    backend = store.backend
    checked = set()
    # A complete checkpoint claims the layers of its layer_order (SCHEMA.md §5): a plan
    # layer outside it is one the store is growing, not a missing block.
    order = backend.get_attrs(layout.checkpoint_node(run, checkpoint)).get("layer_order")
    claimed = set(order) if isinstance(order, list) else set(plan.layers)
    for name in [*plan.layers, *([layout.OUTPUTS] if plan.n_outputs else [])]:
        node = layout.block_array_node(run, checkpoint, name)
        checked.add(node)
        try:
            meta = store.block_info(run, checkpoint, name,
                                    missing_ok=not info.complete or name not in claimed | {layout.OUTPUTS})
            if meta is None:
                continue
            present, total = backend.initialized_chunks(node)
            if meta.complete and present < total:
                problems.append(f"{name}: {total - present} of {total} chunks missing")
                continue
            problems += [f"{name}: {p}" for p in _read_back(backend, node, meta.rows_done)]
        except ProbestoreError as exc:
            problems.append(f"{name}: {exc.what}")
    base = layout.checkpoint_node(run, checkpoint)

    def walk(node: str) -> None:  # extras (gradients) and concept set blocks
        groups, arrays = backend.list_children(node)
        for a in arrays:
            if f"{node}/{a}" not in checked:
                try:
                    problems.extend(f"{node[len(base) + 1:]}/{a}: {p}"
                                    for p in _read_back(backend, f"{node}/{a}", None))
                except ProbestoreError as exc:
                    problems.append(f"{node[len(base) + 1:]}/{a}: {exc.what}")
        for g in groups:
            walk(f"{node}/{g}")

    try:
        walk(base)
    except ProbestoreError as exc:
        problems.append(exc.what)
    return problems


def _read_back(backend, node: str, stop: int | None) -> list[str]:
    """Read rows ``[0, stop)`` of an array (all when None) in ~64 MiB slices; NaN/Inf found."""
    shape, dtype, chunks = backend.array_meta(node)
    if not shape:
        return []
    stop = shape[0] if stop is None else min(int(stop), shape[0])
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * max(1, dtype.itemsize))
    rows = max(1, int(chunks[0]) if chunks else 1)
    step = max(rows, (64 << 20) // row_bytes // rows * rows)
    for start in range(0, stop, step):
        values = backend.read(node, slice(start, min(stop, start + step)))
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return ["NaN/Inf"]
    return []


@dataclass
class _CheckpointJob:
    """Everything one checkpoint's extraction needs; called with its writer lock held."""

    exp: Experiment
    store: Any
    plan: Any
    external_sets: dict[str, Any]
    tds: Any
    device: Any
    progress: bool
    repair: bool
    summary: ExtractionSummary

    def __call__(self, run: RunSpec, ref, stale) -> None:
        import torch

        from extract.runner import extract_checkpoint

        store, config = self.store, self.exp.config
        if stale is not None:
            _log(f"{run.name}/{ref.name}: taking over from {stale} (no longer running); "
                 "its complete rows are kept")
        info = store.checkpoint_info(run.name, ref.name)
        if self.repair and info is not None:
            problems = checkpoint_damage(store, run.name, ref.name, self.plan)
            if problems:
                _log(f"{run.name}/{ref.name}: damaged ({'; '.join(problems[:3])}"
                     f"{' ...' if len(problems) > 3 else ''}): re-extracting it")
                store.delete_checkpoint(run.name, ref.name)
                self.summary.repaired.append(f"{run.name}/{ref.name}")
                info = None
        features_done = info is not None and info.complete
        if features_done:
            _check_same_weights(store, run.name, ref, info)
        new_layers = _layers_to_add(store, run.name, ref.name, self.plan) if features_done else []
        extras = _missing_extras(store, config, self.plan, run.name, ref.name, self.external_sets)
        if features_done and not new_layers and not any(extras.values()):
            self.summary.skipped.append(f"{run.name}/{ref.name}")
            return
        model, digest, source = _load_checkpoint_model(self.exp, run, ref)
        if not features_done or new_layers:
            if new_layers:  # a grown store: the complete blocks are kept, only these are written
                _log(f"{run.name}/{ref.name}: adding layer(s) {', '.join(new_layers)}")
            order = _layer_order(store, run.name, ref.name)
            # For a complete checkpoint this checks that its weight file is the one extracted.
            store.add_checkpoint(run.name, ref.name, epoch=ref.epoch, step=ref.step, source=source,
                                 sha256=digest)
            from extract.text_experiment import is_text
            from extract.text_runner import extract_text_checkpoint

            extract_rows = extract_text_checkpoint if is_text(self.exp) else extract_checkpoint
            stats = extract_rows(store, run.name, ref.name, model, self.tds, self.plan,
                                 config.extract, device=self.device, progress=self.progress)
            _keep_dropped_layers_listed(store, run.name, ref.name, order)
            self.summary.done.append(stats)
        _extract_extras(store, config, self.plan, run.name, ref.name, model, self.tds,
                        self.external_sets, extras, device=self.device, progress=self.progress)
        del model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _check_same_weights(store, run: str, ref, info) -> None:
    """A complete checkpoint's recorded weights must be the ones its manifest lists now.

    Growing a run (more epochs) retrains it; the checkpoints already extracted are kept
    only if the retraining gave the same weights (it does on CPU; GPU kernels may not).
    Compares the two recorded SHA-256s, no file is read.
    """
    if ref.sha256 is None or info.sha256 is None or ref.sha256 == info.sha256:
        return
    raise CheckpointError(
        f"checkpoint {run}/{ref.name} was extracted from other weights than the run's checkpoint now",
        where=str(ref.path), expected=f"sha256 {info.sha256} (in the store)", got=f"sha256 {ref.sha256}",
        fix="restore the checkpoint files the store was extracted from, use another store path "
            "(--store), or --overwrite to re-extract every checkpoint")


def _layers_to_add(store, run: str, checkpoint: str, plan) -> list[str]:
    """Plan layers a complete checkpoint lacks (a grown store), in plan order.

    Only layers outside the checkpoint's ``layer_order`` (SCHEMA.md §5): a layer it
    names but whose data is missing is damage, re-extracted with the whole checkpoint
    by ``--repair``. Without a ``layer_order``, every layer group present is claimed.
    """
    from storage_schema import layout

    claimed = set(_layer_order(store, run, checkpoint))
    if not claimed:
        layers = f"{layout.checkpoint_node(run, checkpoint)}/layers"
        if store.backend.node_kind(layers) == "group":
            claimed = set(store.backend.list_children(layers)[0])
    out = []
    for name in plan.layers:
        if name in claimed:
            continue
        meta = store.block_info(run, checkpoint, name, missing_ok=True)
        if meta is None or not meta.complete:
            out.append(name)
    return out


def _layer_order(store, run: str, checkpoint: str) -> list[str]:
    from storage_schema import layout

    node = layout.checkpoint_node(run, checkpoint)
    if store.backend.node_kind(node) != "group":
        return []
    order = store.backend.get_attrs(node).get("layer_order")
    return list(order) if isinstance(order, list) else []


def _keep_dropped_layers_listed(store, run: str, checkpoint: str, before: list[str]) -> None:
    """Layers dropped from the config stay in ``layer_order`` (in their place) after growing.

    The writer records the plan's layers; a layer the store holds but the config no
    longer names is inserted after the layer it followed.
    """
    now = _layer_order(store, run, checkpoint)
    if set(before) <= set(now):
        return
    merged = list(now)
    for i, name in enumerate(before):
        if name in merged:
            continue
        after = next((p for p in reversed(before[:i]) if p in merged), None)
        merged.insert(merged.index(after) + 1 if after is not None else 0, name)
    store.set_layer_order(run, checkpoint, merged)


def check_checkpoints_fit(exp: Experiment, order: Sequence[tuple[RunSpec, Any]], model=None) -> None:
    """Load the first checkpoint file of each run into the model before the store exists.

    A checkpoint that does not fit (a pretrained head of 1,000 classes on a 10-class
    dataset) is then refused before the store is created, so the fix the error gives
    (``[model] num_classes``, ``head = "drop"``) works on a plain rerun instead of
    meeting a store of the old config. ``model`` (overwritten) saves building one.
    """
    from extract.checkpoints import load_into, load_state_dict

    seen: set[str] = set()
    for run, ref in order:
        if ref.path is None or run.name in seen:
            continue
        seen.add(run.name)
        model = model if model is not None else exp.build_model(exp.config.seed)
        load_into(model, load_state_dict(ref.path), where=str(ref.path), head=exp.head(),
                  drop_head=exp.spec.head == "drop")


def dropped_head(exp: Experiment):
    """The head :func:`extract.runner.plan_extraction` leaves out (None: the head is kept)."""
    return exp.head() if exp.spec.head == "drop" else None


def check_head_plan(exp: Experiment) -> None:
    """Refuse, before any work, what a head that is not the dataset's cannot give.

    ``head = "drop"`` needs a head to drop (an ``nn.Linear`` reached by the forward
    pass). Gradients of the own-class logit (SCHEMA.md §6.1) need the logit of each
    sample's dataset class, which only a head of the dataset's classes has.
    """
    spec, classes = exp.spec, exp.dataset.class_names
    where = f"{exp.config.source} [model]"
    if spec.head == "drop" and exp.head() is None:
        raise ConfigError('head = "drop", but the model has no linear layer to drop', where=f"{where}.head",
                          expected="an nn.Linear reached by the forward pass (the head rule)", got="none",
                          fix='set head = "keep" (and num_classes to the width of its output)')
    if exp.config.extract.gradients and not head_matches(spec, classes):
        raise ConfigError("gradients need the logit of each sample's own class",
                          where=f"{exp.config.source} [extract].gradients",
                          expected=f"a kept head of the dataset's {len(classes)} classes",
                          got=f"head = {spec.head!r}, num_classes = {spec.num_classes}"
                              + (" with other class names" if spec.class_names is not None else ""),
                          fix="set [extract] gradients = false to probe a head of other classes")


def run_extraction(config: ExperimentConfig, *, runs: Sequence[str] | None = None,
                   shard: tuple[int, int] = (0, 1), overwrite: bool = False,
                   progress: bool = True, repair: bool = False) -> ExtractionSummary:
    """Create / open the store and extract this shard's checkpoints.

    Parameters
    ----------
    config : ExperimentConfig
    runs : sequence of str, optional
        Run names to extract (default: all). Shards must be given the same list.
    shard : (int, int)
        ``(i, n)``: this process takes checkpoints ``i, i + n, i + 2n, ...`` of the
        global order (runs in config order, each run's checkpoints by epoch).
    overwrite : bool
        Re-create the store (see :func:`open_or_create_store` for shards).
    progress : bool
    repair : bool
        Also check every registered checkpoint's arrays (every chunk read back) and
        re-extract, from scratch, the checkpoints found damaged (missing or unreadable
        chunks, missing arrays, NaN/Inf); the others are left as they are.

    Returns
    -------
    ExtractionSummary
    """
    from extract.device import resolve_device
    from extract.runner import plan_extraction
    from extract.text_experiment import add_text_types, is_text, text_plan

    t_start = time.perf_counter()
    exp = load_experiment(config)
    selected = config.select_runs(runs)
    device = resolve_device(config.extract.device)
    # Validate everything cheap before anything expensive.
    probe_model = exp.build_model(config.seed)
    text = is_text(config)
    if not text:
        exp.head(probe_model)  # found once, by a dry forward of the model built anyway
        check_head_plan(exp)
    plan = (text_plan(exp, probe_model) if text else
            plan_extraction(probe_model, exp.spec.input_shape, config.extract, head=dropped_head(exp)))
    order = global_order(exp, selected)
    if not text:
        check_checkpoints_fit(exp, order, probe_model)
    del probe_model
    i, n = shard
    mine = [item for k, item in enumerate(order) if k % n == i]
    # store_write_errors outside setup_lock: a lock file that cannot be created (a
    # read-only folder) is one line too, not a PermissionError traceback.
    with store_write_errors(config.store), setup_lock(config.store):
        store, created, growth = open_grown_or_created(exp, overwrite=overwrite, sharded=n > 1)
        add_targets(store, exp, progress=progress)
        # the control task's recurring types (schema 1.2): word types of text rows
        (add_text_types if text else add_sample_types)(store, exp, log=_log)
        add_runs(store, exp, selected)
        stored = {name: store.load_reduction_indices(exp.architecture, name) for name in plan.layers}
        plan = text_plan(exp, exp.build_model(config.seed)) if text else \
            plan_extraction(exp.build_model(config.seed), exp.spec.input_shape, config.extract,
                            stored_indices={k: v for k, v in stored.items() if v is not None},
                            head=dropped_head(exp))
        save_indices(store, exp, plan)
        external_sets = add_concept_sets(store, exp)
        store = record_growth(store, growth)  # last: everything new was accepted
    _log(f"{'created' if created else 'opened'} {config.store}: {len(exp.dataset)} samples, "
         f"{len(plan.layers)} layer(s) + outputs, {len(mine)} of {len(order)} checkpoint(s) "
         f"for shard {i}/{n} on {device}")
    summary = ExtractionSummary(store=config.store)
    job = _CheckpointJob(exp, store, plan, external_sets, exp.dataset if text else exp.dataset.torch_dataset(), device,
                         progress, repair, summary)
    deferred = []
    # One line per checkpoint (with the job's rate and ETA) everywhere; each checkpoint's
    # samples get a bar of their own on a terminal.
    counter = Progress(len(mine), unit="checkpoint", log=_progress_log, bar=False)
    with store_write_errors(config.store):
        for run, ref in mine:
            with contextlib.ExitStack() as stack:
                try:
                    stale = stack.enter_context(writer_lock(
                        writer_lock_path(config.store, run.name, ref.name),
                        what=f"checkpoint {run.name}/{ref.name}"))
                except LockHeldError as exc:
                    # Another process writes it: do the others first, come back to it at the end.
                    _log(f"{run.name}/{ref.name}: {exc.what}; extracting the other checkpoints first")
                    deferred.append((run, ref))
                    continue
                job(run, ref, stale)
            counter.update(1, _checkpoint_note(summary, run.name, ref.name))
        for run, ref in deferred:
            # Wait for it, so that exit status 0 means every checkpoint is complete; if its
            # writer was killed meanwhile, the lock comes free and this process finishes it.
            label = f"{run.name}/{ref.name}"

            def waiting(holder: Holder | None, label: str = label) -> None:
                _log(f"{label}: waiting for {holder or 'another process'} to finish it")

            with writer_lock(writer_lock_path(config.store, run.name, ref.name),
                             what=f"checkpoint {label}", wait=True, on_wait=waiting) as stale:
                job(run, ref, stale)
            counter.update(1, _checkpoint_note(summary, run.name, ref.name))
    summary.seconds = time.perf_counter() - t_start
    store.close()
    return summary

