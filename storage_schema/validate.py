"""``validate_store``: check a store against SCHEMA.md and list every violation.

Unlike ``open_store``, which stops at the first problem it needs to stop at, the
validator walks the whole store and collects everything that is wrong, so that a user
(or ``probestore validate``) sees the full picture at once. It only reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage_schema import layout
from storage_schema.errors import ProbestoreError
from storage_schema.fingerprint import dataset_fingerprint
from storage_schema.metadata import BLOCK_KINDS, TARGET_KINDS, check_fields
from storage_schema.names import is_valid_name
from storage_schema.version import SCHEMA_VERSION, parse_version


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
            problems.extend(_validate_checkpoint(store, run, ckpt, allow_extra))
    return problems


def _validate_checkpoint(store, run: str, ckpt: str, allow_extra: bool) -> list[str]:
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
        shape, dtype, _ = backend.array_meta(array)
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
    return problems
