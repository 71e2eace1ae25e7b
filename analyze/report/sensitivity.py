"""The report's concept-sensitivity section: TCAV with significance, RCV sensitivity, ConExp.

Reads the table written by ``probestore tcav`` (one row per method, run, checkpoint,
layer, concept and class; ``method`` is ``tcav``, ``rcv`` or ``conexp``). A TCAV score
alone means little: Kim et al. (2018) show that CAVs trained against *random* sets
give scores far from 0.5 too, so the table always shows the random-vs-random mean, the
t-test's p-value and the effect size next to the score, and the figure draws the random
scores beside the concept's.

Same contract as :mod:`analyze.report.figures`: pure ``*_data`` functions (raising
:class:`~analyze.report.figures.SkipFigure` when their rows are absent) and a ``plot_*``
function for the one figure. Tables become ``FigureResult.text_table`` (header, rows of
strings) that the HTML and Markdown writers render as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analyze.report import style
from analyze.report.figures import FigureResult, NotRequested, SkipFigure, layer_axis
from analyze.report.table import ResultsView, natural_key
from analyze.tables import TCAV, read_table
from probestore.errors import ConfigError, DataError, NotFoundError

__all__ = ["read_tcav", "tcav_table_data", "tcav_layers_data", "rcv_sensitivity_data", "conexp_data",
           "plot_tcav_layers", "make_sensitivity_figures", "SECTION", "MAX_TABLE_ROWS"]

#: Heading of the section in the HTML page and the Markdown summary.
SECTION = "Concept sensitivity (TCAV, RCV sensitivity, ConExp)"
#: Longest table printed in the report; the rest is in the TCAV table itself.
MAX_TABLE_ROWS = 200
#: Panels of the TCAV-per-layer figure (one per concept and class).
MAX_PANELS = 8

#: Columns every ``probestore tcav`` table has, whatever its methods.
KEY_COLUMNS = ("method", "run", "checkpoint", "layer", "concept", "class_name", "score_mean")
#: Columns a table with TCAV rows needs for the significance table.
TCAV_COLUMNS = ("score_std", "random_mean", "random_std", "p_value", "effect_size", "significant")
NUMERIC = ("epoch", "class_index", "n_samples", "n_concept", "repeats", "score_mean", "score_std",
           "random_mean", "random_std", "t", "p_value", "effect_size", "alpha", "cav_heldout_accuracy",
           "cav_train_accuracy", "n_random_excluded", "sign_fraction", "rcv_r2_test", "lift_scale")


def read_tcav(path: str | Path) -> pd.DataFrame:
    """Read a table written by ``probestore tcav`` (``.parquet``, or a ``.csv`` export).

    Parameters
    ----------
    path
        The TCAV table.

    Returns
    -------
    pandas.DataFrame
        Its rows, numeric columns as floats (missing ones NaN), ``epoch`` as int
        (-1 when unknown), ``significant`` as bool.

    Raises
    ------
    NotFoundError
        No file there.
    ConfigError
        Neither ``.parquet`` nor ``.csv``.
    DataError
        Key columns missing, TCAV rows without the test's columns, or no rows.
    """
    path = Path(path)
    fix = "run `probestore tcav STORE -o tcav.parquet` and pass that file"
    if not path.is_file():
        raise NotFoundError("TCAV table not found", where=str(path),
                            expected="a .parquet table written by `probestore tcav`", fix=fix)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise ConfigError("unknown TCAV table format", where=str(path), expected="a .parquet or .csv file",
                          got=repr(suffix or "no suffix"), fix=fix)
    df = read_table(path, TCAV)
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if "method" in df.columns and (df["method"] == "tcav").any():
        missing += [c for c in TCAV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError("TCAV table lacks columns", where=str(path), expected=f"columns {missing}",
                        got=f"columns {list(df.columns)}",
                        fix=f"pass the table written by `probestore tcav` (not a results table); {fix}")
    if len(df) == 0:
        raise DataError("TCAV table has no rows", where=str(path), fix=fix)
    df = df.copy()
    for col in ("method", "run", "checkpoint", "concept", "class_name"):
        df[col] = df[col].astype(str)
    df["layer"] = df["layer"].where(df["layer"].notna(), None)
    for col in NUMERIC:  # floats for the figures and tables (a missing count is NaN, not pd.NA)
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64") if col in df.columns else np.nan
    df["epoch"] = df["epoch"].fillna(-1).astype(int)
    sig = df["significant"] if "significant" in df.columns else pd.Series(False, index=df.index)
    df["significant"] = sig.astype("boolean").fillna(False).astype(bool)
    return df


# ---------------------------------------------------------------------- ordering
def _runs(view: ResultsView, df: pd.DataFrame) -> list[str]:
    present = set(df["run"])
    return [r for r in view.runs if r in present] + sorted(present - set(view.runs), key=natural_key)


def _checkpoints(view: ResultsView, df: pd.DataFrame, run: str) -> list[str]:
    """The run's checkpoints in the TCAV table, in training order (view first, then epoch)."""
    sub = df[df["run"] == run]
    epochs = dict(zip(sub["checkpoint"], sub["epoch"]))
    known = [c for c in view.checkpoints.get(run, []) if c in epochs]
    rest = sorted(set(epochs) - set(known), key=lambda c: (epochs[c], natural_key(c)))
    if not known:
        return rest
    return sorted(known + rest, key=lambda c: (epochs[c], known.index(c) if c in known else len(known)))


