"""Concept example sets and per-layer extras of a store (schema 1.1, SCHEMA.md §10).

TCAV (Kim et al. 2018) needs, besides the dataset's own samples, *sets* of example
images: the examples of a concept ("banded" textures) and several random
counterexample sets. A set is one of

* ``dataset``: rows of the store's own samples (a folder of copies of dataset images,
  or a seeded random draw ``random:N``). Its features are the layer's features at those
  rows: nothing more is stored per checkpoint;
* ``external``: images that are not samples of the dataset. They pass through the
  network at extraction time and get their own small feature blocks per checkpoint and
  layer, with their own completion flags.

This module is the store side, written as functions over an
:class:`~storage_schema.store.ActivationStore` so that the core store class stays the
contract every backend passes. It also holds the completion bookkeeping of optional
per-layer extra arrays (``grad_own_logit``): the store writes extras, these helpers mark
them complete, because an extra array is written by a later pass than the features and a
reader must be able to tell a finished one from an interrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probestore.errors import ConfigError, DataError, NotFoundError, StoreFormatError
from storage_schema import layout
from storage_schema.metadata import require_fields
from storage_schema.names import validate_name

__all__ = [
    "CONCEPT_SETS",
    "SET_KINDS",
    "ConceptSetMeta",
    "add_concept_set",
    "concept_sets",
    "concept_set_info",
    "concept_set_rows",
    "concept_set_ids",
    "concept_set_block_node",
    "create_concept_block",
    "write_concept_features",
    "concept_block_complete",
    "read_concept_features",
    "extra_attrs",
    "set_extra_attrs",
    "extra_complete",
]

CONCEPT_SETS = "concept_sets"
SET_KINDS = ("dataset", "external")


@dataclass(frozen=True)
class ConceptSetMeta:
    """One concept example set.

    Attributes
    ----------
    name : str
    kind : {"dataset", "external"}
    n : int
        Number of examples.
    role : {"concept", "random"}
        What TCAV uses the set for.
    source : str
        Folder, or ``"random:N"`` with ``seed``.
    seed : int or None
    description : str
    """

    name: str
    kind: str
    n: int
    role: str
    source: str
    seed: int | None
    description: str


def _set_node(name: str) -> str:
    return f"{CONCEPT_SETS}/{validate_name(name, 'concept set')}"


def concept_set_block_node(run: str, checkpoint: str, set_name: str, layer: str) -> str:
    """Group of an external set's features at one checkpoint and layer."""
    return (f"{layout.checkpoint_node(run, checkpoint)}/{CONCEPT_SETS}/"
            f"{validate_name(set_name, 'concept set')}/layers/{validate_name(layer, 'layer')}")


def add_concept_set(store, name: str, *, kind: str, sample_ids: Sequence[str],
                    rows: np.ndarray | None = None, role: str = "concept", source: str = "",
                    seed: int | None = None, description: str = "") -> ConceptSetMeta:
    """Register a concept set (idempotent: re-adding the same set is a no-op).

    Parameters
    ----------
    store : ActivationStore
        Open for appending.
    name : str
        Store-safe set name (``striped``, ``random_0``).
    kind : {"dataset", "external"}
    sample_ids : sequence of str
        Example ids: the dataset's ids for ``dataset`` sets, file names otherwise.
    rows : ndarray of int, optional
        ``dataset`` sets only: the examples' rows in the store (sorted, unique).
    role : {"concept", "random"}
    source, seed, description
        Provenance (folder, ``random:N``).

    Raises
    ------
    ConfigError
        Unknown kind or role, rows given for an external set (or missing for a dataset
        set), an existing set with other members.
    DataError
        Empty set, rows out of range or not matching ``sample_ids``.
    """
    node = _set_node(name)
    where = f"concept set {name!r}"
    if kind not in SET_KINDS:
        raise ConfigError("unknown concept set kind", where=where, expected=SET_KINDS, got=repr(kind))
    if role not in ("concept", "random"):
        raise ConfigError("unknown concept set role", where=where, expected="concept or random", got=repr(role))
    ids = np.asarray([str(s) for s in sample_ids])
    if len(ids) == 0:
        raise DataError("a concept set needs at least one example", where=where, got="0 examples",
                        fix="put example images in the folder, or draw random:N with N >= 1")
    if len(set(ids.tolist())) != len(ids):
        raise DataError("concept set ids are not unique", where=where)
    if kind == "dataset":
        if rows is None:
            raise ConfigError("a dataset concept set needs its rows", where=where,
                              fix="pass rows= (indices into the store's samples)")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape != ids.shape or (np.diff(rows) <= 0).any() or rows.min() < 0 \
                or rows.max() >= store.n_samples:
            raise DataError("concept set rows must be sorted, unique and inside the store", where=where,
                            expected=f"{len(ids)} increasing rows in 0..{store.n_samples - 1}",
                            got=f"shape {rows.shape}")
        if not np.array_equal(store.sample_ids()[rows], ids):
            raise DataError("concept set rows do not point at its sample ids", where=where,
                            fix="take rows and ids from the same lookup")
    elif rows is not None:
        raise ConfigError("rows are only for dataset concept sets", where=where, got="rows given")
    attrs = {"kind": kind, "n": int(len(ids)), "role": role, "source": str(source),
             "seed": None if seed is None else int(seed), "description": str(description)}
    backend = store.backend
    if backend.node_kind(node) == "group" and "kind" in backend.get_attrs(node):
        old = concept_set_info(store, name)
        same = (old.kind == kind and old.n == len(ids)
                and np.array_equal(backend.read(f"{node}/sample_id"), ids))
        if not same:
            raise ConfigError(f"concept set {name!r} already exists with other examples",
                              where=str(store.path), fix="use another set name, or re-create the store")
        return old
    backend.require_group(CONCEPT_SETS)
    backend.require_group(node)
    width = max(1, max(len(s) for s in ids))
    backend.create_array(f"{node}/sample_id", shape=ids.shape, dtype=np.dtype(f"<U{width}"),
                         chunks=(len(ids),))
    backend.write(f"{node}/sample_id", ids)
    if rows is not None:
        backend.create_array(f"{node}/rows", shape=rows.shape, dtype=np.dtype("int64"), chunks=(len(rows),))
        backend.write(f"{node}/rows", rows)
    backend.update_attrs(node, attrs)  # last: a set without attributes is not listed
    return concept_set_info(store, name)


