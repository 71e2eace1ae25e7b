"""The results table as the report sees it: read once, validated, put in model order.

Every figure and finding asks the same questions of the table ("which checkpoint is
the last of this run?", "which run is the generalizing one?", "in what order do the
layers come?"). They are answered here, once, so that the figures and the findings can
never disagree about, say, which checkpoint counts as the random network.

The table alone is enough. A store, when given, only improves the answers it knows
better than the table: the dataset's name and classes, and the model order of the
layers (the engine writes rows sorted by ``probe_id``, so the order of first
appearance is usually alphabetical and ``relu10`` would come before ``relu2``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analyze.report.flags import flag_of
from analyze.tables import RESULTS, read_table
from probestore.errors import ConfigError, DataError, NotFoundError, did_you_mean

#: Columns without which no row can be placed in any figure.
KEY_COLUMNS = ("run", "checkpoint", "layer", "probe", "target")

#: Numeric columns of the results table schema (:data:`analyze.tables.RESULTS`); a table
#: without some of them (an older or hand-made table) gets them as NaN.
NUMERIC_COLUMNS = (
    "corruption_fraction", "epoch", "n_features", "hyperparameter_value",
    "train_error", "valid_error", "test_error",
    "train_top5_error", "valid_top5_error", "test_top5_error",
    "train_loss", "valid_loss", "test_loss",
    "train_r2", "valid_r2", "test_r2",
    "train_mspe", "valid_mspe", "test_mspe",
    "selectivity_train", "selectivity_valid", "selectivity_test", "clean_error", "corrupted_error",
    "n_train", "n_valid", "n_test", "fit_seconds",
)  # fmt: skip

#: Statuses whose numbers are drawn ("not_converged" ones marked; see analyze.report.flags);
#: "failed" rows carry a reason, not numbers, and "degenerate_split" rows were measured
#: on splits that lack classes: both are left out and listed.
USABLE_STATUS = ("ok", "not_converged")

#: Layer names that stand for the raw input rather than a hidden representation.
INPUT_LAYERS = ("input", "flatten", "pixels")
#: Layer names that are the model's own output, not a hidden layer.
OUTPUT_LAYERS = ("outputs", "logits", "classifier")


def natural_key(name: str) -> list:
    """Sort key that puts ``relu2`` before ``relu10`` (digits compare as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def is_random_run(name: str) -> bool:
    """A run that stands for an untrained network ("random", "random_init", ...).

    Such a run is Graziani et al.'s "random" row, never a point on a corruption axis.
    """
    return str(name).lower().startswith(("random", "untrained"))


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a results table (``.parquet`` or ``.csv``) and normalise its columns.

    Parameters
    ----------
    path
        A table written by ``probestore analyze`` (Parquet, or its CSV export).

    Returns
    -------
    pandas.DataFrame
        All rows, with every numeric column of the schema present (NaN when the file
        lacks it), ``epoch`` as int (-1 when unknown) and ``status`` filled with "ok"
        when the file has no status column.

    Raises
    ------
    NotFoundError
        The file does not exist.
    ConfigError
        The suffix is neither ``.parquet`` nor ``.csv``.
    DataError
        A key column is missing or the table has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(
            "results table not found",
            where=str(path),
            expected="a .parquet or .csv file written by `probestore analyze`",
            fix="run `probestore analyze` first, or check the path",
        )
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise ConfigError(
            "unknown results table format",
            where=str(path),
            expected="a .parquet or .csv file",
            got=repr(suffix or "no suffix"),
            fix="pass the .parquet table (or its .csv export) written by `probestore analyze`",
        )
    return normalise(read_table(path, RESULTS), where=str(path))


def normalise(df: pd.DataFrame, *, where: str = "results table") -> pd.DataFrame:
    """Check the key columns and give every schema column a predictable dtype."""
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            "results table lacks key columns",
            where=where,
            expected=f"columns {list(KEY_COLUMNS)}",
            got=f"columns {list(df.columns)}",
            fix="pass a table written by `probestore analyze` (one row per probe)",
        )
    if len(df) == 0:
        raise DataError("results table has no rows", where=where, fix="re-run `probestore analyze`")
    df = df.copy()
    for col in KEY_COLUMNS:
        df[col] = df[col].astype(str)
    for col in NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    df["epoch"] = df["epoch"].fillna(-1).astype(int)
    df["corruption_fraction"] = df["corruption_fraction"].fillna(0.0)
    if "status" not in df.columns:
        df["status"] = "ok"
    df["status"] = df["status"].fillna("ok").astype(str)
    if "message" not in df.columns:
        df["message"] = ""
    for col in ("message", "grid_edge"):  # text; NaN in a CSV export
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str) if col in df.columns else ""
    return df


