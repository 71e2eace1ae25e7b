"""``probestore inspect``: what a store holds, as a full tree, one line per run, or a summary."""

from __future__ import annotations

from collections.abc import Sequence

from probestore.progress import format_bytes
from storage_schema.store import ActivationStore


def _reduction(reduction: dict | None) -> str:
    if not reduction:
        return "none"
    kind = reduction.get("kind", "?")
    params = reduction.get("params") or {}
    k = params.get("k")
    return f"{kind}:{k}" if k is not None else str(kind)


#: The tokenization keys ``inspect`` shows (SCHEMA.md §12.1), in this order.
_TOKENIZATION_KEYS = ("tokenizer", "max_length", "truncation", "alignment", "truncated_sequences", "dropped_words")


def _unit_lines(store: ActivationStore) -> list[str]:
    """What one row is (schema 1.3): a sequence, or a token or word of one of n sequences."""
    ds = store.dataset
    if ds.unit is None:
        return []
    tok = dict(ds.tokenization or {})
    if isinstance(tok.get("tokenizer"), dict):  # the reference writer records the tokenizer's class and folder
        tokenizer = tok["tokenizer"]
        tok["tokenizer"] = " ".join(str(tokenizer[k]) for k in ("name", "folder") if tokenizer.get(k))
    how = ", ".join(f"{k} {tok[k]}" for k in _TOKENIZATION_KEYS if tok.get(k) is not None)
    if ds.unit in ("token", "word"):
        line = f"rows: {ds.unit}s of {ds.n_sequences} sequences (splits drawn by sequence)"
    else:
        line = "rows: sequences (one row per sequence)"
    return [line + (f"; {how}" if how else "")]


def history_lines(store: ActivationStore) -> list[str]:
    """One line per root ``history`` entry (SCHEMA.md §4.1): when, and what was added, changed or deleted.

    A store grown step by step, or deleted from, says so here: the config it records is
    the union of every step, and a run the config names may have been deleted since.
    """
    history = store.root_attrs.get("history")
    if not isinstance(history, list):
        return []
    lines = []
    for entry in history:
        if not isinstance(entry, dict):
            lines.append(f"{entry!r:.60} (not a history entry: `probestore validate STORE` says more)")
            continue
        parts = [f"{key} {_names([str(v) for v in entry[key]], limit=6)}"
                 for key in ("added", "changed", "deleted") if isinstance(entry.get(key), list) and entry[key]]
        what = "; ".join(parts) or ("the recorded config only" if "added" in entry else "nothing")
        lines.append(f"{entry.get('time', '?')}  {what}"
                     f"  (probestore {entry.get('probestore_version', '?')})")
    return lines


def render_tree(store: ActivationStore, *, show_incomplete: bool = True) -> str:
    """The store as an indented tree: dataset, targets, runs, checkpoints, blocks."""
    ds = store.dataset
    splits = store.splits()
    counts = ", ".join(f"{name} {(splits == i).sum()}" for i, name in enumerate(ds.split_names))
    lines = [
        f"{store.path}  ({store.format}, schema {'.'.join(map(str, store.schema_version))}, "
        f"{format_bytes(store.backend.stored_bytes(''))} on disk)",
        f"dataset {ds.name!r}: {ds.n_samples} samples ({counts}), {len(ds.class_names)} classes, {ds.fingerprint[:23]}...",
    ]
    lines.extend(_unit_lines(store))
    history = history_lines(store)
    if history:
        lines.append(f"history ({len(history)}):")
        lines += [f"  {line}" for line in history]
    if store.has_sample_types():
        types_info = store.sample_types_info()
        method = types_info.get("method") or {}
        how = ", ".join(f"{k} {v}" for k, v in method.items() if k != "kind")
        lines.append(f"sample types: {types_info.get('n_types')} "
                     f"({method.get('kind', 'given')}{'; ' + how if how else ''})")
    else:
        lines.append("sample types: none (control probes need them: rerun `probestore extract CONFIG`)")
    targets = store.target_names()
    lines.append(f"targets ({len(targets)}):")
    for name in targets:
        target = store.target_info(name)
        fam = f" [{target.family}]" if target.family else ""
        lines.append(f"  {name}: {target.kind}{fam}")
    runs = store.runs()
    lines.append(f"runs ({len(runs)}):")
    for run in runs:
        info = store.run_info(run)
        lines.append(
            f"  {run}: model {info.model.get('name', '?')}, corruption {info.corruption_fraction:g}"
            f" ({info.corruption_mode}), architecture {info.architecture}"
        )
        head = _head_line(info.model, ds.class_names)
        if head:
            lines.append(f"    {head}")
        for ckpt in store.checkpoints(run, include_incomplete=show_incomplete):
            state = "complete" if ckpt.complete else "INCOMPLETE"
            epoch = "?" if ckpt.epoch is None else ckpt.epoch
            lines.append(f"    {ckpt.name} (epoch {epoch}) {state}")
            for block in store.blocks(run, ckpt.name, include_incomplete=True):
                done = "complete" if block.complete else f"INCOMPLETE {block.rows_done}/{ds.n_samples} rows"
                shape = "x".join(str(s) for s in block.source_shape or [])
                lines.append(
                    f"      {block.name:<24} [{ds.n_samples}, {block.n_features}] {block.dtype}  "
                    f"from {shape or '?'} by {_reduction(block.reduction)}  "
                    f"{format_bytes(store.stored_bytes(run, ckpt.name, block.name))}  {done}"
                )
    return "\n".join(lines)


