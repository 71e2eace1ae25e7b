"""The text side of :mod:`extract.pipeline`: dataset, splits, store rows, targets and types of ``kind = "text"``.

Kept apart from the image pipeline so that its rules sit together:

* the rows follow the store's one unit (:func:`extract.text_runner.row_selection`);
* **splits are drawn by sequence, never by token**: :func:`extract.splits.assign_splits`
  runs on the sequences (stratified on the sequence label when there is one) and every
  row takes its sequence's split, so no sentence has tokens in two splits (the store
  refuses such rows too, :func:`storage_schema.store.token_row_problem`);
* the control task's types are word types (the lower-cased word, or the token id), so
  Hewitt & Liang's control task (one random label per type, the same for every layer
  and checkpoint) needs nothing text-specific in ``analyze``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from probestore.errors import ConfigError
from probestore.experiment import ExperimentConfig

__all__ = ["is_text", "load_text_experiment", "tokenizer_folder", "sequence_splits", "add_text_targets",
           "add_text_types", "text_plan"]


def is_text(exp_or_config: Any) -> bool:
    """Whether an experiment (or its config) reads a text dataset."""
    config = getattr(exp_or_config, "config", exp_or_config)
    return getattr(config.dataset, "kind", None) == "text"


def tokenizer_folder(config: ExperimentConfig) -> str | None:
    """``[dataset] tokenizer``, else the folder of an ``hf:<folder>`` model (the model's own tokenizer)."""
    if config.dataset.tokenizer:
        return str(config.dataset.tokenizer)
    name = str(config.model["name"])
    if name.startswith("hf:"):
        from extract.hf_models import resolve_folder

        return str(resolve_folder(name[3:], f"{config.source} [model].name"))
    return None


def sequence_splits(sequence_labels: np.ndarray | None, n_sequences: int, fractions: dict[str, float],
                    seed: int) -> np.ndarray:
    """Split code per *sequence*: stratified on its label when it has one, else drawn at random."""
    from extract.splits import assign_splits

    labels = np.zeros(n_sequences, np.int64) if sequence_labels is None else np.asarray(sequence_labels, np.int64)
    return assign_splits(labels, fractions, seed)


def load_text_experiment(config: ExperimentConfig):
    """:func:`extract.pipeline.load_experiment` for ``kind = "text"``."""
    from extract.pipeline import Experiment, _model_spec, architecture_id
    from extract.text_datasets import load_text_dataset
    from extract.text_runner import row_selection

    where = f"{config.source} [splits].predefined"
    if config.splits["predefined"]:
        raise ConfigError("text datasets have no predefined split", where=where, got="true",
                          fix="set predefined = false (splits are drawn by sequence)")
    if config.concepts.families or config.concepts.sets or config.concepts.folders:
        raise ConfigError("image concept measures and concept sets do not apply to text", where=f"{config.source} "
                          "[concepts]", got="families / sets / folders",
                          fix="remove them; give per-word or per-sequence numbers as [dataset] target_columns")
    ds = load_text_dataset(config.dataset, reduction=row_selection(config.extract),
                           seed=config.extract.reduction_seed, tokenizer=tokenizer_folder(config))
    fractions = {k: config.splits[k] for k in ("train", "valid", "test")}
    per_sequence = sequence_splits(ds.sequence_labels, ds.n_sequences, fractions, config.seed)
    splits = per_sequence[ds.sequence] if ds.unit != "sequence" else per_sequence
    spec = _model_spec(config, ds.class_names, (int(ds.tokenization["max_length"]),))
    return Experiment(config, ds, splits.astype(np.int8), spec, architecture_id(spec.network_dict()))


def store_kwargs(dataset) -> dict[str, Any]:
    """What :func:`storage_schema.store.create_store` takes beyond the image arguments (schema 1.3)."""
    out: dict[str, Any] = {"unit": dataset.unit, "tokenization": dataset.tokenization}
    if dataset.unit != "sequence":
        out.update(sequence=dataset.sequence, position=dataset.position)
    return out


def add_text_targets(store, exp) -> None:
    """The label target and the ``target_columns`` (continuous, one value per row)."""
    ds = exp.dataset
    what = "word" if ds.unit == "word" else "sequence"
    store.add_target("label", ds.labels, "class", family="class",
                     description=f"true class label of the row's {what}: index into the dataset's class_names")
    present = set(store.target_names())
    for name, values in ds.targets.items():
        if name not in present:
            store.add_target(name, values, "continuous", family="user",
                             description=f"[dataset] target column {name!r} (one value per {what})")


def add_text_types(store, exp, *, log=None) -> None:
    """Word types of token and word rows as the store's sample types (none for sequence rows).

    One row per sequence has no recurring type (a sentence rarely repeats), so a
    control task on it would be a per-sample relabelling; the analysis then says the
    types are missing rather than report a control accuracy that means nothing.
    """
    ds = exp.dataset
    if store.has_sample_types() or ds.types is None:
        if ds.types is None and log is not None:
            log("sample types: none for sequence rows (no control task: sequences do not recur)")
        return
    t0 = time.perf_counter()
    kind = "word type: lower-cased word" if ds.unit == "word" else "word type: token id"
    store.set_sample_types(ds.types, method={"kind": kind, "n_types": int(np.unique(ds.types).size),
                                             "source": "tokenizer of " + str(ds.tokenization["tokenizer"]["folder"])})
    if log is not None:
        log(f"sample types: {np.unique(ds.types).size} word types of {len(ds)} rows "
            f"in {time.perf_counter() - t0:.1f} s")


def text_plan(exp, model, device="cpu"):
    """:func:`extract.text_runner.plan_text_extraction` of the experiment's model and dataset."""
    from extract.text_runner import plan_text_extraction

    return plan_text_extraction(model, exp.dataset, exp.config.extract, device=device, head=exp.spec.head)
