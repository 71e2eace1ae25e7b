"""``probestore inspect``: a readable tree of what a store holds."""

from __future__ import annotations

from storage_schema.store import ActivationStore


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _reduction(reduction: dict | None) -> str:
    if not reduction:
        return "none"
    kind = reduction.get("kind", "?")
    params = reduction.get("params") or {}
    k = params.get("k")
    return f"{kind}:{k}" if k is not None else str(kind)


def render_tree(store: ActivationStore, *, show_incomplete: bool = True) -> str:
    """The store as an indented tree: dataset, targets, runs, checkpoints, blocks."""
    ds = store.dataset
    splits = store.splits()
    counts = ", ".join(f"{name} {(splits == i).sum()}" for i, name in enumerate(ds.split_names))
    lines = [
        f"{store.path}  ({store.format}, schema {'.'.join(map(str, store.schema_version))}, "
        f"{_size(store.backend.stored_bytes(''))} on disk)",
        f"dataset {ds.name!r}: {ds.n_samples} samples ({counts}), {len(ds.class_names)} classes, {ds.fingerprint[:23]}...",
    ]
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
                    f"{_size(store.stored_bytes(run, ckpt.name, block.name))}  {done}"
                )
    return "\n".join(lines)
