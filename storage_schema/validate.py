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
Every message reads ``<node>: <what>, expected <...>, got <...>``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from storage_schema import layout
from storage_schema.concept_sets import CONCEPT_SETS, SET_KINDS
from storage_schema.errors import ProbestoreError
from storage_schema.fingerprint import dataset_fingerprint
from storage_schema.metadata import BLOCK_KINDS, TARGET_KINDS, check_fields
from storage_schema.names import is_valid_name
from storage_schema.version import SCHEMA_VERSION, parse_version

GRAD_ARRAY = "grad_own_logit"  # extract.gradients.GRAD_ARRAY (no torch import here)
#: Reductions with a matrix ``R`` (SCHEMA.md §6.1); ``gmp`` is not linear.
LINEAR_REDUCTIONS = ("flatten", "none", "random", "project", "gap")
SET_ROLES = ("concept", "random")
#: The first version with the optional nodes of §6.1 and §10.
NODES_1_1 = (1, 1)


def validate_store(path: str | Path) -> list[str]:
    """Every violation of the schema found in the store at ``path`` (empty when valid)."""
    from storage_schema.store import ActivationStore

    try:
        store = ActivationStore.open(path, mode="r")
    except ProbestoreError as exc:
        return [str(exc)]
    problems: list[str] = []
    backend = store.backend
    allow_extra = store.schema_version > parse_version(SCHEMA_VERSION, "")
    n = store.n_samples

    def check_node_names(node: str, kind: str) -> list[str]:
        groups, arrays = backend.list_children(node)
        for name in groups + arrays:
            if not is_valid_name(name):
                problems.append(f"{node}/{name}: invalid {kind} name {name!r}")
        return [g for g in groups if is_valid_name(g)]

    # --- samples and fingerprint
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

    # --- targets
    for name in backend.list_children(layout.TARGETS)[1]:
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

    # --- architectures (shared random indices)
    for arch in check_node_names(layout.ARCHITECTURES, "architecture"):
        for layer in check_node_names(f"{layout.ARCHITECTURES}/{arch}", "layer"):
            node = f"{layout.ARCHITECTURES}/{arch}/{layer}"
            problems.extend(check_fields("reduction_indices", backend.get_attrs(node), node, allow_extra=allow_extra))
            if backend.node_kind(f"{node}/indices") != "array":
                problems.append(f"{node}: missing indices array")

    # --- concept example sets (schema 1.1, §10)
    sets = _validate_concept_sets(store, allow_extra, problems)
    seen_1_1: list[str] = []  # gradient arrays found (a 1.0 store must not hold any)

    # --- runs, checkpoints, blocks
    for run in check_node_names(layout.RUNS, "run"):
        node = f"{layout.RUNS}/{run}"
        attrs = backend.get_attrs(node)
        problems.extend(check_fields("run", attrs, node, allow_extra=allow_extra))
        if isinstance(attrs.get("corruption"), dict):
            problems.extend(check_fields("corruption", attrs["corruption"], f"{node} corruption", allow_extra=allow_extra))
        for array in ("train_labels", "corrupted"):
            if backend.node_kind(f"{node}/{array}") != "array":
                problems.append(f"{node}: missing array {array}")
            elif backend.array_meta(f"{node}/{array}")[0] != (n,):
                problems.append(f"{node}/{array}: shape {backend.array_meta(f'{node}/{array}')[0]}, expected ({n},)")
        if backend.node_kind(f"{node}/checkpoints") != "group":
            problems.append(f"{node}: missing group checkpoints")
            continue
        for ckpt in check_node_names(f"{node}/checkpoints", "checkpoint"):
            problems.extend(_validate_checkpoint(store, run, ckpt, allow_extra, sets, seen_1_1))
    if store.schema_version < NODES_1_1 and (sets or seen_1_1):
        found = (["concept_sets"] if sets else []) + seen_1_1[:2]
        problems.append(f"/: schema_version '{'.'.join(map(str, store.schema_version))}' with schema-1.1 "
                        f"nodes, expected '{SCHEMA_VERSION}' (SCHEMA.md §2), got {', '.join(found)}")
    return problems


def _validate_checkpoint(store, run: str, ckpt: str, allow_extra: bool,
                         sets: dict[str, dict[str, Any]], seen_1_1: list[str]) -> list[str]:
    backend = store.backend
    n = store.n_samples
    node = layout.checkpoint_node(run, ckpt)
    attrs = backend.get_attrs(node)
    problems = check_fields("checkpoint", attrs, node, allow_extra=allow_extra)
    complete = attrs.get("complete") is True
    blocks = []
    if backend.node_kind(f"{node}/layers") == "group":
        groups, _ = backend.list_children(f"{node}/layers")
        blocks += [(name, f"{node}/layers/{name}", layout.FEATURES_ARRAY) for name in groups]
    if backend.node_kind(f"{node}/{layout.OUTPUTS}") == "group":
        blocks.append((layout.OUTPUTS, f"{node}/{layout.OUTPUTS}", layout.LOGITS_ARRAY))
    elif complete:
        problems.append(f"{node}: complete checkpoint without an outputs block (logits)")
    if complete and not blocks:
        problems.append(f"{node}: complete checkpoint without blocks")
    for name, group, array_name in blocks:
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
        if complete and not block_complete:
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
    if GRAD_ARRAY in groups:
        seen_1_1.append(f"{group}/{GRAD_ARRAY}")
        problems.append(f"{group}/{GRAD_ARRAY}: node kind group, expected an array [n, n_features]")
    for name in arrays:
        if name == layout.FEATURES_ARRAY:
            continue
        node = f"{group}/{name}"
        shape, dtype, chunks = backend.array_meta(node)
        if not shape or shape[0] != n:
            problems.append(f"{node}: samples on axis 0 expected ({n} rows), got shape {shape}")
        elif chunks[0] != chunk_rows:
            problems.append(f"{node}: chunk rows differ from the block's, expected {chunk_rows}, got {chunks[0]}")
        if name == GRAD_ARRAY:
            seen_1_1.append(node)
            problems.extend(_validate_gradient(backend, node, battrs, shape, dtype, n, allow_extra))
    return problems


def _validate_gradient(backend, node: str, battrs: dict[str, Any], shape, dtype, n: int,
                       allow_extra: bool) -> list[str]:
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
            source = battrs.get("source_shape", reduction.get("source_shape"))
            expected: float | None = 1.0
            if kind == "gap":
                spatial = source[1:] if isinstance(source, list) and len(source) >= 2 else None
                ok = spatial is not None and all(isinstance(s, int) and not isinstance(s, bool) for s in spatial)
                expected = float(math.prod(spatial)) if ok and spatial is not None else None
            if not (math.isfinite(scale) and scale > 0):
                problems.append(f"{node}: attribute 'lift_scale', expected a finite number > 0, got {scale!r}")
            elif expected is not None and not math.isclose(scale, expected, rel_tol=1e-9):
                what = "H·W of source_shape" if kind == "gap" else f"1 for reduction {kind!r}"
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
