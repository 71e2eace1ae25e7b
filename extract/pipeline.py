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
import sys
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
    writer_lock,
    writer_lock_path,
)
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

LOCK_SUFFIX = ".extract-lock"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def load_experiment(config: ExperimentConfig) -> Experiment:
    """Load the dataset, assign splits and build the model spec of ``config``."""
    from extract.datasets import load_dataset
    from extract.models import ModelSpec
    from extract.splits import assign_splits

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
    spec = ModelSpec(name=config.model["name"], num_classes=len(ds.class_names),
                     input_shape=(int(ds.channels), int(h), int(w)), options=config.model["options"])
    return Experiment(config, ds, splits, spec, architecture_id(spec.to_dict()))


# --------------------------------------------------------------------------- training


def train_runs(exp: Experiment, runs: Sequence[RunSpec], *, progress: bool = True) -> list[Path]:
    """Train every run without ``checkpoints =`` (skipping runs whose manifest is complete)."""
    from extract.train import train_model

    manifests = []
    for run in runs:
        if not run.trained:
            _log(f"[{run.name}] imported checkpoints ({run.checkpoints}): nothing to train")
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
    assert run.checkpoints is not None  # imported run
    return resolve_checkpoints(run.checkpoints)


# --------------------------------------------------------------------------- store setup


@contextlib.contextmanager
def setup_lock(store_path: Path):
    """Exclusive inter-process lock for creating / setting up one store."""
    lock = store_path.with_name(store_path.name + LOCK_SUFFIX)
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
    """Open the experiment's store, creating it if missing (call under :func:`setup_lock`).

    An existing store with a different config hash is refused unless ``overwrite``,
    which re-creates it. With ``sharded``, ``overwrite`` re-creates only a store of a
    *different* config: n shards started with ``--overwrite`` then agree on one store
    instead of deleting each other's work.
    """
    from storage_schema.store import open_store

    cfg = exp.config
    content = _json_safe(cfg.content())
    want = cfg.content_hash()  # = config_hash(content), the hash the store records
    path = cfg.store
    ds = exp.dataset
    exists = path.exists()
    if exists and overwrite:
        try:
            open_store(path, "r").close()
        except (StoreFormatError, SchemaVersionError) as exc:  # damaged beyond repair: --overwrite re-creates it
            _log(f"re-creating {path} (--overwrite): {exc.what}")
            _refuse_if_written(path)
            return _create(exp, content, exists=True), True
    if exists:
        store = open_store(path, "a")
        same = store.config_hash == want
        if same and not (overwrite and not sharded):
            from storage_schema.fingerprint import dataset_fingerprint

            store.check_fingerprint(dataset_fingerprint(ds.sample_ids, ds.labels),
                                    where=f"{path} vs the dataset of {cfg.source}")
            return store, False
        if not same and not overwrite:
            diffs = _differences(store.config or {}, content)
            clash = _concept_preset_clash(store.config or {}, content, path, cfg.source)
            store.close()
            if clash is not None:
                raise clash
            raise ConfigError(
                "the store was written with a different experiment config", where=str(path),
                expected=f"config hash {store.config_hash}",
                got=f"{want}; differences: " + "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else ""),
                fix="use another store path (--store), or --overwrite to delete and re-extract it")
        store.close()
        _refuse_if_written(path)
        _log(f"re-creating {path} (--overwrite)")
    return _create(exp, content, exists=exists), True


