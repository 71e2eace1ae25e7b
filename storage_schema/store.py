"""``ActivationStore``: the one Python interface over both storage backends.

Everything SCHEMA.md requires of a writer or reader is implemented here once, on top
of the small ``Backend`` interface, so that Zarr and HDF5 stores behave identically:

* creation records the dataset identity (sample ids, labels, splits, fingerprint) and,
  for token or word rows (schema 1.3), each row's sequence and position, refusing a
  sequence whose rows lie in two splits;
* targets, runs, checkpoints and blocks (a layer's features, the model's logits) are
  added by name; names are validated before they become paths;
* a block or checkpoint counts as present only once it is marked complete, which a
  writer does after its data is durable; readers list complete ones unless asked;
* opening checks the schema version and every piece of metadata it relies on.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probestore.errors import (
    ConfigError,
    DataError,
    FingerprintMismatchError,
    NotFoundError,
    StoreFormatError,
    did_you_mean,
)
from storage_schema import layout
from storage_schema.backends import COMPRESSIONS, Backend, backend_for
from storage_schema.backends.base import REPAIR_FIX
from storage_schema.fingerprint import dataset_fingerprint
from storage_schema.metadata import (
    BLOCK_KINDS,
    TARGET_KINDS,
    BlockMeta,
    CheckpointMeta,
    DatasetMeta,
    RunMeta,
    TargetMeta,
    require_fields,
)
from storage_schema.names import validate_name
from storage_schema.records import Named
from storage_schema.version import FORMAT_NAME, SCHEMA_VERSION, check_version

DEFAULT_SPLIT_NAMES = ("train", "valid", "test")
FEATURE_DTYPES = ("float32", "float16")


def probestore_version() -> str:
    try:
        from importlib.metadata import version

        return version("probestore")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


def config_hash(config: dict[str, Any] | None) -> str | None:
    """Stable hash of a JSON-able config (key order does not matter)."""
    if config is None:
        return None
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def create_store(path: str | Path, **kwargs: Any) -> ActivationStore:
    """Create a new store; see :meth:`ActivationStore.create`."""
    return ActivationStore.create(path, **kwargs)


def open_store(path: str | Path, mode: str = "r") -> ActivationStore:
    """Open an existing store read-only (``"r"``) or for appending (``"a"``)."""
    return ActivationStore.open(path, mode=mode)


class ActivationStore:
    """A store of per-sample features, logits, labels and concept targets.

    Use :func:`create_store` / :func:`open_store` (or the classmethods) rather than
    the constructor.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.path = backend.path
        attrs = backend.get_attrs("")
        where = f"{self.path} (root attributes)"
        if attrs.get("format") != FORMAT_NAME and "schema_version" not in attrs:
            raise StoreFormatError(
                "not a probestore store",
                where=str(self.path),
                expected=f"root attribute format = {FORMAT_NAME!r}",
                got=repr(attrs.get("format")),
                fix="point to a store written by `probestore extract` or `create_store`",
            )
        self.schema_version = check_version(attrs.get("schema_version"), where)
        require_fields("root", attrs, where, allow_extra=self._allow_extra)
        ds = require_fields("dataset", attrs["dataset"], f"{self.path} (dataset)", allow_extra=self._allow_extra)
        self._root_attrs = attrs
        self.dataset = DatasetMeta(
            name=ds["name"],
            n_samples=ds["n_samples"],
            fingerprint=ds["fingerprint"],
            class_names=list(ds["class_names"]),
            split_names=list(ds["split_names"]),
            source=ds.get("source"),
            unit=ds.get("unit"),
            n_sequences=ds.get("n_sequences"),
            tokenization=ds.get("tokenization"),
        )

    @property
    def _allow_extra(self) -> bool:
        # Extra keys are tolerated only in stores written by a newer minor version.
        from storage_schema.version import parse_version

        return getattr(self, "schema_version", (0, 0)) > parse_version(SCHEMA_VERSION, "")

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        dataset_name: str,
        sample_ids: Sequence[str] | np.ndarray,
        labels: Sequence[int] | np.ndarray,
        splits: Sequence[int] | np.ndarray,
        class_names: Sequence[str],
        split_names: Sequence[str] = DEFAULT_SPLIT_NAMES,
        source: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        overwrite: bool = False,
        unit: str | None = None,
        sequence: Sequence[int] | np.ndarray | None = None,
        position: Sequence[int] | np.ndarray | None = None,
        tokenization: dict[str, Any] | None = None,
    ) -> ActivationStore:
        """Create a store for one dataset (its samples, in this order).

        Parameters
        ----------
        sample_ids
            Stable, unique ids (file paths, ``"t10k:000123"``); they and ``labels``
            define the dataset fingerprint.
        splits
            Integer codes into ``split_names`` per sample.
        config
            The experiment config that produced the store: kept for provenance and
            hashed so that a later run with a different config can be refused.
        unit : {"sequence", "token", "word"}, optional
            What one row is (schema 1.3, SCHEMA.md §12): a whole sequence (a ``cls``,
            ``mean`` or ``last`` reduction), or one token or labelled word of a
            sequence. ``None`` (images) records nothing; with ``sequence`` it
            defaults to ``"token"``.
        sequence, position : array of int, shape (n,), optional
            Token and word rows only, both or neither: each row's sequence index
            (``0..n_sequences-1``, non-decreasing: a sequence's rows are contiguous) and
            token position (for a word, its first sub-token), increasing within a
            sequence. The splits must be drawn by sequence: rows of one sequence in
            two splits are refused, since a probe would then be tested on the
            sentences it was trained on.
        tokenization : dict, optional
            How text became rows (``tokenizer``, ``max_length``, ``truncation``,
            ``alignment``...), recorded as ``dataset.tokenization``.
        """
        path = Path(path)
        backend_cls = backend_for(path)
        sample_ids = np.asarray([str(s) for s in sample_ids])
        labels = np.asarray(labels)
        splits = np.asarray(splits)
        n = len(sample_ids)
        _check_dataset_arrays(sample_ids, labels, splits, class_names, split_names)
        token_rows = _check_token_rows(unit, sequence, position, splits, tokenization, split_names)
        unit = unit if unit is not None or token_rows is None else "token"
        if backend_cls.exists(path) and not overwrite:
            raise ConfigError(
                "a store already exists here",
                where=str(path),
                fix="open it with open_store(path, 'a'), choose another path, or pass overwrite=True (--overwrite)",
            )
        tmp = path.with_name(path.name + ".creating")
        if tmp.exists():
            _remove(tmp)
        # Build the store under a temporary name and rename it into place, so that a
        # crash during creation never leaves a half-made store at ``path``.
        backend = backend_cls.create(tmp, overwrite=True)
        for group in (layout.SAMPLES, layout.TARGETS, layout.RUNS, layout.ARCHITECTURES):
            backend.require_group(group)
        width = max(1, max((len(s) for s in sample_ids), default=1))
        backend.create_array(layout.SAMPLE_ID, shape=(n,), dtype=np.dtype(f"<U{width}"), chunks=(max(1, n),))
        backend.write(layout.SAMPLE_ID, sample_ids)
        backend.create_array(layout.SAMPLE_LABEL, shape=(n,), dtype=np.dtype("int64"), chunks=(max(1, n),))
        backend.write(layout.SAMPLE_LABEL, labels.astype("int64"))
        backend.create_array(layout.SAMPLE_SPLIT, shape=(n,), dtype=np.dtype("int8"), chunks=(max(1, n),))
        backend.write(layout.SAMPLE_SPLIT, splits.astype("int8"))
        dataset: dict[str, Any] = {
            "name": str(dataset_name),
            "n_samples": int(n),
            "fingerprint": dataset_fingerprint(sample_ids, labels),
            "class_names": [str(c) for c in class_names],
            "split_names": [str(s) for s in split_names],
            "source": source,
        }
        if unit is not None:
            dataset["unit"] = unit
        if tokenization is not None:
            dataset["tokenization"] = json.loads(json.dumps(tokenization, default=str))
        if token_rows is not None:
            seq, pos = token_rows
            for node, values, dtype in ((layout.SAMPLE_SEQUENCE, seq, "int64"), (layout.SAMPLE_POSITION, pos, "int32")):
                backend.create_array(node, shape=(n,), dtype=np.dtype(dtype), chunks=(max(1, n),))
                backend.write(node, values.astype(dtype))
            dataset["n_sequences"] = int(seq[-1]) + 1
        backend.update_attrs(
            "",
            {
                "format": FORMAT_NAME,
                "schema_version": SCHEMA_VERSION,
                "probestore_version": probestore_version(),
                "created": _now(),
                "dataset": dataset,
                "config": config,
                "config_hash": config_hash(config),
            },
        )
        backend.close()
        if backend_cls.exists(path):
            _remove(path)
        _sync_tree(tmp)
        os.replace(tmp, path)
        lock = tmp.with_name(tmp.name + ".lock")
        if lock.exists():
            lock.unlink()
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ActivationStore:
        """Open a store; ``mode`` is ``"r"`` (read-only) or ``"a"`` (append)."""
        if mode not in ("r", "a"):
            raise ConfigError("unknown store mode", where="open_store(mode=...)", expected="'r' or 'a'", got=repr(mode))
        path = Path(path)
        backend_cls = backend_for(path)
        if not backend_cls.exists(path):
            raise NotFoundError(
                "no store at this path",
                where=str(path),
                fix="check the path, or create the store with `probestore extract` / create_store()",
            )
        return cls(backend_cls(path, read_only=(mode == "r")))

    @property
    def format(self) -> str:
        return self._backend.format_name

    @property
    def read_only(self) -> bool:
        return self._backend.read_only

    @property
    def backend(self) -> Backend:
        return self._backend

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, dataset={self.dataset.name!r}, n_samples={self.n_samples})"

    # ------------------------------------------------------------------ dataset
    @property
    def n_samples(self) -> int:
        return self.dataset.n_samples

    @property
    def fingerprint(self) -> str:
        return self.dataset.fingerprint

    @property
    def concurrent_writes(self) -> bool:
        """Whether different blocks may be written from several threads at once (Zarr: yes)."""
        return self._backend.concurrent_writes

    @property
    def config(self) -> dict[str, Any] | None:
        return self._root_attrs.get("config")

    @property
    def config_hash(self) -> str | None:
        return self._root_attrs.get("config_hash")

    @property
    def root_attrs(self) -> dict[str, Any]:
        return dict(self._root_attrs)

    def sample_ids(self) -> np.ndarray:
        return self._read_sample_array(layout.SAMPLE_ID)

    # ------------------------------------------------------------------ token rows (schema 1.3)
    @property
    def unit(self) -> str | None:
        """What one row is: ``"sequence"``, ``"token"``, ``"word"``, or ``None`` (one input, e.g. an image)."""
        return self.dataset.unit

    @property
    def n_sequences(self) -> int | None:
        """Number of sequences token or word rows come from (``None`` for other stores)."""
        return self.dataset.n_sequences

    def has_sequences(self) -> bool:
        """Whether rows are parts of sequences (``samples/sequence`` and ``samples/position``, SCHEMA.md §12)."""
        return self._backend.node_kind(layout.SAMPLE_SEQUENCE) == "array"

    def sequence(self) -> np.ndarray:
        """Each row's sequence index (int64, ``0..n_sequences-1``, non-decreasing).

        Rows sharing an index come from one sequence and always share a split: anything
        that partitions rows (cross-validation, MDL blocks, new splits) must partition
        *sequences*, or a probe is tested on the sentences it was trained on.

        Raises
        ------
        NotFoundError
            The rows are not tokens or words (images, or one row per sequence).
        """
        return self._token_array(layout.SAMPLE_SEQUENCE).astype("int64")

    def position(self) -> np.ndarray:
        """Each row's token position in its sequence (int32; a word's first sub-token)."""
        return self._token_array(layout.SAMPLE_POSITION).astype("int32")

    def row_groups(self) -> np.ndarray:
        """The unit splits and folds must respect: the sequence of token rows, else the row itself.

        Analyses that partition rows call this instead of ``np.arange(n_samples)``, so
        token stores are partitioned by sequence and every other store by sample.
        """
        return self.sequence() if self.has_sequences() else np.arange(self.n_samples, dtype=np.int64)

    def _token_array(self, node: str) -> np.ndarray:
        if self._backend.node_kind(node) != "array":
            raise NotFoundError(
                f"the store has no {node} (its rows are {self.unit or 'inputs'}, not tokens or words)",
                where=str(self.path),
                expected="a store of token or word rows (schema 1.3, SCHEMA.md §12)",
                fix="extract with a token reduction (tokens, random_tokens:K) or word labels; "
                    "`probestore inspect STORE` shows the unit",
            )
        return self._read_sample_array(node)

    def labels(self) -> np.ndarray:
        return self._read_sample_array(layout.SAMPLE_LABEL).astype("int64")

    def splits(self) -> np.ndarray:
        return self._read_sample_array(layout.SAMPLE_SPLIT).astype("int8")

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices of one split (e.g. ``"train"``), in store order."""
        if split not in self.dataset.split_names:
            raise NotFoundError(
                f"unknown split {split!r}", where=str(self.path), expected=self.dataset.split_names
            )
        code = self.dataset.split_names.index(split)
        return np.flatnonzero(self.splits() == code)

    def check_fingerprint(self, expected: str, *, where: str = "") -> None:
        """Refuse to combine this store with data of a different dataset or order."""
        if expected != self.fingerprint:
            raise FingerprintMismatchError(
                "dataset fingerprint mismatch: these are not the same samples in the same order",
                where=where or str(self.path),
                expected=self.fingerprint,
                got=expected,
                fix="extract both into one store from the same dataset config (same files, subset, seed)",
            )

    def _read_sample_array(self, node: str) -> np.ndarray:
        values = self._backend.read(node)
        if values.shape != (self.n_samples,):
            raise StoreFormatError(
                "per-sample array has the wrong length",
                where=f"{self.path}/{node}",
                expected=f"shape ({self.n_samples},)",
                got=f"shape {values.shape}",
            )
        return values

    # ------------------------------------------------------------------ sample types (schema 1.2)
    def set_sample_types(self, types: np.ndarray, *, method: dict[str, Any] | None = None,
                         overwrite: bool = False) -> None:
        """Store each sample's *type*: the recurring unit of the control task (SCHEMA.md §11).

        Hewitt & Liang's control labels are a seeded function of the word *type*, which
        recurs in held-out data, so a probe can learn the control task by memorizing
        types. Any integer ids are accepted (word-type ids of a vocabulary, cluster ids of
        images); only equality between ids matters. Like the labels, the types are a
        property of the dataset: written once, and re-writing other values is refused
        unless ``overwrite`` (the control numbers of earlier analyses would change).

        Parameters
        ----------
        types : ndarray of int, shape (n_samples,)
        method : dict, optional
            How the types were made (e.g. ``{"kind": "kmeans", "n_clusters": 100,
            "seed": 0}``); recorded as the array's ``method`` attribute.
        overwrite : bool
            Replace existing, different types.
        """
        types = np.asarray(types)
        if types.shape != (self.n_samples,) or types.dtype.kind not in "iu":
            raise DataError(
                "sample types must be one integer per sample",
                where="set_sample_types",
                expected=f"integer array of shape ({self.n_samples},) in store order",
                got=f"{types.dtype} array of shape {types.shape}",
                fix="map each sample's type (word type, input cluster) to an integer id",
            )
        if self.has_sample_types() and not overwrite:
            if np.array_equal(self.sample_types(), types.astype("int64")):
                return
            raise ConfigError(
                "the store already holds other sample types",
                where=f"{self.path}/{layout.SAMPLE_TYPE}",
                fix="keep the stored types, or pass overwrite=True (control probes of earlier analyses then "
                    "no longer match the store)",
            )
        self._backend.create_array(layout.SAMPLE_TYPE, shape=(self.n_samples,), dtype=np.dtype("int64"),
                                   chunks=(max(1, self.n_samples),))
        self._backend.write(layout.SAMPLE_TYPE, types.astype("int64"))
        # Attributes last: an array without ``n_types`` is a write in progress, not types.
        attrs = {"n_types": int(np.unique(types).size), "method": json.loads(json.dumps(method or {}, default=str))}
        self._backend.update_attrs(layout.SAMPLE_TYPE, attrs)
        if self.schema_version < (1, 2):  # an older store gains a 1.2 node: say so (§2), and no more
            self._backend.update_attrs("", {"schema_version": "1.2"})
            self._root_attrs["schema_version"] = "1.2"
            self.schema_version = check_version("1.2", str(self.path))

    def has_sample_types(self) -> bool:
        """Whether the store holds complete sample types (schema 1.2, OPTIONAL)."""
        return (self._backend.node_kind(layout.SAMPLE_TYPE) == "array"
                and "n_types" in self._backend.get_attrs(layout.SAMPLE_TYPE))

    def sample_types(self) -> np.ndarray:
        """Each sample's type id (int64, store order); see :meth:`set_sample_types`.

        Raises
        ------
        NotFoundError
            The store has no types (written before schema 1.2, or by ``create_store``
            without :meth:`set_sample_types`).
        """
        if not self.has_sample_types():
            raise NotFoundError(
                "the store has no sample types (samples/type, schema 1.2)",
                where=str(self.path),
                fix="rerun `probestore extract CONFIG` (adds the types to a store of that config, keeping its features), "
                    "or call ActivationStore.set_sample_types()",
            )
        return self._read_sample_array(layout.SAMPLE_TYPE).astype("int64")

    def sample_types_info(self) -> dict[str, Any]:
        """Attributes of the sample types (``n_types``, ``method``); ``{}`` without types."""
        return self._backend.get_attrs(layout.SAMPLE_TYPE) if self.has_sample_types() else {}

    # ------------------------------------------------------------------ targets
    def add_target(
        self,
        name: str,
        values: np.ndarray,
        kind: str,
        *,
        description: str = "",
        family: str = "",
        overwrite: bool = False,
    ) -> None:
        """Store a per-sample target (a concept measure, a class label, a binary concept)."""
        node = layout.target_node(name)
        if kind not in TARGET_KINDS:
            raise ConfigError(f"unknown target kind {kind!r}", where=f"target {name!r}", expected=TARGET_KINDS)
        values = np.asarray(values)
        if values.shape != (self.n_samples,):
            raise DataError(
                "target has the wrong number of samples",
                where=f"target {name!r}",
                expected=f"shape ({self.n_samples},) (one value per sample, store order)",
                got=f"shape {values.shape}",
            )
        dtype = {"class": "int64", "binary": "bool", "continuous": "float64"}[kind]
        if kind == "continuous" and values.dtype.kind not in "fiub":
            raise DataError("continuous target is not numeric", where=f"target {name!r}", got=str(values.dtype))
        if self._backend.node_kind(node) is not None and not overwrite:
            existing = self.read_target(name)
            if np.array_equal(existing, values.astype(dtype), equal_nan=kind == "continuous"):
                return
            raise ConfigError(
                f"target {name!r} already exists with different values",
                where=str(self.path),
                fix="use another name or overwrite=True",
            )
        self._backend.create_array(
            node,
            shape=(self.n_samples,),
            dtype=np.dtype(dtype),
            chunks=(max(1, self.n_samples),),
            attrs={"kind": kind, "description": description, "family": family},
        )
        self._backend.write(node, values.astype(dtype))

    def target_names(self) -> list[str]:
        return self._backend.list_children(layout.TARGETS)[1]

    def target_info(self, name: str) -> TargetMeta:
        node = layout.target_node(name)
        if self._backend.node_kind(node) != "array":
            raise NotFoundError(
                f"unknown target {name!r}", where=str(self.path), expected=self.target_names() or "no targets"
            )
        attrs = require_fields("target", self._backend.get_attrs(node), f"{self.path}/{node}", allow_extra=self._allow_extra)
        if attrs["kind"] not in TARGET_KINDS:
            raise StoreFormatError("unknown target kind", where=f"{self.path}/{node}", expected=TARGET_KINDS, got=attrs["kind"])
        dtype = str(self._backend.array_meta(node)[1])
        return TargetMeta(name, attrs["kind"], attrs.get("description", ""), attrs.get("family", ""), dtype)

    def read_target(self, name: str) -> np.ndarray:
        self.target_info(name)
        return self._read_sample_array(layout.target_node(name))

    # ------------------------------------------------------------------ runs
    def add_run(
        self,
        name: str,
        *,
        model: dict[str, Any],
        architecture: str,
        train_labels: np.ndarray,
        corrupted: np.ndarray,
        corruption: dict[str, Any],
        training: dict[str, Any] | None = None,
        description: str = "",
    ) -> None:
        """Add a run (one trained model variant); re-adding identical metadata is a no-op.

        ``corruption`` holds ``fraction`` (0 generalizing .. 1 fully memorizing),
        ``mode`` (``"none"``, ``"uniform"``, ``"shuffle"``) and ``seed``.
        """
        node = layout.run_node(name)
        validate_name(architecture, "architecture")
        train_labels = np.asarray(train_labels)
        corrupted = np.asarray(corrupted)
        for label, arr in (("train_labels", train_labels), ("corrupted", corrupted)):
            if arr.shape != (self.n_samples,):
                raise DataError(
                    f"run {label} has the wrong number of samples",
                    where=f"run {name!r}",
                    expected=f"shape ({self.n_samples},)",
                    got=f"shape {arr.shape}",
                )
        attrs = {
            "model": model,
            "architecture": architecture,
            "training": training or {},
            "corruption": corruption,
            "description": description,
        }
        require_fields("run", attrs, f"run {name!r}")
        require_fields("corruption", corruption, f"run {name!r} corruption")
        half_made = self._backend.node_kind(node) == "group" and "architecture" not in self._backend.get_attrs(node)
        if half_made:  # a writer was killed before the run's metadata: start it again
            self._backend.delete(node)
        if self._backend.node_kind(node) == "group":
            existing = self.run_info(name)
            same = (
                existing.model == json.loads(json.dumps(model))
                and existing.architecture == architecture
                and np.array_equal(self.train_labels(name), train_labels)
                and np.array_equal(self.corrupted_mask(name), corrupted.astype(bool))
            )
            if not same:
                raise ConfigError(
                    f"run {name!r} already exists with a different model or labels",
                    where=str(self.path),
                    fix="use another run name, or re-create the store with --overwrite",
                )
            return
        self._backend.require_group(node)
        self._backend.require_group(f"{node}/checkpoints")
        chunks = (max(1, self.n_samples),)
        self._backend.create_array(f"{node}/train_labels", shape=(self.n_samples,), dtype=np.dtype("int64"), chunks=chunks)
        self._backend.write(f"{node}/train_labels", train_labels.astype("int64"))
        self._backend.create_array(f"{node}/corrupted", shape=(self.n_samples,), dtype=np.dtype("bool"), chunks=chunks)
        self._backend.write(f"{node}/corrupted", corrupted.astype(bool))
        # The run's metadata goes last: a run without it is not listed.
        self._backend.update_attrs(node, json.loads(json.dumps(attrs)))
        if self.schema_version < (1, 3) and {"head", "class_names", "class_map"} & set(model):
            # a model head of other classes (SCHEMA.md §4.3) is a 1.3 item: say so (§2)
            self._backend.update_attrs("", {"schema_version": "1.3"})
            self._root_attrs["schema_version"] = "1.3"
            self.schema_version = check_version("1.3", str(self.path))

    def runs(self) -> list[Named[RunMeta]]:
        """Runs whose metadata is written, as names carrying their :class:`RunMeta`.

        Like :meth:`checkpoints` and :meth:`layers`, each item is a ``str`` (the name;
        pass it back anywhere a name is taken) with the record's attributes
        (``.architecture``, ``.corruption_fraction``...), read on first use.
        """
        names = self._backend.list_children(layout.RUNS)[0]
        return [Named(n, load=functools.partial(self.run_info, n)) for n in names
                if "architecture" in self._backend.get_attrs(f"{layout.RUNS}/{n}")]

    def run_info(self, name: str) -> RunMeta:
        node = layout.run_node(name)
        if self._backend.node_kind(node) != "group":
            raise NotFoundError(f"unknown run {name!r}", where=str(self.path), expected=self.runs() or "no runs")
        where = f"{self.path}/{node}"
        attrs = require_fields("run", self._backend.get_attrs(node), where, allow_extra=self._allow_extra)
        corruption = require_fields("corruption", attrs["corruption"], f"{where} corruption", allow_extra=self._allow_extra)
        return RunMeta(
            name=name,
            model=attrs["model"],
            architecture=attrs["architecture"],
            corruption_fraction=float(corruption["fraction"]),
            corruption_mode=corruption["mode"],
            corruption_seed=corruption.get("seed"),
            training=attrs.get("training", {}),
            description=attrs.get("description", ""),
        )

    def train_labels(self, run: str) -> np.ndarray:
        """The labels the run's model was trained on (true labels outside the corrupted set)."""
        return self._read_sample_array(f"{layout.run_node(run)}/train_labels").astype("int64")

    def corrupted_mask(self, run: str) -> np.ndarray:
        return self._read_sample_array(f"{layout.run_node(run)}/corrupted").astype(bool)

    # ------------------------------------------------------------------ checkpoints
    def add_checkpoint(
        self,
        run: str,
        name: str,
        *,
        epoch: int | None,
        step: int | None = None,
        source: str | None = None,
        sha256: str | None = None,
    ) -> None:
        """Register a checkpoint (incomplete until :meth:`mark_checkpoint_complete`).

        Re-adding an existing checkpoint is allowed only with the same source hash, so a
        resumed extraction cannot mix features of two different weight files.
        """
        self.run_info(run)
        node = layout.checkpoint_node(run, name)
        if self._backend.node_kind(node) == "group":
            attrs = self._backend.get_attrs(node)
            if "complete" in attrs:
                if attrs.get("sha256") != sha256 or attrs.get("epoch") != epoch:
                    raise ConfigError(
                        f"checkpoint {run}/{name} already exists for another weight file",
                        where=str(self.path),
                        expected=f"sha256 {attrs.get('sha256')} epoch {attrs.get('epoch')}",
                        got=f"sha256 {sha256} epoch {epoch}",
                        fix="use --overwrite to re-extract the store, or another run name",
                    )
                return
        self._backend.require_group(node)
        self._backend.require_group(f"{node}/layers")
        self._backend.update_attrs(
            node,
            {"epoch": epoch, "step": step, "source": source, "sha256": sha256, "complete": False, "completed_at": None},
        )

    def checkpoints(self, run: str, *, include_incomplete: bool = False) -> list[Named[CheckpointMeta]]:
        """Checkpoints of a run, by epoch then name; only complete ones unless asked.

        Each is its name (a ``str``) carrying the :class:`CheckpointMeta` (``.epoch``, ``.complete``...).
        """
        self.run_info(run)
        base = f"{layout.run_node(run)}/checkpoints"
        out = []
        for name in self._backend.list_children(base)[0]:
            meta = self.checkpoint_info(run, name)
            if meta is not None and (meta.complete or include_incomplete):
                out.append(meta)
        out.sort(key=lambda c: (c.epoch if c.epoch is not None else -1, c.name))
        return [Named(c.name, c) for c in out]

    def checkpoint_info(self, run: str, name: str) -> CheckpointMeta | None:
        """Metadata of one checkpoint, or ``None`` while it has not been registered yet."""
        node = layout.checkpoint_node(run, name)
        if self._backend.node_kind(node) != "group":
            return None
        attrs = self._backend.get_attrs(node)
        if "complete" not in attrs:
            return None
        require_fields("checkpoint", attrs, f"{self.path}/{node}", allow_extra=self._allow_extra)
        return CheckpointMeta(
            run, name, attrs["epoch"], attrs.get("step"), attrs.get("source"), attrs.get("sha256"), attrs["complete"]
        )

    def mark_checkpoint_complete(self, run: str, name: str) -> None:
        """Mark a checkpoint complete once all of its blocks are complete and durable."""
        blocks = self.blocks(run, name, include_incomplete=True)
        unfinished = [b.name for b in blocks if not b.complete]
        if unfinished or not blocks:
            raise StoreFormatError(
                "cannot mark a checkpoint complete while blocks are unfinished",
                where=f"{self.path} {run}/{name}",
                got=unfinished or "no blocks",
            )
        _sync_tree(self.path)
        self._backend.update_attrs(layout.checkpoint_node(run, name), {"complete": True, "completed_at": _now()})

    def append_history(self, entry: dict[str, Any]) -> None:
        """Append one entry to the root ``history`` (SCHEMA.md §4.1), raising an older store to 1.3.

        Used by deletes (:mod:`storage_schema.edit`); a growth writes its entry with its new config.
        """
        if self.read_only:
            raise ConfigError("the store is open read-only", where=str(self.path),
                              fix="open it with mode 'a' to record history")
        history = [*(self._root_attrs.get("history") or []), json.loads(json.dumps(entry))]
        attrs: dict[str, Any] = {"history": history}
        if self.schema_version < (1, 3):  # the history is a 1.3 item (§2)
            attrs["schema_version"] = "1.3"
        self._backend.update_attrs("", attrs)
        self._root_attrs.update(attrs)
        if "schema_version" in attrs:
            self.schema_version = check_version("1.3", str(self.path))

    # ------------------------------------------------------------------ deleting
    # Each step removes one node at once (a Zarr directory is renamed out of the tree
    # before it is emptied; HDF5 unlinks a group in one call), in an order where every
    # intermediate state is a valid store: a killed delete leaves what was named either
    # present or gone, never half of it. ``probestore delete`` adds locking and listing.

    def delete_run(self, run: str) -> list[str]:
        """Remove a run and all its checkpoints; return the nodes removed.

        The shared reduction indices of its architecture (§4.6) go too when no other run
        of that architecture is left (they are kept otherwise: the other runs use them).
        """
        architecture = self.run_info(run).architecture
        removed = [self._remove_node(layout.run_node(run))]
        others = [r for r in self.runs() if self.run_info(r).architecture == architecture]
        arch_node = f"{layout.ARCHITECTURES}/{validate_name(architecture, 'architecture')}"
        if not others and self._backend.node_kind(arch_node) == "group":
            removed.append(self._remove_node(arch_node))
        return removed

    def delete_checkpoint(self, run: str, name: str) -> list[str]:
        """Remove a checkpoint and all its blocks; return the nodes removed (none if absent).

        A checkpoint that is only half registered (a killed writer) is removed too;
        ``probestore extract CONFIG`` re-extracts a removed checkpoint its config lists.
        """
        node = layout.checkpoint_node(run, name)
        if self._backend.node_kind(node) is None:
            self.run_info(run)  # an unknown run is an error; a missing checkpoint is not
            return []
        return [self._remove_node(node)]

    def delete_layer(self, run: str, checkpoint: str, layer: str) -> list[str]:
        """Remove one layer's block from a checkpoint; return the nodes removed.

        Removed with it: the external concept-set features of that layer (§10); the
        layer's name leaves the checkpoint's ``layer_order``. The checkpoint keeps its
        completion flag: its other blocks are untouched. The model outputs are refused
        (a complete checkpoint must hold them): delete the checkpoint instead.
        """
        if layer == layout.OUTPUTS:
            raise ConfigError(
                "the outputs block (the model's logits) cannot be deleted on its own",
                where=f"{self.path} {run}/{checkpoint}/{layer}",
                expected="a layer name", got=repr(layer),
                fix=f"delete the whole checkpoint ({run}/{checkpoint}), or keep the outputs",
            )
        self.block_info(run, checkpoint, layer)  # NotFoundError naming the known blocks
        from storage_schema.concept_sets import CONCEPT_SETS, concept_set_block_node

        ckpt_node = layout.checkpoint_node(run, checkpoint)
        removed = []
        # Concept-set features first: one whose layer is gone would be a violation (§10).
        if self._backend.node_kind(f"{ckpt_node}/{CONCEPT_SETS}") == "group":
            for set_name in self._backend.list_children(f"{ckpt_node}/{CONCEPT_SETS}")[0]:
                set_block = concept_set_block_node(run, checkpoint, set_name, layer)
                if self._backend.node_kind(set_block) is not None:
                    removed.append(self._remove_node(set_block))
        removed.append(self._remove_node(layout.block_node(run, checkpoint, layer)))
        order = self._backend.get_attrs(ckpt_node).get("layer_order")
        if isinstance(order, list) and layer in order:
            self.set_layer_order(run, checkpoint, [name for name in order if name != layer])
        return removed

    def _remove_node(self, node: str) -> str:
        """Remove one group or array in a single step; return ``node``."""
        if self.read_only:
            raise ConfigError("the store is open read-only", where=str(self.path),
                              fix="open it with open_store(path, 'a') to delete from it")
        folder = self.path / node
        if self._backend.format_name == "zarr" and folder.is_dir():
            import secrets
            import shutil

            # Rename the whole directory away first (one atomic rename: the node is there
            # or gone), then empty it at leisure. Beside the store, so no reader meets it;
            # inside its parent as a hidden name (which listings skip) where the store is
            # a mount point and a rename cannot leave it.
            trash = self.path.with_name(f".{self.path.name}.deleting-{secrets.token_hex(6)}")
            try:
                os.replace(folder, trash)
            except OSError:
                trash = folder.with_name(f".deleting-{folder.name}.{secrets.token_hex(6)}")
                os.replace(folder, trash)
            self._backend.delete(node)  # drops the backend's cached handles below it
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self._backend.delete(node)
        return node

    # ------------------------------------------------------------------ blocks
    def create_block(
        self,
        run: str,
        checkpoint: str,
        block: str,
        *,
        n_features: int,
        dtype: str = "float32",
        source_shape: Sequence[int] | None = None,
        reduction: dict[str, Any] | None = None,
        chunk_rows: int | None = None,
        compression: str = "fast",
    ) -> BlockMeta:
        """Create a block (a layer's features, or ``layout.OUTPUTS`` for logits).

        An existing block with the same shape and description is kept as it is, so a
        resumed writer continues from its ``rows_done``; a different one is an error.
        ``compression`` (:data:`storage_schema.backends.base.COMPRESSIONS`) only changes
        the bytes on disk, never what is read back.
        """
        if dtype not in FEATURE_DTYPES:
            raise ConfigError("unsupported feature dtype", where=f"block {block!r}", expected=FEATURE_DTYPES, got=dtype)
        if compression not in COMPRESSIONS:
            raise ConfigError("unknown compression", where=f"block {block!r}", expected=COMPRESSIONS,
                              got=repr(compression), fix=did_you_mean(str(compression), COMPRESSIONS) or None)
        if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer))
                                       or chunk_rows < 1):
            raise ConfigError("chunk_rows must be a positive integer", where=f"block {block!r}",
                              expected=f"None (about 4 MiB per chunk, at least {layout.MIN_CHUNK_ROWS} rows) "
                                       "or an integer >= 1", got=repr(chunk_rows))
        if self.checkpoint_info(run, checkpoint) is None:
            raise NotFoundError(
                f"checkpoint {run}/{checkpoint} is not registered", where=str(self.path), fix="call add_checkpoint first"
            )
        kind = "logits" if block == layout.OUTPUTS else "features"
        group = layout.block_node(run, checkpoint, block)
        array = layout.block_array_node(run, checkpoint, block)
        attrs = {
            "kind": kind,
            "n_features": int(n_features),
            "source_shape": [int(s) for s in source_shape] if source_shape is not None else [int(n_features)],
            "reduction": json.loads(json.dumps(reduction)) if reduction is not None else {"kind": "none"},
        }
        if self._backend.node_kind(array) == "array":
            existing = self._backend.get_attrs(group)
            shape, old_dtype, _ = self._backend.array_meta(array)
            same = (
                all(existing.get(k) == v for k, v in attrs.items())
                and shape == (self.n_samples, int(n_features))
                and str(old_dtype) == dtype
            )
            if same:
                return self.block_info(run, checkpoint, block)
            raise ConfigError(
                f"block {run}/{checkpoint}/{block} already exists with another shape or reduction",
                where=str(self.path),
                expected=f"{existing.get('n_features')} features, {existing.get('reduction')}, {old_dtype}",
                got=f"{n_features} features, {reduction}, {dtype}",
                fix="use --overwrite to re-extract, or a new store",
            )
        rows = chunk_rows or layout.chunk_rows_for(int(n_features), np.dtype(dtype).itemsize, self.n_samples)
        # Attributes first, array last: until the array exists readers skip the block, so
        # a reader (or a writer killed here) never meets an array without metadata.
        self._backend.require_group(group)
        self._backend.update_attrs(group, {**attrs, "complete": False, "rows_done": 0})
        self._backend.create_array(
            array,
            shape=(self.n_samples, int(n_features)),
            dtype=np.dtype(dtype),
            chunks=(max(1, min(rows, self.n_samples)), max(1, int(n_features))),
            compression=compression,
        )
        return self.block_info(run, checkpoint, block)

    def write_rows(self, run: str, checkpoint: str, block: str, start: int, values: np.ndarray) -> None:
        """Write rows ``start:start+len(values)`` of a block; refuse NaN/Inf and bad shapes."""
        # The array's own shape and dtype, not block_info: this runs once per chunk
        # while extracting, and re-reading the block's metadata each time was a
        # measurable share of the writer's time.
        node = layout.block_array_node(run, checkpoint, block)
        try:
            (_, n_features), dtype, _ = self._backend.array_meta(node)
        except NotFoundError:
            self.block_info(run, checkpoint, block)  # raises the error that names the block
            raise
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != n_features or start < 0 or start + len(values) > self.n_samples:
            raise DataError(
                "rows do not fit the block",
                where=f"{run}/{checkpoint}/{block}",
                expected=f"[k, {n_features}] within {self.n_samples} rows",
                got=f"{list(values.shape)} at row {start}",
            )
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).any(axis=1).sum())
            raise DataError(
                "non-finite features (NaN/Inf)",
                where=f"{run}/{checkpoint}/{block} rows {start}..{start + len(values)}",
                got=f"{bad} rows with NaN/Inf",
                fix="check the checkpoint (diverged training?) or use a wider dtype (float32 instead of float16)",
            )
        self._backend.write(node, values.astype(dtype, copy=False), start)

    def set_rows_done(self, run: str, checkpoint: str, block: str, rows_done: int) -> None:
        """Record that rows ``[0, rows_done)`` of a block are written (for resuming)."""
        self._backend.update_attrs(layout.block_node(run, checkpoint, block), {"rows_done": int(rows_done)})

    def mark_block_complete(self, run: str, checkpoint: str, block: str) -> None:
        self._backend.update_attrs(
            layout.block_node(run, checkpoint, block), {"rows_done": self.n_samples, "complete": True}
        )

    def blocks(self, run: str, checkpoint: str, *, include_incomplete: bool = False) -> list[Named[BlockMeta]]:
        """Layers of a checkpoint (in extraction order) followed by the outputs block.

        Each is its name (a ``str``) carrying the :class:`BlockMeta` (``.n_features``, ``.complete``...).
        """
        base = layout.checkpoint_node(run, checkpoint)
        names = []
        if self._backend.node_kind(f"{base}/layers") == "group":
            layer_names = self._backend.list_children(f"{base}/layers")[0]
            order = self._backend.get_attrs(base).get("layer_order")
            if isinstance(order, list):
                layer_names = sorted(layer_names, key=lambda n: order.index(n) if n in order else len(order))
            names.extend(layer_names)
        if self._backend.node_kind(f"{base}/{layout.OUTPUTS}") == "group":
            names.append(layout.OUTPUTS)
        out = []
        for name in names:
            info = self.block_info(run, checkpoint, name, missing_ok=True)
            if info is not None and (info.complete or include_incomplete):
                out.append(Named(name, info))
        return out

    def layers(self, run: str, checkpoint: str, *, include_incomplete: bool = False) -> list[Named[BlockMeta]]:
        """Feature blocks of a checkpoint (without the outputs block)."""
        return [b for b in self.blocks(run, checkpoint, include_incomplete=include_incomplete) if b.kind == "features"]

    def set_layer_order(self, run: str, checkpoint: str, names: Sequence[str]) -> None:
        """Remember the model order of layers (lists are otherwise alphabetical)."""
        self._backend.update_attrs(layout.checkpoint_node(run, checkpoint), {"layer_order": list(names)})

    def block_info(self, run: str, checkpoint: str, block: str, *, missing_ok: bool = False) -> BlockMeta:
        group = layout.block_node(run, checkpoint, block)
        array = layout.block_array_node(run, checkpoint, block)
        if self._backend.node_kind(array) != "array":
            if missing_ok:
                return None  # type: ignore[return-value]
            ckpt = self.checkpoint_info(run, checkpoint)
            if ckpt is not None and ckpt.complete and self._backend.node_kind(group) == "group":
                raise StoreFormatError(
                    f"the array of block {run}/{checkpoint}/{block} is missing in a complete checkpoint",
                    where=f"{self.path}/{array}", fix=REPAIR_FIX,
                )
            known = [b.name for b in self.blocks(run, checkpoint, include_incomplete=True)] if self.checkpoint_info(run, checkpoint) else []
            raise NotFoundError(
                f"no block {block!r} in {run}/{checkpoint}",
                where=str(self.path),
                expected=known or "a registered checkpoint",
                fix="`probestore inspect STORE` lists what is stored",
            )
        attrs = require_fields("block", self._backend.get_attrs(group), f"{self.path}/{group}", allow_extra=self._allow_extra)
        if attrs["kind"] not in BLOCK_KINDS:
            raise StoreFormatError("unknown block kind", where=f"{self.path}/{group}", expected=BLOCK_KINDS, got=attrs["kind"])
        shape, dtype, chunks = self._backend.array_meta(array)
        if shape != (self.n_samples, attrs["n_features"]):
            raise StoreFormatError(
                "block array has the wrong shape",
                where=f"{self.path}/{array}",
                expected=f"({self.n_samples}, {attrs['n_features']})",
                got=str(shape),
            )
        return BlockMeta(
            run=run,
            checkpoint=checkpoint,
            name=block,
            kind=attrs["kind"],
            n_features=attrs["n_features"],
            dtype=str(dtype),
            chunk_rows=int(chunks[0]),
            source_shape=attrs.get("source_shape"),
            reduction=attrs.get("reduction"),
            complete=attrs["complete"],
            rows_done=attrs["rows_done"],
        )

    def stored_bytes(self, run: str, checkpoint: str, block: str) -> int:
        return self._backend.stored_bytes(layout.block_node(run, checkpoint, block))

    def _readable_block(self, run: str, checkpoint: str, block: str, allow_incomplete: bool) -> BlockMeta:
        info = self.block_info(run, checkpoint, block)
        if not info.complete and not allow_incomplete:
            raise NotFoundError(
                f"block {run}/{checkpoint}/{block} is not complete yet",
                where=str(self.path),
                fix="wait for (or resume) the extraction; pass allow_incomplete=True to read anyway",
            )
        return info

    def read_block(
        self,
        run: str,
        checkpoint: str,
        block: str,
        rows: slice | np.ndarray | None = None,
        *,
        allow_incomplete: bool = False,
        check_chunks: bool = True,
    ) -> np.ndarray:
        """Read a block (or some of its rows) into memory."""
        self._readable_block(run, checkpoint, block, allow_incomplete)
        node = layout.block_array_node(run, checkpoint, block)
        if check_chunks and not allow_incomplete:
            present, total = self._backend.initialized_chunks(node)
            if present < total:
                raise StoreFormatError(
                    "missing chunks in a block marked complete",
                    where=f"{self.path}/{node}",
                    expected=f"{total} chunks",
                    got=f"{present} chunks on disk",
                    fix=REPAIR_FIX,
                )
        return self._backend.read(node, rows)

    def read_layer(self, run: str, checkpoint: str, layer: str, rows=None, **kwargs: Any) -> np.ndarray:
        """A layer's features ``[n_samples, n_features]`` (or the selected rows)."""
        return self.read_block(run, checkpoint, layer, rows, **kwargs)

    def read_logits(self, run: str, checkpoint: str, rows=None, **kwargs: Any) -> np.ndarray:
        """The model's outputs ``[n_samples, n_classes]``."""
        return self.read_block(run, checkpoint, layout.OUTPUTS, rows, **kwargs)

    def block_dask(self, run: str, checkpoint: str, block: str, *, allow_incomplete: bool = False):
        """A lazy dask array over a block's chunks."""
        self._readable_block(run, checkpoint, block, allow_incomplete)
        return self._backend.to_dask(layout.block_array_node(run, checkpoint, block))

    # ------------------------------------------------------------------ extra per-layer arrays
    def write_extra(self, run: str, checkpoint: str, block: str, array: str, values: np.ndarray, start: int = 0) -> None:
        """Write an optional per-layer array (e.g. reduced gradients) beside the features.

        Extras share the block's rows; readers that do not know an extra ignore it
        (schema minor-version rule), so new analyses need no new major version.
        """
        info = self.block_info(run, checkpoint, block)
        node = layout.block_array_node(run, checkpoint, block, array)
        values = np.asarray(values)
        if self._backend.node_kind(node) != "array":
            self._backend.create_array(
                node,
                shape=(self.n_samples, *values.shape[1:]),
                dtype=values.dtype,
                chunks=(info.chunk_rows, *values.shape[1:]),
            )
        self._backend.write(node, values, start)

    def read_extra(self, run: str, checkpoint: str, block: str, array: str) -> np.ndarray:
        self._readable_block(run, checkpoint, block, False)
        return self._backend.read(layout.block_array_node(run, checkpoint, block, array))

    # ------------------------------------------------------------------ shared reduction indices
    def save_reduction_indices(
        self, architecture: str, layer: str, indices: np.ndarray, *, reduction: dict[str, Any], source_shape: Sequence[int]
    ) -> None:
        """Store a layer's random feature subset once per architecture; refuse a different one."""
        node = layout.indices_node(architecture, layer)
        indices = np.asarray(indices, dtype="int64")
        existing = self.load_reduction_indices(architecture, layer)
        if existing is not None:
            if not np.array_equal(existing, indices):
                raise ConfigError(
                    f"stored random feature indices of {architecture}/{layer} differ from the ones drawn now",
                    where=str(self.path),
                    fix="use the same reduction seed as the store (see `probestore inspect`), or a new store",
                )
            return
        self._backend.require_group(f"{layout.ARCHITECTURES}/{architecture}")
        self._backend.require_group(node)
        self._backend.create_array(f"{node}/indices", shape=indices.shape, dtype=np.dtype("int64"), chunks=(max(1, len(indices)),))
        self._backend.write(f"{node}/indices", indices)
        self._backend.update_attrs(
            node,
            {"layer": layer, "reduction": json.loads(json.dumps(reduction)), "source_shape": [int(s) for s in source_shape]},
        )

    def load_reduction_indices(self, architecture: str, layer: str) -> np.ndarray | None:
        node = layout.indices_node(architecture, layer)
        if self._backend.node_kind(f"{node}/indices") != "array":
            return None
        attrs = self._backend.get_attrs(node)
        if "layer" not in attrs:  # written by a process that has not finished yet
            return None
        return self._backend.read(f"{node}/indices").astype("int64")

    def architectures(self) -> dict[str, list[str]]:
        out = {}
        for arch in self._backend.list_children(layout.ARCHITECTURES)[0]:
            out[arch] = self._backend.list_children(f"{layout.ARCHITECTURES}/{arch}")[0]
        return out