def _layers(view: ResultsView, names) -> list[str]:
    names = {n for n in names if n is not None}
    known = [layer for layer in view.layers if layer in names]
    return known + sorted(names - set(known), key=natural_key)


def _ordered(view: ResultsView, df: pd.DataFrame, *, last_only: bool) -> pd.DataFrame:
    """Rows sorted by run, checkpoint, concept, class, layer (model order); optionally last checkpoints."""
    parts = []
    layer_pos = {layer: i for i, layer in enumerate(_layers(view, df["layer"]))}
    for run in _runs(view, df):
        ckpts = _checkpoints(view, df, run)
        if last_only:
            ckpts = ckpts[-1:]
        for ck in ckpts:
            sub = df[(df["run"] == run) & (df["checkpoint"] == ck)].copy()
            sub["_layer"] = [layer_pos.get(x, -1) for x in sub["layer"]]
            sub["_class"] = sub["class_index"].fillna(-1)
            parts.append(sub.sort_values(["concept", "_class", "class_name", "_layer"], kind="stable"))
    out = pd.concat(parts) if parts else df.iloc[0:0]
    return out.drop(columns=["_layer", "_class"], errors="ignore").reset_index(drop=True)


def _rows(df: pd.DataFrame, method: str, what: str) -> pd.DataFrame:
    sub = df[df["method"] == method]
    if sub.empty:
        raise SkipFigure(f"the TCAV table has no {what} rows")
    return sub


def _when(epoch: int, checkpoint: str) -> str:
    return f"{checkpoint} (epoch {epoch})" if epoch >= 0 else checkpoint


def _num(value: float, fmt: str = ".3f") -> str:
    if value is None or not np.isfinite(value):
        return "–" if value is None or np.isnan(value) else ("inf" if value > 0 else "-inf")
    return format(value, fmt)


# ---------------------------------------------------------------------- TCAV
def tcav_table_data(view: ResultsView, tcav: pd.DataFrame | None) -> pd.DataFrame:
    """TCAV rows in report order (run, checkpoint, concept, class, layer), all checkpoints.

    The columns the report prints: mean and std of the concept's TCAV scores over the
    repeats, the random-vs-random mean and std, the two-sided t-test's p-value, the
    effect size (Cohen's d) and significance at the table's alpha.
    """
    if tcav is None:
        raise NotRequested("no TCAV table (run `probestore tcav STORE -o tcav.parquet` on a store extracted "
                           "with [extract] gradients = true, then pass --tcav)")
    rows = _ordered(view, _rows(tcav, "tcav", "tcav"), last_only=False)
    cols = ["run", "checkpoint", "epoch", "layer", "concept", "class_name", "n_samples", "repeats", "score_mean",
            "score_std", "random_mean", "random_std", "p_value", "effect_size", "alpha", "significant"]
    return rows[cols]