def _head_line(model: dict, dataset_classes: list[str]) -> str:
    """How the run's model head relates to the dataset (SCHEMA.md §4.3); "" when it is the dataset's."""
    if model.get("head") == "drop":
        return "head: dropped (hidden layers only; no outputs block, no model-output analyses)"
    width = model.get("num_classes", len(dataset_classes))
    names = model.get("class_names")
    cmap = model.get("class_map")
    if isinstance(cmap, dict) and cmap:
        return (f"head: {width} model classes; class_map maps {len(cmap)} of the {len(dataset_classes)} dataset "
                "classes (model-output analyses on those only)")
    if width != len(dataset_classes) or (names is not None and list(names) != list(dataset_classes)):
        return f"head: {width} model classes, not the dataset's (no class_map: model-output analyses skipped)"
    return ""


def _names(names: Sequence[str], limit: int = 8) -> str:
    """``a, b, c`` or, for long lists, the first and last few and how many in between."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit - 1]) + f", ... ({len(names) - limit} more), " + names[-1]


def _layer_names(store: ActivationStore, run: str) -> list[str]:
    """Every layer stored for a run, in its checkpoints' layer order (first seen first)."""
    seen: dict[str, None] = {}
    for ckpt in store.checkpoints(run, include_incomplete=True):
        seen.update(dict.fromkeys(store.layers(run, ckpt, include_incomplete=True)))
    return list(seen)


def render_runs(store: ActivationStore) -> str:
    """One line per run: name, architecture, corruption, complete/total checkpoints, layers."""
    runs = store.runs()
    if not runs:
        return f"{store.path}: no runs (`probestore extract CONFIG` adds them)"
    width = max(len(r) for r in runs)
    lines = []
    for run in runs:
        ckpts = store.checkpoints(run, include_incomplete=True)
        layers = _layer_names(store, run)
        lines.append(
            f"{run:<{width}}  architecture {run.architecture}  corruption {run.corruption_fraction:g} ({run.corruption_mode})  "
            f"checkpoints {sum(c.complete for c in ckpts)}/{len(ckpts)} complete  "
            f"layers ({len(layers)}): {_names(layers) or 'none'}"
        )
    return "\n".join(lines)


def render_summary(store: ActivationStore) -> str:
    """A few lines: dataset, samples, splits, classes, runs, checkpoints, layers, size, schema."""
    ds = store.dataset
    splits = store.splits()
    runs = store.runs()
    ckpts = [c for r in runs for c in store.checkpoints(r, include_incomplete=True)]
    layers: dict[str, None] = {}
    for run in runs:
        layers.update(dict.fromkeys(_layer_names(store, run)))
    lines = [
        f"{store.path}  ({store.format}, schema {'.'.join(map(str, store.schema_version))}, "
        f"{format_bytes(store.backend.stored_bytes(''))} on disk)",
        f"dataset     {ds.name!r}: {ds.n_samples} samples",
        *(f"            {line}" for line in _unit_lines(store)),
        "splits      " + ", ".join(f"{name} {(splits == i).sum()}" for i, name in enumerate(ds.split_names)),
        f"classes     {len(ds.class_names)}: {_names(ds.class_names)}",
        f"runs        {len(runs)}: {_names(runs) or 'none'}",
        f"checkpoints {sum(c.complete for c in ckpts)} complete of {len(ckpts)}",
        f"layers      {len(layers)}: {_names(list(layers)) or 'none'}",
        f"targets     {len(store.target_names())}",
    ]
    history = history_lines(store)
    if history:
        lines.append(f"history     {len(history)} entr{'y' if len(history) == 1 else 'ies'}")
        lines += [f"            {line}" for line in history]
    return "\n".join(lines)
