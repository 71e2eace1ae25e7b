"""``probestore export``: one checkpoint's features, with everything needed to use them, in a plain file.

For a colleague without probestore: a ``.npz`` loads with numpy alone, with
``allow_pickle=False`` (no object arrays: names and ids are fixed-width unicode, the
provenance is one JSON string), and a ``.csv`` (small blocks) opens anywhere.

``.npz`` keys (every per-sample array in store order, row ``i`` is ``sample_id[i]``):

* ``features/<layer>`` float32|float16 ``[n, F]`` for each selected layer, in the
  checkpoint's layer order; ``layers``: those names; ``logits`` ``[n, C]`` when the
  ``outputs`` block is selected;
* ``sample_id``, ``label`` (true class index), ``split`` (index into ``split_names``),
  ``split_names``, ``class_names``;
* ``train_label`` (what the run's model was trained on) and ``corrupted``
  (``train_label != label``) of the run;
* ``targets/<name>`` for every target (concept measures, class or binary targets);
* ``sample_type`` (control-task types), ``sequence`` and ``position`` (token rows)
  where the store has them;
* ``meta``: a JSON string (``json.loads(str(z["meta"]))``) with the store, dataset,
  fingerprint, run, checkpoint, epoch, and each layer's shape, reduction and dtype.

Blocks are copied one chunk of rows at a time (the ``.npy`` header first, then the
rows), so exporting a layer larger than memory works; the file is written under a
temporary name and renamed, so a killed export leaves no half file.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probestore.atomic import atomic_path
from probestore.errors import ConfigError, NotFoundError
from probestore.selectors import select
from storage_schema import layout
from storage_schema.store import ActivationStore, probestore_version

__all__ = ["CSV_MAX_VALUES", "ExportPlan", "plan_export", "export_npz", "export_csv", "export"]

#: The most feature values a ``.csv`` export writes (samples x features of all blocks):
#: ~10 bytes of text each, so ~50 MB of CSV. Beyond it spreadsheets choke and ``.npz``
#: (binary, exact, ~4 bytes each) is the format to use.
CSV_MAX_VALUES = 5_000_000

_FORMATS = (".npz", ".csv")
_CSV_BATCH = 4096  # rows formatted at once
_HINT = "`probestore inspect STORE` lists runs, checkpoints and layers"


@dataclass(frozen=True)
class ExportPlan:
    """One checkpoint and the blocks of it an export writes (all complete)."""

    run: str
    checkpoint: str
    blocks: list[str]  # layer names in the checkpoint's order, then "outputs" when chosen

    @property
    def layers(self) -> list[str]:
        return [b for b in self.blocks if b != layout.OUTPUTS]


def _one(store: ActivationStore, names: Sequence[str], pattern: str, what: str, option: str) -> str:
    chosen = select(names, pattern, what=what, where=f"probestore export {option}", hint=_HINT)
    if len(chosen) != 1:
        raise ConfigError(f"export writes one {what}, but {pattern!r} matches {len(chosen)}",
                          where=f"probestore export {option}", expected=f"one {what}", got=", ".join(chosen),
                          fix=f"give one {what} name, e.g. {option} {chosen[0]}; export the others to other files")
    return chosen[0]


def plan_export(store: ActivationStore, run: str, checkpoint: str, layers: str | list[str] | None) -> ExportPlan:
    """Resolve ``--run``, ``--checkpoint`` and ``--layers`` (None: every layer and the outputs).

    Refuses a pattern that matches nothing (the one selector's error) and any chosen
    block that is not complete: its rows are not all written, and a file cannot say so.
    """
    run_name = _one(store, store.runs(), run, "run", "--run")
    ckpt_name = _one(store, store.checkpoints(run_name, include_incomplete=True), checkpoint, "checkpoint",
                     "--checkpoint")
    blocks = store.blocks(run_name, ckpt_name, include_incomplete=True)
    chosen = select(blocks, layers, what="layer", where="probestore export --layers", hint=_HINT)
    incomplete = [b for b in blocks if b in chosen and not b.complete]
    if incomplete:
        raise NotFoundError(
            f"cannot export incomplete block(s) of {run_name}/{ckpt_name}: their rows are not all written",
            where=str(store.path), expected="complete blocks",
            got=", ".join(f"{b} ({b.rows_done}/{store.n_samples} rows)" for b in incomplete),
            fix="finish the extraction (rerun `probestore extract CONFIG`), or leave these out with --layers")
    return ExportPlan(str(run_name), str(ckpt_name), [str(b) for b in chosen])


def _per_sample(store: ActivationStore, plan: ExportPlan) -> dict[str, np.ndarray]:
    """Everything but the blocks, by ``.npz`` key: labels, splits, ids, names, targets."""
    out: dict[str, np.ndarray] = {
        "sample_id": np.asarray(store.sample_ids(), dtype=str),
        "label": store.labels(),
        "split": store.splits(),
        "split_names": np.asarray(store.dataset.split_names, dtype=str),
        "class_names": np.asarray(store.dataset.class_names, dtype=str),
        "train_label": store.train_labels(plan.run),
        "corrupted": store.corrupted_mask(plan.run),
        "layers": np.asarray(plan.layers, dtype=str).reshape(len(plan.layers)),
    }
    for name in store.target_names():
        out[f"targets/{name}"] = store.read_target(name)
    if store.has_sample_types():
        out["sample_type"] = store.sample_types()
    if store.has_sequences():
        out["sequence"] = store.sequence()
        out["position"] = store.position()
    return out


def _meta(store: ActivationStore, plan: ExportPlan) -> dict[str, Any]:
    info = store.checkpoint_info(plan.run, plan.checkpoint)
    run = store.run_info(plan.run)
    blocks = {}
    for name in plan.blocks:
        b = store.block_info(plan.run, plan.checkpoint, name)
        blocks[name] = {"n_features": b.n_features, "dtype": b.dtype, "source_shape": b.source_shape,
                        "reduction": b.reduction}
    return {
        "format": "probestore export 1", "probestore_version": probestore_version(),
        "store": str(Path(store.path).resolve()), "schema_version": ".".join(map(str, store.schema_version)),
        "dataset": store.dataset.name, "fingerprint": store.fingerprint, "n_samples": store.n_samples,
        "run": plan.run, "architecture": run.architecture, "model": run.model,
        "corruption": {"fraction": run.corruption_fraction, "mode": run.corruption_mode},
        "checkpoint": plan.checkpoint, "epoch": info.epoch if info else None, "blocks": blocks,
    }


def _row_chunks(store: ActivationStore, plan: ExportPlan, block: str) -> Iterator[np.ndarray]:
    """A block's rows, one stored chunk's worth at a time (bounded memory)."""
    info = store.block_info(plan.run, plan.checkpoint, block)
    step = max(1, info.chunk_rows)
    for start in range(0, store.n_samples, step):
        yield store.read_block(plan.run, plan.checkpoint, block, slice(start, min(start + step, store.n_samples)),
                               check_chunks=False)


def _write_npy(zf: zipfile.ZipFile, key: str, array: np.ndarray) -> None:
    with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.asarray(array, order="C"), allow_pickle=False)


def _write_block(zf: zipfile.ZipFile, key: str, store: ActivationStore, plan: ExportPlan, block: str) -> None:
    info = store.block_info(plan.run, plan.checkpoint, block)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(info.dtype)), "fortran_order": False,
              "shape": (store.n_samples, info.n_features)}
    with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for rows in _row_chunks(store, plan, block):
            fh.write(np.ascontiguousarray(rows, dtype=info.dtype).tobytes())


def _check_complete_chunks(store: ActivationStore, plan: ExportPlan) -> None:
    """Every chunk of a complete block on disk (else the file would hold fill values)."""
    for block in plan.blocks:
        store.read_block(plan.run, plan.checkpoint, block, slice(0, 1))  # raises for missing chunks


def export_npz(store: ActivationStore, plan: ExportPlan, out: Path) -> Path:
    """Write ``out`` (``.npz``, uncompressed: features barely compress and it loads fastest)."""
    _check_complete_chunks(store, plan)
    with atomic_path(out) as tmp, open(tmp, "wb") as raw, zipfile.ZipFile(raw, "w", allowZip64=True) as zf:
        for key, values in _per_sample(store, plan).items():
            _write_npy(zf, key, values)
        for block in plan.blocks:
            _write_block(zf, "logits" if block == layout.OUTPUTS else f"features/{block}", store, plan, block)
        _write_npy(zf, "meta", np.asarray(json.dumps(_meta(store, plan), default=str)))
    return out


def csv_values(store: ActivationStore, plan: ExportPlan) -> int:
    """Feature values a ``.csv`` export of ``plan`` would write."""
    return store.n_samples * sum(store.block_info(plan.run, plan.checkpoint, b).n_features for b in plan.blocks)


def export_csv(store: ActivationStore, plan: ExportPlan, out: Path, *, max_values: int = CSV_MAX_VALUES) -> Path:
    """Write ``out`` (``.csv``): one row per sample, refused above ``max_values`` feature values.

    Columns: ``sample_id``, ``split`` (name), ``label``, ``class`` (name), ``train_label``,
    ``corrupted`` (0/1), ``target:<name>`` per target, ``sample_type`` / ``sequence`` /
    ``position`` where stored, then ``<block>[j]`` per feature (``outputs[j]``: logit j).
    Floats are written with 9 significant digits, which reads back as the same float32.
    """
    n_values = csv_values(store, plan)
    if n_values > max_values:
        raise ConfigError(
            "the blocks are too large for a .csv export",
            where=f"probestore export -o {out}", expected=f"at most {max_values:,} feature values (--max-csv-values)",
            got=f"{store.n_samples:,} samples x {n_values // store.n_samples:,} features = {n_values:,} values",
            fix=f"write a .npz instead (-o {out.with_suffix('.npz')}; numpy.load reads it), "
                "or select fewer layers with --layers")
    _check_complete_chunks(store, plan)
    cols = _per_sample(store, plan)
    split_names, class_names = cols["split_names"], cols["class_names"]
    front = ["sample_id", "split", "label", "class", "train_label", "corrupted"]
    extra = [k for k in ("sample_type", "sequence", "position") if k in cols]
    targets = [k for k in cols if k.startswith("targets/")]
    widths = {b: store.block_info(plan.run, plan.checkpoint, b).n_features for b in plan.blocks}
    header = front + [f"target:{k.split('/', 1)[1]}" for k in targets] + extra + \
        [f"{b}[{j}]" for b in plan.blocks for j in range(widths[b])]
    # Whole blocks in memory: at most ``max_values`` values, by the check above.
    blocks = [store.read_block(plan.run, plan.checkpoint, b, check_chunks=False) for b in plan.blocks]
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for done in range(0, store.n_samples, _CSV_BATCH):
            rows = min(_CSV_BATCH, store.n_samples - done)
            feats = [_text(b[done:done + rows]) for b in blocks]
            for i in range(rows):
                k = done + i
                row: list[Any] = [cols["sample_id"][k], split_names[cols["split"][k]], int(cols["label"][k]),
                                  class_names[cols["label"][k]], int(cols["train_label"][k]),
                                  int(cols["corrupted"][k])]
                row += [_scalar(cols[t][k]) for t in targets] + [int(cols[e][k]) for e in extra]
                for f in feats:
                    row += f[i]
                writer.writerow(row)
    return out


def _text(values: np.ndarray) -> list[list[str]]:
    return np.char.mod("%.9g", values.astype(np.float64)).tolist()


def _scalar(value: Any) -> Any:
    if isinstance(value, np.bool_ | bool):
        return int(value)
    if isinstance(value, np.floating):
        return "" if np.isnan(value) else format(float(value), ".17g")
    return int(value) if isinstance(value, np.integer) else value


def export(store: ActivationStore, run: str, checkpoint: str, layers: str | list[str] | None, out: Path, *,
           max_csv_values: int = CSV_MAX_VALUES) -> tuple[ExportPlan, Path]:
    """Plan and write an export; the suffix of ``out`` (``.npz`` or ``.csv``) picks the format."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError("the output is a folder", where=f"probestore export -o {out}",
                          expected="a file name ending in .npz or .csv", got="an existing folder",
                          fix=f"-o {out / ('export' + (out.suffix.lower() if out.suffix.lower() in _FORMATS else '.npz'))}")
    if out.suffix.lower() not in _FORMATS:
        raise ConfigError("unknown export format", where=f"probestore export -o {out}",
                          expected="a file name ending in .npz or .csv", got=repr(out.suffix or out.name),
                          fix=f"-o {out.with_suffix('.npz')}")
    if not out.parent.is_dir():
        raise NotFoundError("the output folder does not exist", where=str(out.parent),
                            fix=f"create it first (mkdir -p {out.parent})")
    plan = plan_export(store, run, checkpoint, layers)
    if out.suffix.lower() == ".npz":
        return plan, export_npz(store, plan, out)
    return plan, export_csv(store, plan, out, max_values=max_csv_values)

