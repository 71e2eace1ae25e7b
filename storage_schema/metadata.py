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
        # schema 1.3 (SCHEMA.md §4.1): what growing the store added, when
        "history": ((list,), False),
    },
    "history_entry": {
        "time": ((str,), True),
        "probestore_version": ((str,), True),
        # null only in a delete entry of a store that records no config (SCHEMA.md §4.1)
        "config_hash": (_OPT_STR, True),
        "previous_config_hash": (_OPT_STR, True),
        # exactly one of: ``added`` (a growth) or ``deleted`` (a `probestore delete`)
        "added": ((list,), False),
        "changed": ((list,), False),
        "deleted": ((list,), False),
    },
    "dataset": {
        "name": ((str,), True),
        "n_samples": ((int,), True),
        "fingerprint": ((str,), True),
        "class_names": ((list,), True),
        "split_names": ((list,), True),
        "source": ((dict, type(None)), False),
        # schema 1.3 (SCHEMA.md §12): what one row is, and how the text was tokenized
        "unit": ((str,), False),
        "n_sequences": ((int,), False),
        "tokenization": ((dict,), False),
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
#: The schema version that introduced the root ``history`` (a writer adding it to an older store raises the version).
HISTORY_SCHEMA = "1.3"


def history_entry(*, config_hash: str, previous_config_hash: str | None, added: list[str],
                  changed: list[str] | None = None, probestore_version: str) -> dict[str, Any]:
    """One entry of the root ``history``: a grown store's new config and what it added (SCHEMA.md §4.1)."""
    import datetime as _dt

    entry: dict[str, Any] = {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "probestore_version": probestore_version,
        "config_hash": config_hash,
        "previous_config_hash": previous_config_hash,
        "added": [str(a) for a in added],
    }
    if changed:
        entry["changed"] = [str(c) for c in changed]
    return entry


def delete_entry(*, config_hash: str | None, deleted: list[str], probestore_version: str) -> dict[str, Any]:
    """A root ``history`` entry of a delete: what it removed; the config (and its hash) stays as it was.

    The store keeps recording the config it was extracted with (a deleted run is
    re-extracted by ``probestore extract`` with that config), so ``config_hash`` and
    ``previous_config_hash`` are both the store's unchanged hash (SCHEMA.md §4.1).
    """
    import datetime as _dt

    return {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "probestore_version": probestore_version,
        "config_hash": config_hash,
        "previous_config_hash": config_hash,
        "deleted": [str(d) for d in deleted],
    }


def history_problems(history: Any, config_hash: Any, where: str, *, allow_extra: bool = False) -> list[str]:
    """Violations of the root ``history`` (SCHEMA.md §4.1): entry fields, chaining, times.

    Each entry's ``previous_config_hash`` is the hash before it (the preceding entry's
    ``config_hash``), the last entry's ``config_hash`` is the store's, ``added``,
    ``changed`` and ``deleted`` hold strings, and times are ISO 8601 and do not go
    backwards. An entry is a growth (``added``) or a delete (``deleted``, whose
    ``config_hash`` is its ``previous_config_hash``: a delete keeps the config).
    """
    import datetime as _dt

    if not isinstance(history, list):
        return [f"{where}: history should be a list, got {type(history).__name__}"]
    if not history:
        return [f"{where}: history is empty, expected at least one entry (omit the attribute instead)"]
    problems: list[str] = []
    times = []
    for i, entry in enumerate(history):
        at = f"{where}[{i}]"
        found = check_fields("history_entry", entry, at, allow_extra=allow_extra)
        problems += found
        if found:
            continue
        problems += _entry_kind_problems(entry, at)
        for key in ("added", "changed", "deleted"):
            if not all(isinstance(a, str) for a in entry.get(key, [])):
                problems.append(f"{at}: {key} should hold strings, got {entry[key]!r:.60}")
        if i and entry["previous_config_hash"] != history[i - 1].get("config_hash"):
            problems.append(f"{at}: previous_config_hash {entry['previous_config_hash']!r}, expected the "
                            f"config_hash of entry {i - 1}, {history[i - 1].get('config_hash')!r}")
        try:
            times.append(_dt.datetime.fromisoformat(entry["time"]))
        except ValueError:
            problems.append(f"{at}: time {entry['time']!r} is not an ISO 8601 time")
    if len(times) == len(history) and any(b < a for a, b in zip(times, times[1:])):
        problems.append(f"{where}: entry times go backwards, expected them in order")
    last = history[-1]
    if isinstance(last, dict) and last.get("config_hash") != config_hash:
        problems.append(f"{where}: the last entry's config_hash {last.get('config_hash')!r} is not the "
                        f"store's, expected {config_hash!r}")
    return problems


def _entry_kind_problems(entry: dict[str, Any], at: str) -> list[str]:
    """A growth entry (``added``) changes the config; a delete entry (``deleted``) keeps it."""
    kinds = [k for k in ("added", "deleted") if k in entry]
    if not kinds:
        return [f"{at}: missing attribute 'added' (a growth entry) or 'deleted' (a delete entry)"]
    if len(kinds) == 2:
        return [f"{at}: both 'added' and 'deleted', expected one (a growth entry or a delete entry)"]
    if kinds == ["added"]:
        if not isinstance(entry["config_hash"], str):
            return [f"{at}: attribute 'config_hash' should be str in a growth entry, got null"]
        return []
    if "changed" in entry:
        return [f"{at}: a delete entry has no 'changed', got {entry['changed']!r:.60}"]
    if entry["config_hash"] != entry["previous_config_hash"]:
        return [f"{at}: a delete entry's config_hash {entry['config_hash']!r}, expected its "
                f"previous_config_hash {entry['previous_config_hash']!r} (a delete keeps the config)"]
    return []
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
    #: Schema 1.3: ``"sequence"``, ``"token"`` or ``"word"``; ``None`` for one row per input (images).
    unit: str | None = None
    #: Schema 1.3: number of sequences the token or word rows come from (``None`` otherwise).
    n_sequences: int | None = None
    #: Schema 1.3: tokenizer, ``max_length``, ``truncation``, ``alignment`` of text data.
    tokenization: dict[str, Any] | None = None


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