def _create(exp: Experiment, content: dict[str, Any], *, exists: bool):
    from storage_schema.store import create_store

    ds = exp.dataset
    return create_store(exp.config.store, dataset_name=ds.name, sample_ids=ds.sample_ids, labels=ds.labels,
                        splits=exp.splits, class_names=ds.class_names,
                        split_names=("train", "valid", "test"), source=_json_safe(ds.to_dict()),
                        config=content, overwrite=exists)


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
                    else {"imported_from": str(run.checkpoints)})
        store.add_run(run.name, model=exp.spec.to_dict(), architecture=exp.architecture,
                      train_labels=train_labels, corrupted=corrupted,
                      corruption={"fraction": float(run.corruption),
                                  "mode": run.mode if run.corruption > 0 else "none",
                                  "seed": int(run.seed)},
                      training=_json_safe(training), description=run.description)


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
    load_into(model, load_state_dict(ref.path), where=str(ref.path))
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
    for name in [*plan.layers, layout.OUTPUTS]:
        node = layout.block_array_node(run, checkpoint, name)
        checked.add(node)
        try:
            meta = store.block_info(run, checkpoint, name, missing_ok=not info.complete)
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
        extras = _missing_extras(store, config, self.plan, run.name, ref.name, self.external_sets)
        if features_done and not any(extras.values()):
            self.summary.skipped.append(f"{run.name}/{ref.name}")
            return
        model, digest, source = _load_checkpoint_model(self.exp, run, ref)
        if not features_done:
            store.add_checkpoint(run.name, ref.name, epoch=ref.epoch, step=ref.step, source=source,
                                 sha256=digest)
            stats = extract_checkpoint(store, run.name, ref.name, model, self.tds, self.plan,
                                       config.extract, device=self.device, progress=self.progress)
            self.summary.done.append(stats)
        _extract_extras(store, config, self.plan, run.name, ref.name, model, self.tds,
                        self.external_sets, extras, device=self.device, progress=self.progress)
        del model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


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

    t_start = time.perf_counter()
    exp = load_experiment(config)
    selected = config.select_runs(runs)
    device = resolve_device(config.extract.device)
    # Validate everything cheap before anything expensive.
    probe_model = exp.build_model(config.seed)
    plan = plan_extraction(probe_model, exp.spec.input_shape, config.extract)
    del probe_model
    order = global_order(exp, selected)
    i, n = shard
    mine = [item for k, item in enumerate(order) if k % n == i]
    # store_write_errors outside setup_lock: a lock file that cannot be created (a
    # read-only folder) is one line too, not a PermissionError traceback.
    with store_write_errors(config.store), setup_lock(config.store):
        store, created = open_or_create_store(exp, overwrite=overwrite, sharded=n > 1)
        add_targets(store, exp, progress=progress)
        add_sample_types(store, exp, log=_log)  # the control task's recurring types (schema 1.2)
        add_runs(store, exp, selected)
        stored = {name: store.load_reduction_indices(exp.architecture, name) for name in plan.layers}
        plan = plan_extraction(exp.build_model(config.seed), exp.spec.input_shape, config.extract,
                               stored_indices={k: v for k, v in stored.items() if v is not None})
        save_indices(store, exp, plan)
        external_sets = add_concept_sets(store, exp)
    _log(f"{'created' if created else 'opened'} {config.store}: {len(exp.dataset)} samples, "
         f"{len(plan.layers)} layer(s) + outputs, {len(mine)} of {len(order)} checkpoint(s) "
         f"for shard {i}/{n} on {device}")
    summary = ExtractionSummary(store=config.store)
    job = _CheckpointJob(exp, store, plan, external_sets, exp.dataset.torch_dataset(), device,
                         progress, repair, summary)
    deferred = []
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
        for run, ref in deferred:
            # Wait for it, so that exit status 0 means every checkpoint is complete; if its
            # writer was killed meanwhile, the lock comes free and this process finishes it.
            label = f"{run.name}/{ref.name}"

            def waiting(holder: Holder | None, label: str = label) -> None:
                _log(f"{label}: waiting for {holder or 'another process'} to finish it")

            with writer_lock(writer_lock_path(config.store, run.name, ref.name),
                             what=f"checkpoint {label}", wait=True, on_wait=waiting) as stale:
                job(run, ref, stale)
    summary.seconds = time.perf_counter() - t_start
    store.close()
    return summary