def _check_dataset_arrays(sample_ids, labels, splits, class_names, split_names) -> None:
    n = len(sample_ids)
    if n == 0:
        raise DataError("a store needs at least one sample", where="create_store", got="0 samples")
    for label, arr in (("labels", labels), ("splits", splits)):
        if arr.shape != (n,):
            raise DataError(
                f"{label} do not match the samples",
                where="create_store",
                expected=f"shape ({n},) like sample_ids",
                got=f"shape {arr.shape}",
            )
    if len(set(sample_ids.tolist())) != n:
        raise DataError("sample ids are not unique", where="create_store", fix="give every sample its own id")
    if labels.dtype.kind not in "iu":
        raise DataError("labels must be integers", where="create_store", got=str(labels.dtype))
    if n and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(
            "labels out of range of class_names",
            where="create_store",
            expected=f"0..{len(class_names) - 1}",
            got=f"{labels.min()}..{labels.max()}",
        )
    if splits.dtype.kind not in "iu" or (n and (splits.min() < 0 or splits.max() >= len(split_names))):
        raise DataError("split codes out of range", where="create_store", expected=f"0..{len(split_names) - 1}")
    for name in split_names:
        validate_name(name, "split")


def _check_token_rows(unit, sequence, position, splits: np.ndarray, tokenization,
                      split_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The sequence and position of token rows (SCHEMA.md §12), checked before anything is written.

    Refuses one array without the other, a unit that contradicts them, ids that are not
    ``0..n_sequences-1`` with each sequence's rows together, negative or unordered
    positions, and (the leak) a sequence whose rows lie in more than one split.
    """
    where = "create_store"
    if unit is not None and unit not in layout.UNITS:
        raise ConfigError("unknown row unit", where=f"{where}(unit=...)", expected=layout.UNITS, got=repr(unit),
                          fix=did_you_mean(str(unit), layout.UNITS) or None)
    if tokenization is not None and not isinstance(tokenization, dict):
        raise DataError("tokenization must be a mapping", where=f"{where}(tokenization=...)",
                        got=type(tokenization).__name__)
    if (sequence is None) != (position is None):
        given, missing = ("sequence", "position") if position is None else ("position", "sequence")
        raise DataError(f"token rows need both {given} and {missing}", where=where,
                        expected="sequence= and position= together (or neither)", got=f"only {given}=")
    if sequence is None:
        if unit in layout.TOKEN_UNITS:
            raise DataError(f"{unit} rows need their sequence and position", where=where,
                            expected="sequence= and position= arrays, one value per row", got="neither")
        return None
    if unit is not None and unit not in layout.TOKEN_UNITS:
        raise DataError(f"rows of unit {unit!r} have no sequence and position", where=where,
                        expected=f"unit one of {layout.TOKEN_UNITS} with sequence=/position=", got=repr(unit))
    seq, pos = np.asarray(sequence), np.asarray(position)
    n = len(splits)
    for name, arr in (("sequence", seq), ("position", pos)):
        if arr.shape != (n,) or arr.dtype.kind not in "iu":
            raise DataError(f"{name} must be one integer per row", where=f"{where}({name}=...)",
                            expected=f"integer array of shape ({n},)", got=f"{arr.dtype} array of shape {arr.shape}")
    problem = token_row_problem(seq.astype(np.int64), pos.astype(np.int64), splits, split_names)
    if problem is not None:
        raise DataError(f"invalid token rows: {problem}", where=where,
                        fix="number sequences 0..n_sequences-1 in row order, keep each sequence's rows together "
                            "in increasing position, and draw splits by sequence (extract.splits)")
    return seq, pos


def token_row_problem(seq: np.ndarray, pos: np.ndarray, splits: np.ndarray,
                      split_names: Sequence[str] = DEFAULT_SPLIT_NAMES) -> str | None:
    """The first way token rows break SCHEMA.md §12, as ``<node>: <what>, expected ..., got ...``.

    ``None`` when they follow it. Shared by the writer (which refuses) and
    ``probestore validate`` (which lists), so both read the rule the same way.
    """
    if seq.size == 0:
        return None
    steps = np.diff(seq)
    if seq[0] != 0 or (steps < 0).any() or (steps > 1).any():
        bad = np.flatnonzero((steps < 0) | (steps > 1))
        got = (f"first id {int(seq[0])}" if seq[0] != 0
               else f"{int(seq[bad[0]])} then {int(seq[bad[0] + 1])} at rows {int(bad[0])}, {int(bad[0]) + 1}")
        return (f"{layout.SAMPLE_SEQUENCE}: ids are not 0..n_sequences-1 with each sequence's rows together, "
                f"expected 0 first and steps of 0 or 1 from row to row, got {got}")
    if pos.min() < 0:
        return f"{layout.SAMPLE_POSITION}: negative position, expected >= 0, got {int(pos.min())} at row {int(np.argmin(pos))}"
    same = steps == 0
    bad = np.flatnonzero(same & (pos[1:] <= pos[:-1]))
    if bad.size:
        i = int(bad[0]) + 1
        return (f"{layout.SAMPLE_POSITION}: positions do not increase within sequence {int(seq[i])}, expected "
                f"increasing positions, got {int(pos[i - 1])} then {int(pos[i])} at rows {i - 1}, {i}")
    leaked = np.flatnonzero(same & (splits[1:] != splits[:-1]))
    if leaked.size:
        first = int(seq[int(leaked[0]) + 1])
        rows = np.flatnonzero(seq == first)
        names = [split_names[c] if 0 <= c < len(split_names) else str(c) for c in np.unique(splits[rows]).tolist()]
        count = int(np.unique(seq[leaked + 1]).size)
        return (f"{layout.SAMPLE_SPLIT}: sequence {first} has rows in {len(names)} splits (leakage), expected every "
                f"row of a sequence in one split (splits drawn by sequence), got {' and '.join(names)}; "
                f"{count} sequence(s) leak")
    return None


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _sync_tree(path: Path) -> None:
    """Flush written data to disk before a completion marker is written.

    ``os.sync`` flushes every dirty page of the machine: a coarse but reliable way to
    make "complete" mean "durable" without fsyncing thousands of chunk files one by one.
    """
    if hasattr(os, "sync"):
        os.sync()