@dataclass(frozen=True)
class ResultsView:
    """The usable rows of a results table plus the orderings every figure shares.

    Build with :func:`make_view`. ``rows`` holds only rows with a usable status;
    ``n_failed`` counts the others so the report can say how many probes are missing.
    """

    rows: pd.DataFrame
    runs: list[str]
    corruption: dict[str, float]
    checkpoints: dict[str, list[str]]
    epochs: dict[tuple[str, str], int]
    layers: list[str]
    n_failed: int = 0
    failed_examples: list[str] = field(default_factory=list)
    #: The whole normalised table, left-out rows included (the report's flagged-probes section).
    table: pd.DataFrame | None = None
    dataset_name: str | None = None
    class_names: list[str] | None = None
    layer_order_source: str = "table"

    # ------------------------------------------------------------------ selection
    def select(self, probe: str, target: str | None = None, **where: object) -> pd.DataFrame:
        """Rows of one probe kind (and target), further filtered by column equality."""
        df = self.rows[self.rows["probe"] == probe]
        if target is not None:
            df = df[df["target"] == target]
        for col, value in where.items():
            df = df[df[col] == value]
        return df

    # ------------------------------------------------------------------ roles
    def last_checkpoint(self, run: str) -> str:
        return self.checkpoints[run][-1]

    def x_value(self, run: str, checkpoint: str) -> float:
        """Epoch of a checkpoint, or its index when the run's epochs are unknown."""
        if self.has_epochs(run):
            return float(self.epochs[(run, checkpoint)])
        return float(self.checkpoints[run].index(checkpoint))

    def has_epochs(self, run: str) -> bool:
        return all(self.epochs[(run, c)] >= 0 for c in self.checkpoints[run])

    def trained_runs(self) -> list[str]:
        """Runs that are trained models (not a stand-in for the random network)."""
        return [r for r in self.runs if not is_random_run(r)]

    def generalizing_run(self) -> str | None:
        """The first trained run with no label corruption."""
        for run in self.trained_runs():
            if self.corruption[run] == 0:
                return run
        return None

    def memorizing_run(self) -> str | None:
        """The trained run with the highest corruption fraction (> 0)."""
        runs = [r for r in self.trained_runs() if self.corruption[r] > 0]
        if not runs:
            return None
        return max(runs, key=lambda r: (self.corruption[r], -self.runs.index(r)))

    def corrupted_runs(self) -> list[str]:
        return [r for r in self.trained_runs() if self.corruption[r] > 0]

    def random_reference(self) -> tuple[str, str] | None:
        """``(run, checkpoint)`` standing for the untrained network.

        A run named "random..." (its last checkpoint) wins; otherwise the epoch-0
        checkpoint of the generalizing run, else of any run.
        """
        for run in self.runs:
            if is_random_run(run):
                return run, self.last_checkpoint(run)
        gen = self.generalizing_run()
        candidates = ([gen] if gen else []) + [r for r in self.runs if r != gen]
        for run in candidates:
            for ckpt in self.checkpoints[run]:
                if self.epochs[(run, ckpt)] == 0:
                    return run, ckpt
        return None

    # ------------------------------------------------------------------ layers
    def hidden_layers(self, layers: Iterable[str] | None = None) -> list[str]:
        """Layers in model order that are neither the input nor the model's output."""
        src = self.layers if layers is None else [layer for layer in self.layers if layer in set(layers)]
        return [lay for lay in src if lay not in INPUT_LAYERS and lay not in OUTPUT_LAYERS]

    def input_layer(self) -> str | None:
        for name in INPUT_LAYERS:
            if name in self.layers:
                return name
        return None

    def concepts(self) -> list[str]:
        """RCV targets, in order of first appearance."""
        return list(dict.fromkeys(self.select("rcv")["target"]))

    def check_concepts(self, names: Iterable[str]) -> list[str]:
        """Validate user-chosen concepts against the table's RCV targets."""
        known = self.concepts()
        names = [str(n) for n in names]
        for name in names:
            if known and name not in known:
                raise ConfigError(
                    f"unknown concept {name!r}",
                    where="rcv_concepts",
                    expected=f"one of {known}",
                    got=repr(name),
                    fix=did_you_mean(name, known) or "choose concepts the analysis fitted RCVs for",
                )
        return names

    def check_layer(self, name: str, where: str) -> str:
        """Validate a user-chosen layer against the table's layers."""
        if name not in self.layers:
            raise ConfigError(
                f"unknown layer {name!r}",
                where=where,
                expected=f"one of {self.layers}",
                got=repr(name),
                fix=did_you_mean(name, self.layers) or "choose a layer present in the results table",
            )
        return name


