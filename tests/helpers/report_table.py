"""A synthetic results table shaped like the engine's, with numbers that follow closed forms.

3 runs (corruption 0, 0.5, 1.0), checkpoints at epochs 0, 1, 3, 5, layers input +
relu1..relu4, classifier, control, RCV (area, eccentricity) and model_output rows. Each
of the report's findings can be made to hold or not (``make_table``'s flags) and its
numbers checked by hand with the formulas below.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

RUNS = {"gen": 0.0, "mem50": 0.5, "mem100": 1.0}
EPOCHS = (0, 1, 3, 5)
LAYERS = ("input", "relu1", "relu2", "relu3", "relu4")


def progress(epoch: int) -> float:
    return 1.0 - math.exp(-epoch / 2)


def clf_error(c: float, d: int, epoch: int, *, depth_falls=True, random_beats_pixels=True, training_helps=True) -> float:
    """Test error of the true-label probe at depth d (0 = input)."""
    if d == 0:
        return 0.12
    rand = 0.08 - 0.005 * d if random_beats_pixels else 0.15 + 0.005 * d
    trained = (0.05 - 0.008 * d if depth_falls else 0.02 + 0.008 * d) + c * (0.01 if training_helps else 0.08) * d
    return rand + progress(epoch) * (trained - rand)


def area_r2(c: float, d: int, epoch: int, *, rcv_deep_falls=True) -> float:
    penalty = c * 0.1 * (d if rcv_deep_falls else 5 - d) * progress(epoch)
    return 0.9 - 0.02 * d - (penalty if d else 0.0)


def clean_acc(epoch: int, fast: bool) -> float:
    rate = 1.5 if fast else 0.25
    top = 0.89 if fast else 0.8
    return 0.1 + top * (1 - math.exp(-epoch * rate))


def make_table(
    *,
    depth_falls=True,
    random_beats_pixels=True,
    training_helps=True,
    rcv_deep_falls=True,
    clean_first=True,
    deeper_more_selective=True,
) -> pd.DataFrame:
    rows = []

    def add(**kw):
        row = {c: np.nan for c in ("train_error", "valid_error", "test_error", "train_r2", "valid_r2", "test_r2",
                                    "train_mspe", "valid_mspe", "test_mspe", "selectivity_train", "selectivity_test",
                                    "clean_error", "corrupted_error")}  # fmt: skip
        row.update(corruption_mode="uniform", reduction="none", hyperparameter="", hyperparameter_value=np.nan,
                   n_features=64, n_train=600, n_valid=200, n_test=200, fit_seconds=0.01, status="ok", message="")  # fmt: skip
        row.update(kw)
        row["probe_id"] = f"{row['run']}/{row['checkpoint']}/{row['layer']}/{row['probe']}/{row['target']}"
        rows.append(row)

    for run, c in RUNS.items():
        for e in EPOCHS:
            ckpt = f"epoch{e:03d}"
            base = {"run": run, "corruption_fraction": c, "checkpoint": ckpt, "epoch": e}
            for d, layer in enumerate(LAYERS):
                err = clf_error(c, d, e, depth_falls=depth_falls, random_beats_pixels=random_beats_pixels,
                                training_helps=training_helps)  # fmt: skip
                ctl_test = 0.9 - (0.0 if deeper_more_selective else 0.05 * d)
                ctl_train = 0.5 - 0.05 * d
                add(**base, layer=layer, probe="classifier", target="true_labels", hyperparameter="C",
                    hyperparameter_value=1.0, train_error=err / 2, valid_error=err, test_error=err,
                    selectivity_test=ctl_test - err, selectivity_train=ctl_train - err / 2,
                    clean_error=err / 2 if c < 1 else np.nan, corrupted_error=0.5 if c > 0 else np.nan)  # fmt: skip
                if c > 0:
                    add(**base, layer=layer, probe="classifier", target="train_labels", hyperparameter="C",
                        hyperparameter_value=1.0, train_error=0.3, valid_error=0.6, test_error=0.6)  # fmt: skip
                add(**base, layer=layer, probe="control", target="control_labels", hyperparameter="C",
                    hyperparameter_value=1.0, train_error=ctl_train, valid_error=ctl_test, test_error=ctl_test)  # fmt: skip
                r2 = area_r2(c, d, e, rcv_deep_falls=rcv_deep_falls)
                add(**base, layer=layer, probe="rcv", target="area", hyperparameter="alpha", hyperparameter_value=10.0,
                    train_r2=r2, valid_r2=r2, test_r2=r2, test_mspe=2.0 * (1 - r2))  # fmt: skip
                r2e = 0.5 + 0.02 * d * progress(e)
                add(**base, layer=layer, probe="rcv", target="eccentricity", hyperparameter="alpha",
                    hyperparameter_value=10.0, train_r2=r2e, valid_r2=r2e, test_r2=r2e, test_mspe=0.1 * (1 - r2e))  # fmt: skip
            fast = clean_acc(e, clean_first)
            slow = clean_acc(e, not clean_first)
            clean = 1 - fast if c < 1 else np.nan
            corrupted = 1 - slow if c > 0 else np.nan
            add(**base, layer="outputs", probe="model_output", target="train_labels", train_error=0.5,
                test_error=0.5, clean_error=clean, corrupted_error=corrupted)  # fmt: skip
            add(**base, layer="outputs", probe="model_output", target="true_labels", train_error=0.5, test_error=0.5,
                clean_error=clean, corrupted_error=(1 - (0.1 + 0.3 * progress(e))) if c > 0 else np.nan)  # fmt: skip
    df = pd.DataFrame(rows)
    # The engine sorts by probe_id: the table carries no layer order of its own.
    return df.sort_values("probe_id", kind="stable").reset_index(drop=True)

