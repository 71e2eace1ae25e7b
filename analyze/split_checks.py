"""Splits that cannot support the numbers computed on them: flag the rows, say why.

A classifier probe chooses its L2 strength on the valid split (lowest cross-entropy)
and reports its error on the test split. When the valid split lacks classes that the
train split has, the choice is made on the other classes only: a valid split holding
only class 0 picks the strongest penalty (the probe that predicts the majority class
best) and the reported test error is near chance, with nothing in the row to say so.
When the test split lacks classes, the test error measures only the classes present;
when it is empty, every test metric is NaN.

Decision (documented in docs/failure-behaviour.md): such probes are still fitted (their
train numbers, and the valid/test numbers on the classes present, are what the data
give), but the row's status becomes ``degenerate_split`` and its message names the
split, the label set and the missing classes. The report leaves these rows out of its
figures and findings and lists them. Splits too poor to fit anything at all (an empty
train or valid split, a single class) stay ``failed``, as before.

The checks depend only on the labels and the split of each sample, never on the
features, so the driver runs them once per (run, label set) and applies them to the
rows every block returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Status of a row computed on a split that lacks classes (or an empty test split).
DEGENERATE = "degenerate_split"
#: Probe kinds whose hyperparameter is chosen on valid and which are scored per class.
CLASS_PROBES = ("classifier", "control")
#: Probe kinds scored on the test split without classes (concept regressions).
REGRESSION_PROBES = ("rcv", "rcv_ols")
_FIX = "re-create the store with stratified splits (every class in train, valid and test)"


def _class_list(classes: np.ndarray, class_names: Sequence[str] | None) -> str:
    shown = [str(int(c)) + (f" ({class_names[int(c)]})" if class_names and int(c) < len(class_names) else "")
             for c in classes[:8]]
    more = f" and {classes.size - 8} more" if classes.size > 8 else ""
    return ", ".join(shown) + more


def label_split_problem(labels: np.ndarray, split_index: Mapping[str, np.ndarray], what: str,
                        class_names: Sequence[str] | None = None) -> str:
    """Why the valid / test splits cannot measure a classifier on ``labels`` ("" if they can).

    Parameters
    ----------
    labels : ndarray (n,)
        One label per sample (true, training or control labels).
    split_index : mapping split -> row indices
        ``train``, ``valid``, ``test`` (possibly empty).
    what : str
        The label set's name, for the message (``"true_labels"``).
    class_names : sequence of str, optional
        Shown beside the class numbers.
    """
    train = np.unique(labels[split_index["train"]])
    problems = []
    if split_index["test"].size == 0:
        problems.append("the test split is empty (test metrics are NaN)")
    # Only the true-label probe chooses its C on valid (training labels: an inner split of
    # train; control labels: the true-label probe's C); for the others valid only reports.
    chosen = "C was chosen on the other classes only" if what == "true_labels" else \
        "the valid error covers the other classes only"
    for split, consequence in (("valid", chosen), ("test", "the test error covers the other classes only")):
        rows = split_index[split]
        if rows.size == 0:
            continue  # an empty valid split fails the fit; an empty test split is reported above
        missing = np.setdiff1d(train, np.unique(labels[rows]))
        if missing.size:
            problems.append(f"the {split} split lacks class(es) {_class_list(missing, class_names)} "
                            f"present in train ({consequence})")
    if not problems:
        return ""
    return f"{what}: " + "; ".join(problems)


def empty_test_problem(split_index: Mapping[str, np.ndarray]) -> str:
    """The message for probes that need only a non-empty test split (RCVs)."""
    if split_index["test"].size:
        return ""
    return "the test split is empty (test R² and MSPE are NaN)"


class SplitChecker:
    """Flags the rows of one analysis whose splits are degenerate (cached per label set).

    Parameters
    ----------
    sample : SampleData
        The per-sample arrays of the analysis (labels, control labels, splits).
    class_names : sequence of str, optional
    """

    def __init__(self, sample: Any, class_names: Sequence[str] | None = None) -> None:
        self.sample = sample
        self.class_names = list(class_names) if class_names is not None else None
        self._cache: dict[tuple[str, str], str] = {}

    def _labels(self, run: str, target: str) -> np.ndarray | None:
        if target == "true_labels":
            return self.sample.labels
        if target == "train_labels":
            return self.sample.train_labels.get(run)
        if target == "control_labels":
            return self.sample.control
        return None

    def problem(self, row: Mapping[str, Any]) -> str:
        """Why this row's splits are degenerate, or ``""``."""
        probe, run, target = row["probe"], row["run"], row["target"]
        if probe in REGRESSION_PROBES:
            key = ("", "rcv")
            if key not in self._cache:
                self._cache[key] = empty_test_problem(self.sample.split_index)
            return self._cache[key]
        if probe not in CLASS_PROBES:
            return ""
        if target == "control_labels":  # fitted at the true-label probe's C: its valid split counts too
            found = [self._label_problem(run, "true_labels"), self._label_problem(run, target)]
            return "; ".join(f for f in found if f)
        return self._label_problem(run, target)

    def _label_problem(self, run: str, target: str) -> str:
        key = (run if target == "train_labels" else "", target)
        if key not in self._cache:
            labels = self._labels(run, target)
            self._cache[key] = "" if labels is None else label_split_problem(
                labels, self.sample.split_index, target, self.class_names)
        return self._cache[key]

    def flag(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows, with ``status = degenerate_split`` where the splits are degenerate.

        A failed row stays failed (it has no numbers to qualify); a not-converged one
        becomes degenerate_split and keeps its convergence note in the message.
        """
        out = []
        for row in rows:
            problem = self.problem(row) if row["status"] != "failed" else ""
            if problem:
                note = row.get("message") or ""
                row = {**row, "status": DEGENERATE,
                       "message": problem + (f" (also: {note})" if note else "") + f"; fix: {_FIX}"}
            out.append(row)
        return out