def tcav_table_rows(data: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the TCAV significance table."""
    header = ["run", "checkpoint", "layer", "concept", "class", "TCAV mean", "std", "random mean ± std",
              "p-value", "effect size (d)", "significant"]
    rows = []
    for r in data.itertuples(index=False):
        rows.append([r.run, _when(r.epoch, r.checkpoint), str(r.layer), r.concept, r.class_name,
                     _num(r.score_mean), _num(r.score_std), f"{_num(r.random_mean)} ± {_num(r.random_std)}",
                     _num(r.p_value, ".2g"), _num(r.effect_size, ".2f"), "yes" if r.significant else "no"])
    return header, rows


def tcav_layers_data(view: ResultsView, tcav: pd.DataFrame | None) -> pd.DataFrame:
    """TCAV and random scores per layer at each run's last checkpoint in the TCAV table."""
    if tcav is None:
        raise NotRequested("no TCAV table (pass --tcav)")
    data = _ordered(view, _rows(tcav, "tcav", "tcav"), last_only=True)
    data = data[np.isfinite(data["score_mean"])]
    if data.empty:
        raise SkipFigure("no TCAV rows with a score at the last checkpoints (classes without test samples?)")
    data = data.copy()
    data["panel"] = data["concept"] + " → " + data["class_name"]
    return data


def plot_tcav_layers(data: pd.DataFrame, view: ResultsView) -> Figure:
    panels = list(dict.fromkeys(data["panel"]))[:MAX_PANELS]
    runs = _runs(view, data)
    colours = style.run_colors(runs)
    layers = _layers(view, data["layer"])
    pos = {layer: i for i, layer in enumerate(layers)}
    fig, axes = style.new_figure(len(panels), width=7.0 if len(panels) == 1 else 5.2, height=4.2, sharey=True)
    shift = 0.08
    for ax, panel in zip(axes, panels):
        for k, run in enumerate(runs):
            sub = data[(data["panel"] == panel) & (data["run"] == run)]
            if sub.empty:
                continue
            x = np.array([pos[layer] for layer in sub["layer"]], dtype=float) + (k - (len(runs) - 1) / 2) * shift
            when = _when(int(sub["epoch"].iloc[0]), sub["checkpoint"].iloc[0])
            ax.errorbar(x, sub["score_mean"], yerr=sub["score_std"].fillna(0), color=colours[run], marker="o",
                        capsize=3, label=f"{run}, {when}: concept")
            ax.errorbar(x + shift / 2, sub["random_mean"], yerr=sub["random_std"].fillna(0), color=colours[run],
                        ls="--", marker="x", capsize=3, alpha=0.6, label=f"{run}: random")
            sig = sub["significant"].to_numpy(bool)
            if sig.any():
                ax.scatter(x[sig], sub["score_mean"].to_numpy()[sig], s=160, facecolors="none",
                           edgecolors=colours[run], linewidths=1.2)
        layer_axis(ax, layers)
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("TCAV score")
        ax.set_title(panel, fontsize="small")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="best")
    style.figure_title(fig, axes, "TCAV per layer: concept vs random CAVs (mean ± std; ○ significant)")
    return fig


# ---------------------------------------------------------------------- RCV sensitivity, ConExp
def rcv_sensitivity_data(view: ResultsView, tcav: pd.DataFrame | None) -> pd.DataFrame:
    """RCV-sensitivity rows at each run's last checkpoint (mean derivative, positive fraction, R²)."""
    if tcav is None:
        raise NotRequested("no TCAV table (pass --tcav)")
    rows = tcav[tcav["method"] == "rcv"]
    if rows.empty:
        raise NotRequested("the TCAV table has no rcv rows (run `probestore tcav` without --no-rcv on a store "
                           "with continuous concept targets)")
    return _ordered(view, rows, last_only=True)


