"""The language-model report page: the probing literature's three claims, computed from the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyze.report import build_report
from analyze.report.language import FAR, language_findings
from analyze.report.table import make_view
from storage_schema.store import create_store

LAYERS = ("embeddings",) + tuple(f"encoder.layer.{i}" for i in range(6))


def lm_table(pretrained_acc, random_acc, control_acc) -> pd.DataFrame:
    """Classifier and control rows of a pretrained and a random_init run, one checkpoint each."""
    rows = []
    for run, accs in (("pretrained", pretrained_acc), ("random_init", random_acc)):
        for layer, acc, ctl in zip(LAYERS, accs, control_acc):
            base = {"run": run, "corruption_fraction": 0.0, "corruption_mode": "none", "checkpoint": "final",
                    "epoch": 0 if run == "random_init" else 1, "layer": layer, "reduction": "none",
                    "n_features": 384, "n_train": 600, "n_valid": 200, "n_test": 200, "fit_seconds": 0.01,
                    "status": "ok", "message": "", "hyperparameter": "C", "hyperparameter_value": 1.0}
            blank = {c: np.nan for c in ("train_r2", "valid_r2", "test_r2", "train_mspe", "valid_mspe",
                                         "test_mspe", "clean_error", "corrupted_error", "selectivity_train")}
            rows.append({**blank, **base, "probe": "classifier", "target": "true_labels", "train_error": 0.0,
                         "valid_error": 1 - acc, "test_error": 1 - acc, "selectivity_test": acc - ctl})
            rows.append({**blank, **base, "probe": "control", "target": "control_labels", "train_error": 0.0,
                         "valid_error": 1 - ctl, "test_error": 1 - ctl, "selectivity_test": np.nan})
    df = pd.DataFrame(rows)
    df["probe_id"] = df["run"] + "/" + df["checkpoint"] + "/" + df["layer"] + "/" + df["probe"] + "/" + df["target"]
    return df


PEAKED = (0.80, 0.88, 0.93, 0.95, 0.94, 0.92, 0.90)   # best at encoder.layer.2
CONTROL = (0.78, 0.70, 0.66, 0.60, 0.62, 0.65, 0.70)  # most selective at encoder.layer.2
RANDOM = (0.75, 0.72, 0.70, 0.69, 0.68, 0.67, 0.66)


def _verdicts(df):
    return {f.key: f for f in language_findings(make_view(df))}


def test_the_literature_agrees_with_a_peaked_profile():
    found = _verdicts(lm_table(PEAKED, RANDOM, CONTROL))
    acc, sel, rnd = found["lm_accuracy_middle"], found["lm_selectivity_middle"], found["lm_random_below"]
    assert acc.holds is True and acc.numbers["best layer"] == "encoder.layer.2 0.9500"
    assert sel.holds is True and sel.numbers["most selective layer"] == "encoder.layer.2 0.3500"
    assert sel.numbers["selectivity per layer"]["embeddings"] == pytest.approx(0.02)
    assert rnd.holds is True and rnd.numbers["gap of the best layers"] == pytest.approx(0.95 - 0.75)
    assert rnd.numbers["layers where random is not below"] == "none"


def test_verdicts_follow_the_numbers():
    rising = tuple(sorted(PEAKED))  # best at the last layer
    flat_control = (0.30,) * 7      # selectivity then follows accuracy: best at the last layer too
    close = tuple(a - FAR / 2 for a in rising)
    found = _verdicts(lm_table(rising, close, flat_control))
    assert found["lm_accuracy_middle"].holds is False
    assert found["lm_accuracy_middle"].numbers["best layer"] == "encoder.layer.5 0.9500"
    assert found["lm_selectivity_middle"].holds is False
    assert found["lm_random_below"].holds is False  # below everywhere, but only by FAR / 2
    assert found["lm_random_below"].numbers["gap of the best layers"] == pytest.approx(FAR / 2)
    above = list(RANDOM)
    above[0] = 0.85  # random embeddings beat the pretrained ones (word types alone)
    found = _verdicts(lm_table(PEAKED, tuple(above), CONTROL))
    assert found["lm_random_below"].holds is False
    assert found["lm_random_below"].numbers["layers where random is not below"] == ["embeddings"]


def test_not_testable_without_a_random_run_or_control_rows():
    df = lm_table(PEAKED, RANDOM, CONTROL)
    found = _verdicts(df[(df["run"] == "pretrained") & (df["probe"] == "classifier")].drop(columns="selectivity_test"))
    assert found["lm_random_below"].holds is None and "random" in found["lm_random_below"].detail
    assert found["lm_selectivity_middle"].holds is None
    assert found["lm_accuracy_middle"].holds is True


def _store(path, unit):
    n = 6
    kwargs = dict(sequence=[0, 0, 1, 1, 2, 2], position=[1, 2, 1, 3, 1, 2]) if unit == "word" else {}
    create_store(path, dataset_name="wordnet-pos", sample_ids=[f"s{i}" for i in range(n)], labels=[0, 1] * 3,
                 splits=[0, 0, 1, 1, 2, 2], class_names=["noun", "verb"], unit=unit, **kwargs).close()
    return path


@pytest.mark.parametrize("unit, has_page", [("word", True), ("sequence", False)])
def test_the_report_of_a_word_store_states_the_claims(tmp_path, unit, has_page):
    table = tmp_path / "r.csv"
    lm_table(PEAKED, RANDOM, CONTROL).to_csv(table, index=False)
    store = _store(tmp_path / "s.zarr", unit)
    index = build_report(table, store, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    html = index.read_text()
    for claim in ("highest in a middle layer", "far below the pretrained model"):
        assert (claim in md and claim in html) is has_page