def concept_sets(store, role: str | None = None) -> list[str]:
    """Names of the registered concept sets (optionally only one role), sorted."""
    backend = store.backend
    if backend.node_kind(CONCEPT_SETS) != "group":
        return []
    names = [n for n in backend.list_children(CONCEPT_SETS)[0]
             if "kind" in backend.get_attrs(f"{CONCEPT_SETS}/{n}")]
    if role is not None:
        names = [n for n in names if concept_set_info(store, n).role == role]
    return names


def concept_set_info(store, name: str) -> ConceptSetMeta:
    """Metadata of one set (NotFoundError with the known names otherwise)."""
    node = _set_node(name)
    backend = store.backend
    if backend.node_kind(node) != "group" or "kind" not in backend.get_attrs(node):
        from probestore.errors import did_you_mean

        known = concept_sets(store)
        raise NotFoundError(f"unknown concept set {name!r}", where=str(store.path),
                            expected=known or "no concept sets ([concepts.sets] in the experiment config)",
                            fix=did_you_mean(name, known) or None)
    attrs = require_fields("concept_set", backend.get_attrs(node), f"{store.path}/{node}")
    return ConceptSetMeta(name, attrs["kind"], attrs["n"], attrs.get("role", "concept"),
                          attrs.get("source", ""), attrs.get("seed"), attrs.get("description", ""))


def concept_set_rows(store, name: str) -> np.ndarray | None:
    """Rows of a ``dataset`` set in the store; None for an external set."""
    info = concept_set_info(store, name)
    if info.kind != "dataset":
        return None
    return store.backend.read(f"{_set_node(name)}/rows").astype(np.int64)


def concept_set_ids(store, name: str) -> np.ndarray:
    """Sample ids of a set's examples (file names for an external set, dataset ids otherwise).

    TCAV compares external examples by these ids: two random sets drawn from one folder
    share an example exactly when they share an id (NotFoundError for an unknown set).
    """
    concept_set_info(store, name)
    return store.backend.read(f"{_set_node(name)}/sample_id")


