"""``validate_store``: check a store against SCHEMA.md and list every violation.

Unlike ``open_store``, which stops at the first problem it needs to stop at, the
validator walks the whole store and collects everything that is wrong, so that a user
(or ``probestore validate``) sees the full picture at once. It only reads.

Schema 1.1 nodes (SCHEMA.md §6.1, §10) are checked when present: the ``grad_own_logit``
extra of a layer (attributes, shape and chunk rows of the block, a linear reduction equal
to the block's, ``lift_scale``, progress and completion), the concept example sets
(attributes, ``sample_id``, ``rows`` sorted, unique, in range and pointing at the
samples' ids) and the external sets' feature blocks of each checkpoint. A set group
without ``kind`` is a set being written, not a set, and is skipped like readers skip it;
gradients and external set blocks carry their own completion flags, so an unfinished
one in a complete checkpoint is not a violation (§10) but a "complete" one must be.
Token rows (schema 1.3, §12) are checked when present: ``samples/sequence`` and
``samples/position`` together, the ``dataset.unit`` that says what a row is, sequence
ids ``0..n_sequences-1`` with each sequence's rows together, positions >= 0 and
increasing within a sequence, and no sequence with rows in two splits (leakage).
Every message reads ``<node>: <what>, expected <...>, got <...>``.

Damage does not stop the walk: a node whose metadata cannot be read (a corrupt
``zarr.json``) is listed with the other violations and its siblings are still checked.
Links that leave the store (symbolic links in a directory store; external links, external
raw data or virtual sources in an HDF5 file) are listed, as is an outputs block whose
width is not the number of classes the store records. Splits used for selection or
reporting that lack classes present in train are not schema violations but make probe
results misleading: :func:`split_warnings` lists them (``probestore validate`` prints
them as warnings).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from probestore.errors import ProbestoreError
from storage_schema import layout
from storage_schema.concept_sets import CONCEPT_SETS, SET_KINDS
from storage_schema.fingerprint import dataset_fingerprint
from storage_schema.metadata import BLOCK_KINDS, TARGET_KINDS, check_fields, history_problems
from storage_schema.names import is_valid_name
from storage_schema.reductions import LINEAR_REDUCTIONS, lift_scale_for
from storage_schema.version import SCHEMA_VERSION, parse_version

SET_ROLES = ("concept", "random")
#: The first version with the optional nodes of §6.1 and §10.
NODES_1_1 = (1, 1)
#: The first version with ``samples/type`` (SCHEMA.md §11).
NODES_1_2 = (1, 2)
#: The first version with token rows (``samples/sequence``, ``samples/position``, ``dataset.unit``; §12).
NODES_1_3 = (1, 3)


def validate_store(path: str | Path, warnings: list[str] | None = None) -> list[str]:
    """Every violation of the schema found in the store at ``path`` (empty when valid).

    ``warnings``, when given, receives what is no schema violation but would make results
    misleading (:func:`split_warnings`); ``probestore validate`` prints them and exits 0
    when they are all there is.
    """
    from storage_schema.store import ActivationStore

    try:
        store = ActivationStore.open(path, mode="r")
    except ProbestoreError as exc:
        return [str(exc)]
    problems: list[str] = _links_leaving(store.backend.path)
    allow_extra = store.schema_version > parse_version(SCHEMA_VERSION, "")
    _check_samples(store, problems)
    problems.extend(_sample_type_problems(store))
    problems.extend(_token_row_problems(store))
    problems.extend(_history_problems(store, allow_extra))
    _check_targets(store, allow_extra, problems)
    _check_architectures(store, allow_extra, problems)
    sets: dict[str, dict[str, Any]] = {}
    with _collect(problems):
        sets = _validate_concept_sets(store, allow_extra, problems)
    seen_1_1: list[str] = []  # gradient arrays found (a 1.0 store must not hold any)
    _check_runs(store, allow_extra, sets, seen_1_1, problems)
    if store.schema_version < NODES_1_1 and (sets or seen_1_1):
        found = (["concept_sets"] if sets else []) + seen_1_1[:2]
        problems.append(f"/: schema_version '{'.'.join(map(str, store.schema_version))}' with schema-1.1 "
                        f"nodes, expected '{'.'.join(map(str, NODES_1_1))}' (SCHEMA.md §2), got {', '.join(found)}")
    if warnings is not None:
        with _collect(problems):
            warnings.extend(split_warnings(store))
    return list(dict.fromkeys(problems))  # a damaged node met twice is listed once


def _history_problems(store, allow_extra: bool) -> list[str]:
    """The root ``history`` of a grown store (SCHEMA.md §4.1, schema 1.3), when present."""
    attrs = store.root_attrs
    if "history" not in attrs:
        return []
    problems = history_problems(attrs["history"], attrs.get("config_hash"), "/ history", allow_extra=allow_extra)
    if store.schema_version < NODES_1_3:
        problems.append(f"/: schema_version '{'.'.join(map(str, store.schema_version))}' with a history, "
                        f"expected '{'.'.join(map(str, NODES_1_3))}' (SCHEMA.md §2), got history")
    return problems


def _valid_children(backend, node: str, kind: str, problems: list[str]) -> list[str]:
    """The child groups of ``node`` with valid names; every invalid child name is a problem."""
    groups, arrays = _children(backend, node, problems)
    for name in groups + arrays:
        if not is_valid_name(name):
            problems.append(f"{node}/{name}: invalid {kind} name {name!r}")
    return [g for g in groups if is_valid_name(g)]


def _check_samples(store, problems: list[str]) -> None:
    """Sample ids unique, the fingerprint theirs, split codes and labels in range."""
    n = store.n_samples
    try:
        ids, labels, splits = store.sample_ids(), store.labels(), store.splits()
        if len(set(ids.tolist())) != n:
            problems.append(f"{layout.SAMPLE_ID}: sample ids are not unique")
        if dataset_fingerprint(ids, labels) != store.fingerprint:
            problems.append("dataset fingerprint does not match the stored sample ids and labels")
        if n and (splits.min() < 0 or splits.max() >= len(store.dataset.split_names)):
            problems.append(f"{layout.SAMPLE_SPLIT}: split codes out of range")
        if n and (labels.min() < 0 or labels.max() >= len(store.dataset.class_names)):
            problems.append(f"{layout.SAMPLE_LABEL}: labels out of range of class_names")
    except ProbestoreError as exc:
        problems.append(str(exc))


def _check_targets(store, allow_extra: bool, problems: list[str]) -> None:
    """Each concept target: a valid name, its attributes and kind, one value per sample."""
    backend, n = store.backend, store.n_samples
    for name in _children(backend, layout.TARGETS, problems)[1]:
        with _collect(problems):
            node = f"{layout.TARGETS}/{name}"
            if not is_valid_name(name):
                problems.append(f"{node}: invalid target name")
                continue
            attrs = backend.get_attrs(node)
            problems.extend(check_fields("target", attrs, node, allow_extra=allow_extra))
            if attrs.get("kind") not in TARGET_KINDS:
                problems.append(f"{node}: kind {attrs.get('kind')!r} is not one of {TARGET_KINDS}")
            shape = backend.array_meta(node)[0]
            if shape != (n,):
                problems.append(f"{node}: shape {shape}, expected ({n},)")


def _check_architectures(store, allow_extra: bool, problems: list[str]) -> None:
    """The random-projection indices shared per architecture and layer (attributes and array)."""
    backend = store.backend
    for arch in _valid_children(backend, layout.ARCHITECTURES, "architecture", problems):
        for layer in _valid_children(backend, f"{layout.ARCHITECTURES}/{arch}", "layer", problems):
            node = f"{layout.ARCHITECTURES}/{arch}/{layer}"
            with _collect(problems):
                problems.extend(check_fields("reduction_indices", backend.get_attrs(node), node,
                                             allow_extra=allow_extra))
                if backend.node_kind(f"{node}/indices") != "array":
                    problems.append(f"{node}: missing indices array")


def _check_runs(store, allow_extra: bool, sets: dict[str, dict[str, Any]], seen_1_1: list[str],
                problems: list[str]) -> None:
    """Each run's attributes and label arrays, then each of its checkpoints and their blocks.

    Gradient arrays met on the way are appended to ``seen_1_1`` (a 1.0 store must hold none).
    """
    backend, n = store.backend, store.n_samples
    for run in _valid_children(backend, layout.RUNS, "run", problems):
        with _collect(problems):
            node = f"{layout.RUNS}/{run}"
            attrs = backend.get_attrs(node)
            problems.extend(check_fields("run", attrs, node, allow_extra=allow_extra))
            if isinstance(attrs.get("corruption"), dict):
                problems.extend(check_fields("corruption", attrs["corruption"], f"{node} corruption",
                                             allow_extra=allow_extra))
            for array in ("train_labels", "corrupted"):
                if backend.node_kind(f"{node}/{array}") != "array":
                    problems.append(f"{node}: missing array {array}")
                elif backend.array_meta(f"{node}/{array}")[0] != (n,):
                    problems.append(f"{node}/{array}: shape {backend.array_meta(f'{node}/{array}')[0]}, "
                                    f"expected ({n},)")
            if backend.node_kind(f"{node}/checkpoints") != "group":
                problems.append(f"{node}: missing group checkpoints")
                continue
            for ckpt in _valid_children(backend, f"{node}/checkpoints", "checkpoint", problems):
                with _collect(problems):
                    problems.extend(_validate_checkpoint(store, run, ckpt, allow_extra, sets, seen_1_1,
                                                         outputs=_outputs_rule(store, attrs)))
                    problems.extend(_logits_width_problems(store, node, ckpt, attrs))
            problems.extend(_model_head_problems(store, node, attrs))


def _sample_type_problems(store) -> list[str]:
    """``samples/type`` (schema 1.2, SCHEMA.md §11): one integer per sample, ``n_types`` and ``method``."""
    backend, node, n = store.backend, layout.SAMPLE_TYPE, store.n_samples
    kind = backend.node_kind(node)
    if kind is None:
        return []
    if kind != "array":
        return [f"{node}: expected an array, got a {kind}"]
    attrs = backend.get_attrs(node)
    if "n_types" not in attrs:
        return []  # being written (the attributes come last), like a run without its metadata
    problems = []
    if store.schema_version < NODES_1_2:
        problems.append(f"/: schema_version '{'.'.join(map(str, store.schema_version))}' with {node}, "
                        f"expected '{'.'.join(map(str, NODES_1_2))}' (SCHEMA.md §2), got an older version")
    shape, dtype, _ = backend.array_meta(node)
    if shape != (n,) or np.dtype(dtype).kind not in "iu":
        return [*problems, f"{node}: expected an integer array of shape ({n},), got {dtype} {shape}"]
    n_types = int(np.unique(backend.read(node)).size)
    if attrs.get("n_types") != n_types:
        problems.append(f"{node}: attribute n_types does not count the distinct ids, expected {n_types}, "
                        f"got {attrs.get('n_types')!r}")
    if not isinstance(attrs.get("method"), dict):
        got = "nothing" if "method" not in attrs else type(attrs["method"]).__name__
        problems.append(f"{node}: attribute method, expected an object, got {got}")
    return problems


def _token_row_problems(store) -> list[str]:
    """Token rows (schema 1.3, SCHEMA.md §12): both arrays or neither, the unit that says
    so, ids ``0..n_sequences-1`` with each sequence's rows together, positions >= 0 and
    increasing, and no sequence in two splits (the leak that makes probes look better)."""
    from storage_schema.store import token_row_problem

    backend, n, ds = store.backend, store.n_samples, store.dataset
    kinds = {node: backend.node_kind(node) for node in (layout.SAMPLE_SEQUENCE, layout.SAMPLE_POSITION)}
    present = [node for node, kind in kinds.items() if kind is not None]
    problems: list[str] = []
    if ds.unit is not None and ds.unit not in layout.UNITS:
        problems.append(f"/: dataset.unit, expected one of {layout.UNITS}, got {ds.unit!r}")
    if not present:
        if ds.unit in layout.TOKEN_UNITS:
            problems.append(f"{layout.SAMPLES}: {ds.unit} rows without {layout.SAMPLE_SEQUENCE} and "
                            f"{layout.SAMPLE_POSITION}, expected both arrays (dataset.unit {ds.unit!r}), got neither")
        if ds.n_sequences is not None:
            problems.append(f"/: dataset.n_sequences without token rows, expected it only beside "
                            f"{layout.SAMPLE_SEQUENCE}, got {ds.n_sequences}")
        return problems
    version = ".".join(map(str, store.schema_version))
    if store.schema_version < NODES_1_3:
        problems.append(f"/: schema_version '{version}' with {present[0]}, expected '1.3' (SCHEMA.md §2), "
                        f"got an older version")
    if len(present) == 1:
        missing = next(node for node in kinds if node not in present)
        return [*problems, f"{missing}: missing, expected {layout.SAMPLE_SEQUENCE} and {layout.SAMPLE_POSITION} "
                           f"together (SCHEMA.md §12), got only {present[0]}"]
    if ds.unit not in layout.TOKEN_UNITS:
        problems.append(f"/: dataset.unit, expected one of {layout.TOKEN_UNITS} for rows with "
                        f"{layout.SAMPLE_SEQUENCE}, got {ds.unit!r}")
    arrays = {}
    for node, dtype in ((layout.SAMPLE_SEQUENCE, "int64"), (layout.SAMPLE_POSITION, "int32")):
        if kinds[node] != "array":
            problems.append(f"{node}: expected an array, got a {kinds[node]}")
            continue
        shape, got, _ = backend.array_meta(node)
        if shape != (n,) or np.dtype(got).kind not in "iu":
            problems.append(f"{node}: expected an {dtype} array of shape ({n},), got {got} {shape}")
            continue
        arrays[node] = backend.read(node).astype(np.int64)
    if len(arrays) < 2:
        return problems
    seq, pos = arrays[layout.SAMPLE_SEQUENCE], arrays[layout.SAMPLE_POSITION]
    expected = int(seq.max()) + 1 if n else 0
    if ds.n_sequences != expected:
        problems.append(f"/: dataset.n_sequences, expected {expected} (1 + the largest sequence id), "
                        f"got {ds.n_sequences!r}")
    try:
        splits = store.splits()
    except ProbestoreError as exc:
        return [*problems, str(exc)]
    problem = token_row_problem(seq, pos, splits.astype(np.int64), store.dataset.split_names)
    return problems + ([problem] if problem else [])


def _validate_checkpoint(store, run: str, ckpt: str, allow_extra: bool,
                         sets: dict[str, dict[str, Any]], seen_1_1: list[str], *, outputs: bool | None = True) -> list[str]:
    """One checkpoint's attributes and blocks; ``outputs``: whether it must have an outputs (None: may)
    block (not when its run's ``model.head`` is ``"drop"``, which must have none; §9)."""
    backend = store.backend
    n = store.n_samples
    node = layout.checkpoint_node(run, ckpt)
    attrs = backend.get_attrs(node)
    problems = check_fields("checkpoint", attrs, node, allow_extra=allow_extra)
    complete = attrs.get("complete") is True
    blocks = []
    if backend.node_kind(f"{node}/layers") == "group":
        groups, _ = _children(backend, f"{node}/layers", problems)
        blocks += [(name, f"{node}/layers/{name}", layout.FEATURES_ARRAY) for name in groups]
    if backend.node_kind(f"{node}/{layout.OUTPUTS}") == "group":
        blocks.append((layout.OUTPUTS, f"{node}/{layout.OUTPUTS}", layout.LOGITS_ARRAY))
        if outputs is False:
            problems.append(f"{node}: outputs block in a run whose model.head is 'drop', expected none "
                            "(SCHEMA.md §9), got one")
    elif complete and outputs:
        problems.append(f"{node}: complete checkpoint without an outputs block (logits)")
    if complete and not blocks:
        problems.append(f"{node}: complete checkpoint without blocks")
    order = attrs.get("layer_order")
    for name, group, array_name in blocks:
        with _collect(problems):
            if not is_valid_name(name):
                problems.append(f"{group}: invalid layer name")
                continue
            battrs = backend.get_attrs(group)
            problems.extend(check_fields("block", battrs, group, allow_extra=allow_extra))
            if battrs.get("kind") not in BLOCK_KINDS:
                problems.append(f"{group}: kind {battrs.get('kind')!r} is not one of {BLOCK_KINDS}")
            array = f"{group}/{array_name}"
            if backend.node_kind(array) != "array":
                problems.append(f"{group}: missing array {array_name}")
                continue
            shape, dtype, chunks = backend.array_meta(array)
            if array_name == layout.FEATURES_ARRAY:
                problems.extend(_validate_extras(store, group, battrs, chunks[0], allow_extra, seen_1_1))
            if shape != (n, battrs.get("n_features")):
                problems.append(f"{array}: shape {shape}, expected ({n}, {battrs.get('n_features')})")
            if dtype.kind != "f":
                problems.append(f"{array}: dtype {dtype}, expected float32 or float16")
            block_complete = battrs.get("complete") is True
            # A complete checkpoint claims the outputs and the layers of its layer_order;
            # a layer outside it is being added to a grown store (SCHEMA.md §5).
            if complete and not block_complete and (name == layout.OUTPUTS or not isinstance(order, list)
                                                    or name in order):
                problems.append(f"{group}: checkpoint is marked complete but this block is not")
            if block_complete:
                present, total = backend.initialized_chunks(array)
                if present < total:
                    problems.append(f"{array}: {total - present} of {total} chunks missing in a complete block")
                else:
                    try:
                        values = backend.read(array)
                        if not np.isfinite(values).all():
                            problems.append(f"{array}: contains NaN/Inf")
                    except ProbestoreError as exc:
                        problems.append(str(exc))
    if backend.node_kind(f"{node}/{CONCEPT_SETS}") == "group":
        problems.extend(_validate_concept_blocks(store, node, sets, allow_extra))
    return problems


# --------------------------------------------------------------------------- schema 1.1 nodes


def _complete_array_problems(backend, array: str, what: str) -> list[str]:
    """A complete array must have every chunk on disk and finite values (§5)."""
    present, total = backend.initialized_chunks(array)
    if present < total:
        return [f"{array}: chunks missing in a complete {what}, expected {total}, got {present}"]
    try:
        if not np.isfinite(backend.read(array)).all():
            return [f"{array}: NaN/Inf in a complete {what}, expected finite values"]
    except ProbestoreError as exc:
        return [str(exc)]
    return []


def _validate_extras(store, group: str, battrs: dict[str, Any], chunk_rows: int, allow_extra: bool,
                     seen_1_1: list[str]) -> list[str]:
    """Per-sample extras of a layer block (§6): samples on axis 0, the block's chunk rows; gradients (§6.1)."""
    backend = store.backend
    n = store.n_samples
    problems: list[str] = []
    groups, arrays = backend.list_children(group)
    if layout.GRAD_ARRAY in groups:
        seen_1_1.append(f"{group}/{layout.GRAD_ARRAY}")
        problems.append(f"{group}/{layout.GRAD_ARRAY}: node kind group, expected an array [n, n_features]")
    for name in arrays:
        if name == layout.FEATURES_ARRAY:
            continue
        node = f"{group}/{name}"
        shape, dtype, chunks = backend.array_meta(node)
        if not shape or shape[0] != n:
            problems.append(f"{node}: samples on axis 0 expected ({n} rows), got shape {shape}")
        elif chunks[0] != chunk_rows:
            problems.append(f"{node}: chunk rows differ from the block's, expected {chunk_rows}, got {chunks[0]}")
        if name == layout.GRAD_ARRAY:
            seen_1_1.append(node)
            problems.extend(_validate_gradient(backend, node, battrs, shape, dtype, n, allow_extra,
                                               store.schema_version))
    return problems


#: Schema versions before 1.2 recorded ``lift_scale = 1`` for ``project:K`` (superseded).
PROJECT_LIFT_FIXED = (1, 2)


def _validate_gradient(backend, node: str, battrs: dict[str, Any], shape, dtype, n: int,
                       allow_extra: bool, version: tuple[int, ...] = PROJECT_LIFT_FIXED) -> list[str]:
    """``grad_own_logit`` (§6.1): attributes, shape, linear reduction, ``lift_scale``, completion."""
    attrs = backend.get_attrs(node)
    problems = check_fields("gradient", attrs, node, allow_extra=allow_extra)
    n_features = battrs.get("n_features")
    if shape != (n, n_features):
        problems.append(f"{node}: shape differs from the block's, expected ({n}, {n_features}), got {shape}")
    if dtype != np.dtype("float32"):
        problems.append(f"{node}: dtype, expected float32, got {dtype}")
    if "kind" in attrs and attrs["kind"] != "gradient":
        problems.append(f"{node}: attribute 'kind', expected 'gradient', got {attrs['kind']!r}")
    if "of" in attrs and attrs["of"] != "own_class_logit":
        problems.append(f"{node}: attribute 'of', expected 'own_class_logit', got {attrs['of']!r}")
    reduction = attrs.get("reduction")
    if isinstance(reduction, dict):
        kind = reduction.get("kind")
        if kind not in LINEAR_REDUCTIONS:
            problems.append(f"{node}: reduction kind, expected a linear one {LINEAR_REDUCTIONS} (a max has no "
                            f"matrix R, §6.1), got {kind!r}")
        if isinstance(battrs.get("reduction"), dict) and reduction != battrs["reduction"]:
            problems.append(f"{node}: attribute 'reduction' differs from the block's, expected "
                            f"{battrs['reduction']!r:.120}, got {reduction!r:.120}")
        scale = attrs.get("lift_scale")
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            expected = lift_scale_for(reduction, battrs.get("source_shape", reduction.get("source_shape")))
            old_project = kind == "project" and tuple(version) < PROJECT_LIFT_FIXED and scale == 1
            if not (math.isfinite(scale) and scale > 0):
                problems.append(f"{node}: attribute 'lift_scale', expected a finite number > 0, got {scale!r}")
            elif expected is not None and not old_project and not math.isclose(scale, expected, rel_tol=1e-9):
                what = {"gap": "H·W of source_shape", "project": "K / prod(source_shape)"}.get(
                    str(kind), f"1 for reduction {kind!r}")
                problems.append(f"{node}: attribute 'lift_scale', expected {expected:g} ({what}), got {scale!r}")
    rows_done = attrs.get("rows_done")
    rows_ok = isinstance(rows_done, int) and not isinstance(rows_done, bool)
    if rows_ok and not 0 <= rows_done <= n:
        problems.append(f"{node}: attribute 'rows_done' out of range, expected 0..{n}, got {rows_done}")
    if attrs.get("complete") is True:
        if rows_ok and rows_done != n:
            problems.append(f"{node}: complete but rows_done is not n_samples, expected {n}, got {rows_done}")
        if shape and shape[0] == n:
            problems.extend(_complete_array_problems(backend, node, "gradient array"))
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_concept_sets(store, allow_extra: bool, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Concept example sets (§10); returns the listed sets' attributes by name."""
    backend = store.backend
    kind = backend.node_kind(CONCEPT_SETS)
    if kind is None:
        return {}
    if kind != "group":
        problems.append(f"{CONCEPT_SETS}: node kind {kind}, expected a group")
        return {}
    sets: dict[str, dict[str, Any]] = {}
    ids = None
    groups, _ = backend.list_children(CONCEPT_SETS)
    for name in groups:
        node = f"{CONCEPT_SETS}/{name}"
        if not is_valid_name(name):
            problems.append(f"{node}: invalid concept set name {name!r}")
            continue
        attrs = backend.get_attrs(node)
        if "kind" not in attrs:
            continue  # attributes come last: a set being written is not a set yet (§10)
        sets[name] = attrs
        problems.extend(check_fields("concept_set", attrs, node, allow_extra=allow_extra))
        set_kind = attrs.get("kind")
        if set_kind not in SET_KINDS:
            problems.append(f"{node}: attribute 'kind', expected one of {SET_KINDS}, got {set_kind!r}")
        role = attrs.get("role", "concept")
        if role not in SET_ROLES:
            problems.append(f"{node}: attribute 'role', expected one of {SET_ROLES}, got {role!r}")
        m = attrs.get("n")
        if _is_int(m) and m < 1:
            problems.append(f"{node}: attribute 'n' (examples), expected >= 1, got {m}")
        m = m if _is_int(m) else None
        set_ids = None
        if backend.node_kind(f"{node}/sample_id") != "array":
            problems.append(f"{node}: missing array sample_id, expected [{m if m is not None else 'n'}] ids")
        else:
            shape, dtype, _ = backend.array_meta(f"{node}/sample_id")
            if m is not None and shape != (m,):
                problems.append(f"{node}/sample_id: shape, expected ({m},) (attribute n), got {shape}")
            if dtype.kind not in "USO":
                problems.append(f"{node}/sample_id: dtype, expected strings, got {dtype}")
            elif len(shape) == 1:
                set_ids = backend.read(f"{node}/sample_id")
        has_rows = backend.node_kind(f"{node}/rows") == "array"
        if set_kind == "external" and has_rows:
            problems.append(f"{node}/rows: rows in an external set, expected none (kind 'dataset' only)")
        if set_kind != "dataset":
            continue
        if not has_rows:
            problems.append(f"{node}: missing array rows, expected [{m if m is not None else 'n'}] int64 "
                            f"(kind 'dataset')")
            continue
        shape, dtype, _ = backend.array_meta(f"{node}/rows")
        if m is not None and shape != (m,):
            problems.append(f"{node}/rows: shape, expected ({m},) (attribute n), got {shape}")
        if dtype != np.dtype("int64"):
            problems.append(f"{node}/rows: dtype, expected int64, got {dtype}")
        if dtype.kind not in "iu" or len(shape) != 1:
            continue
        rows = backend.read(f"{node}/rows").astype(np.int64)
        steps = np.diff(rows)
        if (steps < 0).any():
            problems.append(f"{node}/rows: not sorted, expected increasing rows, got a decrease at position "
                            f"{int(np.flatnonzero(steps < 0)[0]) + 1}")
        if len(np.unique(rows)) != len(rows):
            problems.append(f"{node}/rows: not unique, expected {len(rows)} distinct rows, got "
                            f"{len(np.unique(rows))}")
        n = store.n_samples
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            problems.append(f"{node}/rows: out of range, expected rows in 0..{n - 1}, got "
                            f"{int(rows.min())}..{int(rows.max())}")
        elif set_ids is not None and set_ids.shape == rows.shape:
            if ids is None:
                try:
                    ids = store.sample_ids()
                except ProbestoreError as exc:
                    problems.append(str(exc))
                    continue
            wrong = np.flatnonzero(ids[rows] != set_ids)
            if len(wrong):
                i = int(wrong[0])
                problems.append(f"{node}/rows: do not point at sample_id ({len(wrong)} of {len(rows)}), expected "
                                f"samples/sample_id[{int(rows[i])}] == {str(set_ids[i])!r:.60}, got "
                                f"{str(ids[rows[i]])!r:.60}")
    return sets


def _validate_concept_blocks(store, ckpt_node: str, sets: dict[str, dict[str, Any]],
                             allow_extra: bool) -> list[str]:
    """External sets' feature blocks of one checkpoint (§10)."""
    backend = store.backend
    problems: list[str] = []
    base = f"{ckpt_node}/{CONCEPT_SETS}"
    for set_name in backend.list_children(base)[0]:
        snode = f"{base}/{set_name}"
        if not is_valid_name(set_name):
            problems.append(f"{snode}: invalid concept set name {set_name!r}")
            continue
        if set_name not in sets:
            problems.append(f"{snode}: features of an unregistered concept set, expected one of "
                            f"{sorted(sets) or 'no sets'} (concept_sets/<set> with 'kind'), got {set_name!r}")
            continue
        if sets[set_name].get("kind") != "external":
            problems.append(f"{snode}: own features for a set of kind {sets[set_name].get('kind')!r}, expected "
                            f"kind 'external' (dataset sets use the layer's rows)")
            continue
        if backend.node_kind(f"{snode}/layers") != "group":
            continue
        m = sets[set_name].get("n")
        for layer in backend.list_children(f"{snode}/layers")[0]:
            node = f"{snode}/layers/{layer}"
            if not is_valid_name(layer):
                problems.append(f"{node}: invalid layer name {layer!r}")
                continue
            attrs = backend.get_attrs(node)
            problems.extend(check_fields("concept_block", attrs, node, allow_extra=allow_extra))
            layer_node = f"{ckpt_node}/layers/{layer}"
            if backend.node_kind(layer_node) != "group":
                problems.append(f"{node}: no layer block {layer!r} in the checkpoint, expected "
                                f"{layer_node} (sets are reduced like a layer's samples)")
                layer_attrs: dict[str, Any] = {}
            else:
                layer_attrs = backend.get_attrs(layer_node)
            n_features = attrs.get("n_features")
            if "n_features" in layer_attrs and n_features != layer_attrs["n_features"]:
                problems.append(f"{node}: attribute 'n_features' differs from the layer block's, expected "
                                f"{layer_attrs['n_features']}, got {n_features!r}")
            if "reduction" in attrs and "reduction" in layer_attrs and attrs["reduction"] != layer_attrs["reduction"]:
                problems.append(f"{node}: attribute 'reduction' differs from the layer block's, expected "
                                f"{layer_attrs['reduction']!r:.120}, got {attrs['reduction']!r:.120}")
            complete = attrs.get("complete") is True
            array = f"{node}/{layout.FEATURES_ARRAY}"
            if backend.node_kind(array) != "array":
                if complete:
                    problems.append(f"{node}: complete but missing array features, expected [{m}, {n_features}]")
                continue
            shape, dtype, _ = backend.array_meta(array)
            if shape != (m, n_features):
                problems.append(f"{array}: shape, expected ({m}, {n_features}) (set n, n_features), got {shape}")
            if dtype not in (np.dtype("float32"), np.dtype("float16")):
                problems.append(f"{array}: dtype, expected float32 or float16, got {dtype}")
            if complete:
                problems.extend(_complete_array_problems(backend, array, "concept set block"))
    return problems


# --------------------------------------------------------------------------- damage, links, widths, splits


@contextmanager
def _collect(problems: list[str]) -> Iterator[None]:
    """Run the checks of one node; a node whose metadata cannot be read (a corrupt
    ``zarr.json``, a non-JSON HDF5 attribute) becomes a listed violation and the walk
    goes on with the next node, so one damaged file does not hide the others."""
    try:
        yield
    except ProbestoreError as exc:
        problems.append(str(exc))


def _children(backend, node: str, problems: list[str]) -> tuple[list[str], list[str]]:
    """``backend.list_children`` that survives damaged children.

    Listing reads every child's metadata; when one is unreadable, a directory store is
    listed again child by child, the unreadable ones listed as violations and their
    siblings still returned (a single-file store has no finer unit: its error is listed).
    """
    try:
        return backend.list_children(node)
    except ProbestoreError as exc:
        first = str(exc)
    base = Path(backend.path) / node if node else Path(backend.path)
    if not base.is_dir():
        problems.append(first)
        return [], []
    try:
        backend.node_kind(node)
    except ProbestoreError as exc:  # the node itself is unreadable: nothing below it can be listed
        problems.append(str(exc))
        return [], []
    groups: list[str] = []
    arrays: list[str] = []
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            kind = backend.node_kind(f"{node}/{entry.name}" if node else entry.name)
        except ProbestoreError as exc:
            problems.append(str(exc))
            continue
        if kind == "group":
            groups.append(entry.name)
        elif kind == "array":
            arrays.append(entry.name)
    return groups, arrays


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _links_leaving(path: str | Path) -> list[str]:
    """Links that lead out of the store: readers would follow them silently.

    A directory store may contain symbolic links (to files or directories) only when they
    resolve inside the store; an HDF5 store may not hold external links, external raw data
    or virtual datasets sourced from other files. The links are reported, not followed.
    """
    path = Path(path)
    if path.is_dir():
        root = os.path.realpath(path)
        problems = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                if os.path.islink(full) and not _inside(os.path.realpath(full), root):
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    problems.append(f"{rel}: symbolic link leaving the store, expected a file or directory inside "
                                    f"{path.name}, got a link to {os.readlink(full)}")
        return problems
    return _h5_links_leaving(path)


def _h5_links_leaving(path: Path) -> list[str]:
    import h5py

    problems: list[str] = []

    def visit(group, prefix: str) -> None:
        for name in sorted(group):
            node = f"{prefix}{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"{node}: external link leaving the store, expected a node inside {path.name}, "
                                f"got a link to {link.filename}:{link.path}")
                continue
            if isinstance(link, h5py.SoftLink):
                continue  # a path inside the file; its target is checked where it lives
            obj = group[name]
            if isinstance(obj, h5py.Group):
                visit(obj, f"{node}/")
            elif obj.external:
                problems.append(f"{node}: raw data in external file(s), expected data inside {path.name}, "
                                f"got {', '.join(str(e[0]) for e in obj.external)}")
            elif obj.is_virtual and any(s.file_name != "." for s in obj.virtual_sources()):
                files = sorted({s.file_name for s in obj.virtual_sources() if s.file_name != "."})
                problems.append(f"{node}: virtual dataset sourced from other file(s), expected data inside "
                                f"{path.name}, got {', '.join(files)}")

    try:
        with h5py.File(path, "r") as handle:
            visit(handle, "")
    except OSError:
        return []  # unreadable: opening the store already said so
    return problems


def _logits_width_problems(store, run_node: str, ckpt: str, run_attrs: dict[str, Any]) -> list[str]:
    """The outputs block holds one logit per class the store records: the run's
    ``model.num_classes`` when recorded, else ``len(class_names)`` (SCHEMA.md §4.3, §6)."""
    group = f"{run_node}/checkpoints/{ckpt}/{layout.OUTPUTS}"
    if store.backend.node_kind(group) != "group":
        return []
    width = store.backend.get_attrs(group).get("n_features")
    model = run_attrs.get("model")
    recorded = model.get("num_classes") if isinstance(model, dict) else None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        expected, source = recorded, "the run's model.num_classes"
    else:
        expected, source = len(store.dataset.class_names), "len(class_names)"
    if not _is_int(width) or width == expected:
        return []  # a mistyped n_features is reported by the block's field check
    return [f"{group}: logits width differs from the number of classes, expected {expected} ({source}), "
            f"got n_features {width}"]


def _outputs_rule(store, run_attrs: dict[str, Any]) -> bool | None:
    """False: no outputs block allowed (head dropped); True: one required; None: optional.

    Text stores (root ``dataset.unit``, schema 1.3) hold logits only when the model gives
    them per row: a bare encoder (hidden states, no logits) or a sequence classifier
    probed on token rows has none.
    """
    if _head_dropped(run_attrs):
        return False
    return None if getattr(store, "unit", None) is not None else True


def _head_dropped(run_attrs: dict[str, Any]) -> bool:
    model = run_attrs.get("model")
    return isinstance(model, dict) and model.get("head") == "drop"


def _model_head_problems(store, run_node: str, run_attrs: dict[str, Any]) -> list[str]:
    """The run's ``model.head``, ``model.class_names`` and ``model.class_map`` (schema 1.3,
    SCHEMA.md §4.3): known head mode, one name per output, dataset classes mapped to
    distinct outputs of the head."""
    model = run_attrs.get("model")
    if not isinstance(model, dict):
        return []
    new = [k for k in ("head", "class_names", "class_map") if k in model]
    if not new:
        return []
    where = f"{run_node}: model"
    problems = []
    if store.schema_version < NODES_1_3:
        problems.append(f"/: schema_version '{'.'.join(map(str, store.schema_version))}' with {run_node} "
                        f"model.{new[0]}, expected '1.3' (SCHEMA.md §2), got an older version")
    recorded = model.get("num_classes")
    width = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1 else None
    if "head" in model and model["head"] not in ("keep", "drop"):
        problems.append(f"{where}.head, expected 'keep' or 'drop', got {model['head']!r}")
    names = model.get("class_names")
    if "class_names" in model and (not isinstance(names, list) or not all(isinstance(c, str) for c in names)
                                   or len(names) != width or len(set(names)) != len(names)):
        problems.append(f"{where}.class_names, expected {width} unique strings (model.num_classes), "
                        f"got {type(names).__name__} {str(names)[:60]}")
    cmap = model.get("class_map")
    if "class_map" in model:
        classes = list(store.dataset.class_names)
        if not isinstance(cmap, dict) or not cmap:
            problems.append(f"{where}.class_map, expected an object of dataset class -> model class index, "
                            f"got {cmap!r:.60}")
        else:
            limit = width if width is not None else 0  # no valid width: every index is out of range
            bad = [k for k, v in cmap.items() if k not in classes or not _is_int(v) or not 0 <= v < limit]
            if bad or len(set(cmap.values())) != len(cmap):
                problems.append(f"{where}.class_map, expected dataset classes mapped to distinct indices in "
                                f"[0, {width}), got {str(cmap)[:80]}")
        if model.get("head") == "drop":
            problems.append(f"{where}.class_map, expected none with head 'drop', got one")
    return problems


def split_warnings(store) -> list[str]:
    """Selection and reporting splits that lack classes present in train.

    A classifier probe selects C on ``valid`` and reports on ``test``: a class present
    in train but absent from such a split makes both numbers describe another problem
    (issue: a valid split with one class picked C = 1e-4 and a test error at chance,
    status ok). Checked for the true labels and for the training labels of every run
    whose training labels differ from them (its probes on training labels use them in
    every split). Stratified splits (``extract.splits``) never trigger it.
    """
    names = list(store.dataset.split_names)
    if "train" not in names:
        return []
    try:
        splits, labels = store.splits(), store.labels()
    except ProbestoreError:
        return []  # listed as a violation
    class_names = list(store.dataset.class_names)
    sets = [(layout.SAMPLE_LABEL, "true labels", labels)]
    for run in store.runs():
        try:
            train_labels = store.train_labels(run)
        except ProbestoreError:
            continue  # listed as a violation
        if train_labels.shape == labels.shape and not np.array_equal(train_labels, labels):
            sets.append((f"{layout.RUNS}/{run}/train_labels", f"training labels of run {run!r}", train_labels))
    out = []
    for node, what, y in sets:
        in_train = np.unique(y[splits == names.index("train")])
        for split in ("valid", "test"):
            if split not in names:
                continue
            missing = np.setdiff1d(in_train, y[splits == names.index(split)])
            if missing.size:
                shown = [class_names[c] if 0 <= c < len(class_names) else int(c) for c in missing.tolist()]
                out.append(f"{node}: split {split!r} lacks {missing.size} of the {in_train.size} classes present "
                           f"in train ({what}), expected every train class (probes select on valid and report on "
                           f"test), got none of {shown[:10]}{' ...' if len(shown) > 10 else ''}")
    return out