def rcv_sensitivity_rows(data: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["run", "checkpoint", "layer", "concept", "class", "mean derivative along the RCV",
              "fraction positive", "RCV test R²"]
    rows = []
    for r in data.itertuples(index=False):
        if getattr(r, "status", "ok") == "failed":  # shown, not hidden: the RCV could not be fitted
            rows.append([r.run, _when(r.epoch, r.checkpoint), str(r.layer), r.concept, "—",
                         f"failed: {getattr(r, 'message', '')}", "—", "—"])
            continue
        rows.append([r.run, _when(r.epoch, r.checkpoint), str(r.layer), r.concept, r.class_name,
                     _num(r.score_mean, ".3g"), _num(r.sign_fraction), _num(r.rcv_r2_test)])
    return header, rows


def conexp_data(view: ResultsView, tcav: pd.DataFrame | None) -> pd.DataFrame:
    """ConExp rows at each run's last checkpoint."""
    if tcav is None:
        raise NotRequested("no TCAV table (pass --tcav)")
    rows = tcav[tcav["method"] == "conexp"]
    if rows.empty:
        raise NotRequested("the TCAV table has no conexp rows (needs binary concept targets)")
    return _ordered(view, rows, last_only=True)


def conexp_rows(data: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    score = data["conexp_score"].dropna().iloc[0] if "conexp_score" in data and data["conexp_score"].notna().any() \
        else "logit"
    header = ["run", "checkpoint", "concept", "class", f"E[{score} | concept] − E[{score} | no concept]",
              "samples with the concept", "samples"]
    rows = [[r.run, _when(r.epoch, r.checkpoint), r.concept, r.class_name, _num(r.score_mean, ".3g"),
             _num(r.n_concept, ".0f"), _num(r.n_samples, ".0f")] for r in data.itertuples(index=False)]
    return header, rows


def _cap(header: list[str], rows: list[list[str]], source: str) -> tuple[tuple[list[str], list[list[str]]], str]:
    if len(rows) <= MAX_TABLE_ROWS:
        return (header, rows), ""
    return (header, rows[:MAX_TABLE_ROWS]), f" First {MAX_TABLE_ROWS} of {len(rows)} rows; all are in {source}."


# ---------------------------------------------------------------------- assembly
def make_sensitivity_figures(view: ResultsView, figures_dir: str | Path, *, tcav: pd.DataFrame | None = None,
                             source: str = "the TCAV table") -> list[FigureResult]:
    """The section's tables and figure; without a TCAV table, one "not drawn" note.

    Parameters
    ----------
    view
        The results table in model order (run, checkpoint and layer order).
    figures_dir
        Where the PNG goes (created).
    tcav
        The table from :func:`read_tcav`, or None.
    source
        How to name the TCAV table in captions.

    Returns
    -------
    list of FigureResult
        In report order, each with ``section`` = :data:`SECTION`.
    """
    if tcav is None:
        result = FigureResult(key="tcav_table", title="TCAV scores with significance (Kim et al. 2018)",
                              caption="", requested=False, section=SECTION)
        try:
            tcav_table_data(view, None)
        except SkipFigure as skip:
            result.note = f"not drawn: {skip}"
        return [result]
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    results = []

    def table_entry(key, title, caption, get_data, to_rows):
        result = FigureResult(key=key, title=title, caption=caption, section=SECTION)
        try:
            data = get_data()
        except SkipFigure as skip:
            result.requested = not isinstance(skip, NotRequested)
            result.note = f"{'skipped' if result.requested else 'not drawn'}: {skip}"
            return result, None
        result.text_table, more = _cap(*to_rows(data), source)
        result.caption += more
        return result, data

    entry, data = table_entry(
        "tcav_table", "TCAV scores with significance (Kim et al. 2018)",
        "TCAV score = fraction of the class's test samples whose own-class logit grows along the concept's CAV; "
        "mean and std over the repeats (one CAV per random counterexample set), against random-vs-random CAVs; "
        "two-sided t-test, effect size = Cohen's d.",
        lambda: tcav_table_data(view, tcav), tcav_table_rows)
    if data is not None:
        n, k = len(data), int(data["significant"].sum())
        alphas = sorted(set(data["alpha"].dropna().round(6)))
        entry.caption += f" {k} of {n} tests significant" + (
            f" at a per-test alpha = {alphas[0]:g} (`probestore tcav` divides its --alpha by the number of tests "
            "of the table, Bonferroni, unless run with --no-bonferroni)." if len(alphas) == 1 else ".")
    results.append(entry)

    fig = FigureResult(key="tcav_layers", title="TCAV score per layer, concept vs random, last checkpoint",
                       caption="Solid: the concept's CAVs; dashed: random-vs-random CAVs; error bars: std over the "
                               "repeats; circled: significant. One panel per concept and class"
                               f" (at most {MAX_PANELS}).", section=SECTION)
    try:
        layer_data = tcav_layers_data(view, tcav)
    except SkipFigure as skip:
        fig.note = f"skipped: {skip}"
    else:
        fig.layout_problems = style.save(plot_tcav_layers(layer_data, view), figures_dir / "tcav_layers.png")
        fig.file = f"{figures_dir.name}/tcav_layers.png"
    results.append(fig)

    results.append(table_entry(
        "rcv_sensitivity", "RCV sensitivity per class, last checkpoint (Graziani et al.)",
        "Derivative of the own-class logit along the unit Regression Concept Vector of a continuous concept: "
        "mean over the class's test samples and the fraction where it is positive.",
        lambda: rcv_sensitivity_data(view, tcav), rcv_sensitivity_rows)[0])
    results.append(table_entry(
        "conexp", "ConExp per class, last checkpoint",
        "Mean class score of test samples with a binary concept minus without it, from the stored outputs.",
        lambda: conexp_data(view, tcav), conexp_rows)[0])
    return results