def create_concept_block(store, run: str, checkpoint: str, set_name: str, layer: str, *,
                         n_features: int, dtype: str = "float32",
                         reduction: dict[str, Any] | None = None) -> bool:
    """Create (or find) an external set's feature block; True when it is already complete.

    The layer must be a block of the checkpoint: an external set is reduced exactly like
    the dataset's samples, so that a CAV learned from it applies to the samples' features.
    """
    info = concept_set_info(store, set_name)
    if info.kind != "external":
        raise ConfigError(f"concept set {set_name!r} is made of dataset rows: it has no own features",
                          where=str(store.path), fix="read the layer's features at concept_set_rows()")
    meta = store.block_info(run, checkpoint, layer)
    red = json.loads(json.dumps(reduction)) if reduction is not None else meta.reduction
    if int(n_features) != meta.n_features or red != meta.reduction:
        raise ConfigError("concept set block differs from the layer's block", where=f"{run}/{checkpoint}/{layer}",
                          expected=f"{meta.n_features} features, {meta.reduction}",
                          got=f"{n_features} features, {red}")
    node = concept_set_block_node(run, checkpoint, set_name, layer)
    backend = store.backend
    if backend.node_kind(f"{node}/features") == "array":
        attrs = backend.get_attrs(node)
        shape, old_dtype, _ = backend.array_meta(f"{node}/features")
        if shape != (info.n, int(n_features)) or str(old_dtype) != dtype:
            raise StoreFormatError("concept set block has another shape or dtype", where=f"{store.path}/{node}",
                                   expected=f"({info.n}, {n_features}) {dtype}", got=f"{shape} {old_dtype}")
        return bool(attrs.get("complete"))
    backend.require_group(node)
    backend.update_attrs(node, {"n_features": int(n_features), "reduction": red, "complete": False})
    backend.create_array(f"{node}/features", shape=(info.n, int(n_features)), dtype=np.dtype(dtype),
                         chunks=(info.n, int(n_features)))
    return False


def write_concept_features(store, run: str, checkpoint: str, set_name: str, layer: str,
                           values: np.ndarray) -> None:
    """Write all of an external set's features for one layer and mark them complete.

    Sets are small (tens to hundreds of images), so the block is written in one piece
    and one chunk; the completion flag is set after the data (SCHEMA.md §5 order).
    """
    node = concept_set_block_node(run, checkpoint, set_name, layer)
    backend = store.backend
    if backend.node_kind(f"{node}/features") != "array":
        raise NotFoundError("concept set block not created", where=f"{store.path}/{node}",
                            fix="call create_concept_block first")
    shape, dtype, _ = backend.array_meta(f"{node}/features")
    values = np.asarray(values)
    if values.shape != shape:
        raise DataError("concept set features have the wrong shape", where=node, expected=shape, got=values.shape)
    if not np.isfinite(values).all():
        raise DataError("non-finite concept set features (NaN/Inf)", where=node,
                        fix="check the checkpoint (diverged training?)")
    backend.write(f"{node}/features", values.astype(dtype, copy=False))
    backend.update_attrs(node, {"complete": True})


def concept_block_complete(store, run: str, checkpoint: str, set_name: str, layer: str) -> bool:
    node = concept_set_block_node(run, checkpoint, set_name, layer)
    backend = store.backend
    return backend.node_kind(node) == "group" and backend.get_attrs(node).get("complete") is True


def read_concept_features(store, run: str, checkpoint: str, set_name: str, layer: str) -> np.ndarray:
    """A set's features ``[n_examples, n_features]`` at one checkpoint and layer.

    Dataset sets read the layer's rows; external sets read their own complete block.
    """
    rows = concept_set_rows(store, set_name)
    if rows is not None:
        return store.read_layer(run, checkpoint, layer, rows)
    if not concept_block_complete(store, run, checkpoint, set_name, layer):
        raise NotFoundError(f"no complete features of concept set {set_name!r} at {run}/{checkpoint}/{layer}",
                            where=str(store.path),
                            fix="run `probestore extract CONFIG` again with the experiment file that wrote "
                                "the store (it fills missing concept set blocks)")
    return store.backend.read(f"{concept_set_block_node(run, checkpoint, set_name, layer)}/features")


# --------------------------------------------------------------------------- extras bookkeeping


def _extra_node(run: str, checkpoint: str, block: str, array: str) -> str:
    return layout.block_array_node(run, checkpoint, block, array)


def extra_attrs(store, run: str, checkpoint: str, block: str, array: str) -> dict[str, Any] | None:
    """Attributes of a per-layer extra array, or None when it does not exist."""
    node = _extra_node(run, checkpoint, block, array)
    if store.backend.node_kind(node) != "array":
        return None
    return dict(store.backend.get_attrs(node))


def set_extra_attrs(store, run: str, checkpoint: str, block: str, array: str, attrs: dict[str, Any]) -> None:
    """Merge attributes into an existing extra array (progress, completion, provenance)."""
    node = _extra_node(run, checkpoint, block, array)
    if store.backend.node_kind(node) != "array":
        raise NotFoundError(f"no extra array {array!r} in {run}/{checkpoint}/{block}", where=str(store.path),
                            fix="write it with store.write_extra first")
    store.backend.update_attrs(node, json.loads(json.dumps(attrs)))


def extra_complete(store, run: str, checkpoint: str, block: str, array: str) -> bool:
    """Whether an extra array is marked complete (written by a finished pass)."""
    attrs = extra_attrs(store, run, checkpoint, block, array)
    return bool(attrs and attrs.get("complete") is True)
