"""What the model itself predicts, from its stored logits (no probe is fitted).

Graziani et al. (Fig. 5) follow a memorizing network through training by its accuracy
on the *clean* train samples (labels untouched) and on the *corrupted* ones (labels it
has to memorize), measured against the true labels and against the labels it was
trained on. Clean samples are learned first; the corrupted ones, if at all, later and
only against their (random) training labels. Those curves need only the logits every
checkpoint already stored, so they cost one argmax per checkpoint.

Definitions: the prediction is ``argmax(logits)`` (ties to the lower class, like the
probes); ``<split>_error`` is the fraction of that split whose prediction differs from
the labeling; ``<split>_top5_error`` when there are more than 5 classes; the loss is the
cross-entropy of ``softmax(logits)`` (capped per sample like ``analyze.metrics``);
``clean_error`` / ``corrupted_error`` are the train-split errors on the samples the run
left untouched / corrupted (NaN when the run corrupted nothing, or when a subset is
empty).

A model whose head is not the dataset's (a pretrained network probed on another
dataset, SCHEMA.md §4.3) has logits of *its* classes: their argmax is not a dataset
class, so errors against dataset labels would be plausible-looking nonsense.
:func:`output_head` reads the run's recorded model: a head of the dataset's classes
gives the rows above; a ``class_map`` restricts them to the mapped classes
(:func:`mapped_output_metrics`: the prediction is the argmax over the mapped logits,
samples whose label is an unmapped class are left out, and the row's message says so);
otherwise (or when the head was dropped and no logits were stored) the rows are
``skipped``, with a message saying why and how to get them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analyze.metrics import cross_entropy, top_k_error
from probestore.errors import DataError

SPLITS = ("train", "valid", "test")


def split_scores(logits: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    """Top-1 error, top-5 error (NaN for 5 classes or fewer) and cross-entropy of logits on one split.

    Shared by the model-output rows and the classifier probes' test metrics, so the two
    report the same quantities the same way (NaN for an empty split).
    """
    if y.size == 0:
        return {"error": np.nan, "top5_error": np.nan, "loss": np.nan}
    return {
        "error": top_k_error(logits, y, 1),
        "top5_error": top_k_error(logits, y, 5) if n_classes > 5 else np.nan,
        "loss": cross_entropy(logits, y, n_classes),
    }


def model_output_metrics(
    logits: np.ndarray,
    labelings: Mapping[str, np.ndarray],
    split_index: Mapping[str, np.ndarray],
    corrupted: np.ndarray | None,
    n_classes: int,
) -> dict[str, dict[str, float]]:
    """Errors of the model's own predictions against each labeling.

    Parameters
    ----------
    logits : ndarray (n_samples, n_classes)
        The stored outputs of one checkpoint.
    labelings : mapping name -> ndarray (n_samples,)
        E.g. ``{"true_labels": y, "train_labels": y_train}``.
    split_index : mapping split -> int ndarray
        Row indices of ``train``, ``valid`` and (optionally) ``test``.
    corrupted : ndarray of bool (n_samples,) or None
        The run's corrupted samples (None or all False: clean/corrupted errors are NaN).
    n_classes : int

    Returns
    -------
    dict name -> dict
        Keys ``train_error``, ``valid_error``, ``test_error``, the ``*_top5_error`` and
        ``*_loss`` columns, ``clean_error``, ``corrupted_error``, ``n_train``,
        ``n_valid``, ``n_test`` (results-table column names).

    Raises
    ------
    DataError
        Logits of the wrong shape or with NaN/Inf.
    """
    logits = np.asarray(logits)
    n = logits.shape[0]
    if logits.ndim != 2 or logits.shape[1] != n_classes:
        raise DataError("logits have the wrong shape", where="outputs block",
                        expected=f"(n_samples, {n_classes})", got=f"{logits.shape}")
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).any(axis=1).sum())
        raise DataError("logits contain NaN or Inf", where="outputs block", got=f"{bad} rows",
                        fix="the checkpoint diverged, or the logits overflowed float16: set [extract] "
                            "dtype = \"float32\" and re-create the store with `probestore extract CONFIG "
                            "--overwrite`")
    has_corrupted = corrupted is not None and bool(np.any(corrupted))
    out: dict[str, dict[str, float]] = {}
    for name, y in labelings.items():
        y = np.asarray(y)
        if y.shape != (n,):
            raise DataError("labels do not match the logits", where=f"labeling {name!r}",
                            expected=f"shape ({n},)", got=f"shape {y.shape}")
        row: dict[str, float] = {}
        for split in SPLITS:
            idx = split_index.get(split)
            if idx is None:
                idx = np.zeros(0, dtype=np.intp)
            s = split_scores(logits[idx], y[idx], n_classes)
            row[f"{split}_error"] = s["error"]
            row[f"{split}_top5_error"] = s["top5_error"]
            row[f"{split}_loss"] = s["loss"]
            row[f"n_{split}"] = int(idx.size)
        row["clean_error"] = np.nan
        row["corrupted_error"] = np.nan
        if has_corrupted:
            tr = split_index["train"]
            pred = np.argmax(logits[tr], axis=1)
            bad = np.asarray(corrupted, dtype=bool)[tr]
            wrong = pred != y[tr]
            if (~bad).any():
                row["clean_error"] = float(wrong[~bad].mean())
            if bad.any():
                row["corrupted_error"] = float(wrong[bad].mean())
        out[name] = row
    return out


@dataclass(frozen=True)
class OutputHead:
    """How a run's stored logits relate to the dataset's classes.

    Attributes
    ----------
    kind : {"dataset", "mapped", "skipped"}
        ``dataset``: one logit per dataset class, in order (every row as always);
        ``mapped``: ``columns`` select the logits of the mapped dataset classes;
        ``skipped``: no model-output analysis (``message`` says why and how to get one).
    columns : ndarray of int, shape (n_dataset_classes,)
        ``mapped`` only: the model's logit column of each dataset class, -1 when unmapped.
    message : str
        The row message of ``mapped`` and ``skipped`` rows.
    """

    kind: str
    columns: np.ndarray | None = None
    message: str = ""


def output_head(model: Mapping[str, Any], dataset_classes: Sequence[str]) -> OutputHead:
    """Read the run's recorded ``model`` (SCHEMA.md §4.3) against the dataset's classes.

    A head matches the dataset when it is kept, has ``len(dataset_classes)`` outputs and
    its ``class_names`` (when recorded) are the dataset's in order; a run recorded
    without ``num_classes`` is taken to match (stores from before the key).

    Raises
    ------
    DataError
        A ``class_map`` that names a class the dataset lacks or an index outside the head
        (a damaged or hand-edited store; ``probestore validate`` lists it).
    """
    n = len(dataset_classes)
    if model.get("head") == "drop":
        return OutputHead("skipped", message=(
            'skipped: the model\'s head was dropped at extraction ([model] head = "drop"), so no logits '
            'are stored; to analyse its outputs, extract with head = "keep" (and num_classes = the width '
            "of its head, class_map for the dataset's classes)"))
    width = model.get("num_classes", n)
    cmap = model.get("class_map")
    if isinstance(cmap, Mapping) and cmap:
        columns = np.full(n, -1, dtype=np.int64)
        for name, index in cmap.items():
            if name not in dataset_classes or not isinstance(index, int) or not 0 <= index < int(width):
                raise DataError("the run's model.class_map does not fit the store", where="model.class_map",
                                expected=f"dataset classes mapped to model indices in [0, {width})",
                                got=f"{name!r} -> {index!r}", fix="run `probestore validate STORE`; re-extract")
            columns[list(dataset_classes).index(name)] = int(index)
        k = int((columns >= 0).sum())
        return OutputHead("mapped", columns, (
            f"restricted by model.class_map: prediction = argmax over the {k} mapped of the model's {width} "
            f"logits; samples of the {n - k} unmapped dataset class(es) left out"
            if k < n else f"restricted by model.class_map: prediction = argmax over the {k} mapped of the "
                          f"model's {width} logits"))
    names = model.get("class_names")
    if width == n and (names is None or list(names) == list(dataset_classes)):
        return OutputHead("dataset")
    why = (f"the model's head has {width} classes, the dataset {n}" if width != n
           else "the model's class names are not the dataset's")
    return OutputHead("skipped", message=(
        f"skipped: {why}, so the argmax of its logits is not a dataset class; give [model] class_map "
        "(dataset class = model class index or name) and re-extract to get the model's errors on the mapped "
        "classes"))


def mapped_output_metrics(
    logits: np.ndarray,
    labelings: Mapping[str, np.ndarray],
    split_index: Mapping[str, np.ndarray],
    corrupted: np.ndarray | None,
    columns: np.ndarray,
) -> dict[str, dict[str, float]]:
    """:func:`model_output_metrics` on the mapped classes only.

    The logits are cut to the mapped columns (in dataset class order), each labeling is
    recoded to positions among the mapped classes, and every sample whose label (in that
    labeling) is unmapped is left out of every split and of the clean / corrupted
    subsets, so ``n_train`` / ``n_valid`` / ``n_test`` count the samples scored.
    """
    columns = np.asarray(columns, dtype=np.int64)
    mapped = np.flatnonzero(columns >= 0)
    position = np.full(columns.size, -1, dtype=np.int64)
    position[mapped] = np.arange(mapped.size)
    sub = np.asarray(logits)[:, columns[mapped]]
    out: dict[str, dict[str, float]] = {}
    for name, y in labelings.items():
        y = np.asarray(y)
        if y.shape != (sub.shape[0],):
            raise DataError("labels do not match the logits", where=f"labeling {name!r}",
                            expected=f"shape ({sub.shape[0]},)", got=f"shape {y.shape}")
        keep = position[y] >= 0
        index = {s: np.asarray(idx)[keep[np.asarray(idx)]] for s, idx in split_index.items()}
        y_mapped = np.where(keep, position[y], 0)
        out.update(model_output_metrics(sub, {name: y_mapped}, index, corrupted, int(mapped.size)))
    return out