def _checkpoint_order(df: pd.DataFrame) -> tuple[dict[str, list[str]], dict[tuple[str, str], int]]:
    checkpoints: dict[str, list[str]] = {}
    epochs: dict[tuple[str, str], int] = {}
    for run, sub in df.groupby("run", sort=False):
        ep = sub.groupby("checkpoint", sort=False)["epoch"].max()
        for ckpt, e in ep.items():
            epochs[(run, ckpt)] = int(e)
        # Unknown epochs (-1) sort by name after the known ones.
        names = sorted(ep.index, key=lambda c: (epochs[(run, c)] < 0, epochs[(run, c)], natural_key(c)))
        checkpoints[str(run)] = [str(c) for c in names]
    return checkpoints, epochs


def _table_layer_order(df: pd.DataFrame) -> list[str]:
    """Model order guessed from the table: first appearance, unless that is just sorted.

    A writer that kept model order is trusted; a table sorted by ``probe_id`` carries
    no order, and natural sort is the best guess (``relu2`` before ``relu10``).
    """
    names = [n for n in dict.fromkeys(df["layer"]) if n != "outputs"]
    if names == sorted(names):
        names = sorted(names, key=natural_key)
    inputs = [n for n in names if n in INPUT_LAYERS]
    outputs = [n for n in names if n in OUTPUT_LAYERS]
    return inputs + [n for n in names if n not in inputs and n not in outputs] + outputs


def _store_layer_order(store_path: str | Path, runs: list[str], checkpoints: dict[str, list[str]]):
    """Dataset name, class names and the union of per-checkpoint layer orders."""
    from storage_schema.store import open_store

    store = open_store(store_path, "r")
    try:
        order: list[str] = []
        known_runs = set(store.runs())
        for run in runs:
            if run not in known_runs:
                continue
            known_ckpts = {c.name for c in store.checkpoints(run, include_incomplete=True)}
            for ckpt in checkpoints[run]:
                if ckpt not in known_ckpts:
                    continue
                for block in store.layers(run, ckpt, include_incomplete=True):
                    if block.name not in order:
                        order.append(block.name)
        return store.dataset.name, list(store.dataset.class_names), order
    finally:
        store.close()


def make_view(df: pd.DataFrame, store_path: str | Path | None = None) -> ResultsView:
    """Order runs, checkpoints and layers; keep the usable rows.

    Runs are ordered by corruption fraction then name, so the generalizing network is
    always first and gets the first colour. Layers come from the store when given
    (layers it does not know keep the table's order, after the known ones).
    """
    df = normalise(df)
    ok = df[df["status"].isin(USABLE_STATUS)]
    # One row per probe: a table appended to by hand may repeat one; the last one wins.
    ok = ok.drop_duplicates(subset=list(KEY_COLUMNS), keep="last").copy()
    ok["flag"] = flag_of(ok).to_numpy() if len(ok) else ""
    failed = df[~df["status"].isin(USABLE_STATUS)]
    examples = [f"{r.probe_id if 'probe_id' in df.columns else r.run}: {r.message}" for r in failed.head(5).itertuples()]
    if ok.empty:
        ok = df.iloc[0:0].assign(flag="")
    corruption = {str(r): float(v) for r, v in df.groupby("run", sort=False)["corruption_fraction"].max().items()}
    runs = sorted(dict.fromkeys(ok["run"]), key=lambda r: (is_random_run(r), corruption[r], natural_key(r)))
    checkpoints, epochs = _checkpoint_order(ok)
    layers = _table_layer_order(ok)
    dataset_name = class_names = None
    source = "table"
    if store_path is not None:
        dataset_name, class_names, store_order = _store_layer_order(store_path, runs, checkpoints)
        if store_order:
            known = [layer for layer in store_order if layer in layers]
            layers = known + [layer for layer in layers if layer not in known]
            inputs = [layer for layer in layers if layer in INPUT_LAYERS]
            layers = inputs + [layer for layer in layers if layer not in inputs]
            source = "store"
    return ResultsView(
        rows=ok,
        runs=runs,
        corruption=corruption,
        checkpoints=checkpoints,
        epochs=epochs,
        layers=layers,
        n_failed=int(len(failed)),
        table=df,
        failed_examples=examples,
        dataset_name=dataset_name,
        class_names=class_names,
        layer_order_source=source,
    )


def run_summary(view: ResultsView) -> pd.DataFrame:
    """One line per run: corruption, checkpoints (epochs), layers and probe counts."""
    rows = []
    for run in view.runs:
        df = view.rows[view.rows["run"] == run]
        epochs = [view.epochs[(run, c)] for c in view.checkpoints[run]]
        rows.append(
            {
                "run": run,
                "corruption": view.corruption[run],
                "checkpoints": len(epochs),
                "epochs": ", ".join(str(e) if e >= 0 else c for e, c in zip(epochs, view.checkpoints[run])),
                "layers": int(df.loc[df["layer"] != "outputs", "layer"].nunique()),
                "probes": int(len(df)),
            }
        )
    return pd.DataFrame(rows)
