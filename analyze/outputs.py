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
"""

from __future__ import annotations

from collections.abc import Mapping

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
