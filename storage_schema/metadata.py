"""Typed views of the metadata SCHEMA.md defines, parsed strictly from untrusted attributes.

A store may come from someone else, be half written, or be edited by hand. Every
attribute is therefore checked for presence, type and (for this schema's minor
version) unknown keys before anything trusts it; violations are ``StoreFormatError``
naming the node and key. ``FIELDS`` is the single source of truth that both the
parsers and ``probestore validate`` use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probestore.errors import StoreFormatError

_NUM = (int, float)
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))

# node kind -> {key: (accepted types, required)}
FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "root": {
        "format": ((str,), True),
        "schema_version": ((str,), True),
        "probestore_version": ((str,), True),
        "created": ((str,), True),
        "dataset": ((dict,), True),
        "config": ((dict, type(None)), False),
        "config_hash": (_OPT_STR, False),
    },
    "dataset": {
        "name": ((str,), True),
        "n_samples": ((int,), True),
        "fingerprint": ((str,), True),
        "class_names": ((list,), True),
        "split_names": ((list,), True),
        "source": ((dict, type(None)), False),
    },
    "target": {
        "kind": ((str,), True),
        "description": ((str,), False),
        "family": ((str,), False),
    },
    "run": {
        "model": ((dict,), True),
        "architecture": ((str,), True),
        "training": ((dict,), False),
        "corruption": ((dict,), True),
        "description": ((str,), False),
    },
    "corruption": {
        "fraction": (_NUM, True),
        "mode": ((str,), True),
        "seed": (_OPT_INT, False),
    },
    "checkpoint": {
        "epoch": (_OPT_INT, True),
        "step": (_OPT_INT, False),
        "source": (_OPT_STR, False),
        "sha256": (_OPT_STR, False),
        "complete": ((bool,), True),
        "completed_at": (_OPT_STR, False),
        "layer_order": ((list,), False),
    },
    "block": {
        "kind": ((str,), True),
        "n_features": ((int,), True),
        "source_shape": ((list,), False),
        "reduction": ((dict,), False),
        "complete": ((bool,), True),
        "rows_done": ((int,), True),
    },
    "reduction_indices": {
        "layer": ((str,), True),
        "reduction": ((dict,), True),
        "source_shape": ((list,), True),
    },
    # schema 1.1 (optional groups, SCHEMA.md §10): concept example sets ...
    "concept_set": {
        "kind": ((str,), True),
        "n": ((int,), True),
        "role": ((str,), False),
        "source": ((str,), False),
        "seed": (_OPT_INT, False),
        "description": ((str,), False),
    },
    # ... an external set's features at one checkpoint and layer ...
    "concept_block": {
        "n_features": ((int,), True),
        "reduction": ((dict,), False),
        "complete": ((bool,), True),
    },
    # ... and the reduced gradients extra array of a layer (SCHEMA.md §6).
    "gradient": {
        "kind": ((str,), True),
        "of": ((str,), True),
        "reduction": ((dict,), True),
        "lift_scale": (_NUM, True),
        "complete": ((bool,), True),
        "rows_done": ((int,), True),
    },
}

TARGET_KINDS = ("class", "continuous", "binary")
BLOCK_KINDS = ("features", "logits")


def check_fields(kind: str, attrs: Any, where: str, *, allow_extra: bool = False) -> list[str]:
    """Every violation of ``FIELDS[kind]`` in ``attrs``, as readable strings (empty if none)."""
    if not isinstance(attrs, dict):
        return [f"{where}: metadata must be a mapping, got {type(attrs).__name__}"]
    problems = []
    spec = FIELDS[kind]
    for key, (types, required) in spec.items():
        if key not in attrs:
            if required:
                problems.append(f"{where}: missing attribute {key!r}")
            continue
        value = attrs[key]
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"{where}: attribute {key!r} should be {names}, got {type(value).__name__} {value!r:.60}")
    if not allow_extra:
        for key in attrs:
            if key not in spec:
                problems.append(f"{where}: unknown attribute {key!r} (not in schema; typo or newer writer?)")
    return problems


def require_fields(kind: str, attrs: Any, where: str, *, allow_extra: bool = False) -> dict[str, Any]:
    """Like :func:`check_fields` but raise on the first problems."""
    problems = check_fields(kind, attrs, where, allow_extra=allow_extra)
    if problems:
        raise StoreFormatError(
            "store metadata does not follow the schema",
            where=where,
            got="; ".join(problems[:5]),
            fix="run `probestore validate STORE` for the full list; re-create the store if it was edited by hand",
        )
    return attrs


@dataclass(frozen=True)
class DatasetMeta:
    """Identity of the samples every array in the store is row-aligned with."""

    name: str
    n_samples: int
    fingerprint: str
    class_names: list[str]
    split_names: list[str]
    source: dict[str, Any] | None = None


@dataclass(frozen=True)
class TargetMeta:
    """A per-sample array probes can be fitted against."""

    name: str
    kind: str
    description: str = ""
    family: str = ""
    dtype: str = ""


@dataclass(frozen=True)
class RunMeta:
    """One trained model variant (generalizing, N-memorizing, random...)."""

    name: str
    model: dict[str, Any]
    architecture: str
    corruption_fraction: float
    corruption_mode: str
    corruption_seed: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class CheckpointMeta:
    """One saved state of a run's model."""

    run: str
    name: str
    epoch: int | None
    step: int | None
    source: str | None
    sha256: str | None
    complete: bool


@dataclass(frozen=True)
class BlockMeta:
    """One row-aligned array of a checkpoint: a layer's features or the model's logits."""

    run: str
    checkpoint: str
    name: str
    kind: str
    n_features: int
    dtype: str
    chunk_rows: int
    source_shape: list[int] | None
    reduction: dict[str, Any] | None
    complete: bool
    rows_done: int
    nbytes_stored: int = 0
