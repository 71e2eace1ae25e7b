"""The report's figures, one pair of functions each: the numbers, then the drawing.

Each figure is split into a pure ``*_data(view, ...) -> DataFrame`` (what is plotted,
testable against a hand computation) and a ``plot_*(data, view) -> Figure`` (how it
looks). A figure whose data is absent raises :class:`SkipFigure` from its data
function; :func:`make_figures` turns that into a note in the report ("skipped: no rcv
rows"), so a table from a classifier-only analysis still gives a report.

Figures follow the papers they reproduce:

1. ``layer_error`` -- probe test error per layer, first and last checkpoint
   (Alain & Bengio 2016, Fig. 3);
2. ``error_heatmap`` -- layers x checkpoints (Alain & Bengio Fig. 5 / 9);
3. ``rcv_epochs`` -- RCV test R² over epochs, generalizing vs memorizing
   (Graziani et al. 2019, Fig. 3);
4. ``rcv_corruption`` -- RCV test R² against label corruption, a line per layer
   (Graziani Fig. 4);
5. ``clean_corrupted`` -- the model's train accuracy on clean vs corrupted samples,
   against true and training labels (Graziani Fig. 5);
6. ``mspe_table`` -- MSPE per concept of random / memorizing / generalizing networks at
   one layer (Graziani Table 1);
7. ``selectivity`` -- true-label minus control-label probe accuracy per layer
   (Hewitt & Liang's control tasks), with the control probe's train/test accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analyze.report import flags, style
from analyze.report.table import ResultsView

#: Line styles that tell layers apart when colour already means the run.
LAYER_STYLES = ("-", "--", ":", "-.")


class SkipFigure(Exception):
    """The table lacks what a figure needs; the message becomes the report's note."""


class NotRequested(SkipFigure):
    """The optional input of a figure was not given (no CKA table, no mdl rows, no store).

    Reported as "not drawn: ..." rather than "skipped: ...": nothing is missing from
    what was asked for, the reader is only told how to get the figure.
    """


def draw_figures(specs, view, figures_dir: Path) -> list[FigureResult]:
    """Draw ``(key, title, caption, get_data, plot)`` specs; a figure without data becomes a note.

    The one loop every report section uses, so that skipping, file naming and the
    "skipped" / "not drawn" wording are the same everywhere.
    """
    results = []
    for key, title, caption, get_data, plot in specs:
        result = FigureResult(key=key, title=title, caption=caption)
        try:
            data = get_data()
        except SkipFigure as skip:
            result.requested = not isinstance(skip, NotRequested)
            result.note = f"{'skipped' if result.requested else 'not drawn'}: {skip}"
            results.append(result)
            continue
        result.layout_problems = style.save(plot(data, view), figures_dir / f"{key}.png")
        result.file = f"{figures_dir.name}/{key}.png"
        result.data = data
        results.append(result)
    return results


@dataclass
class FigureResult:
    """One figure of the report: drawn (``file`` set) or skipped (``note`` set)."""

    key: str
    title: str
    caption: str
    file: str | None = None
    note: str | None = None
    table: pd.DataFrame | None = None
    #: False when an optional input was not given (no CKA table, no store): the note
    #: then says how to get the figure, and is not counted as a skipped figure.
    requested: bool = True
    #: The data the figure was drawn from (for captions and tables built after drawing).
    data: Any = field(default=None, repr=False, compare=False)
    #: A table of text cells ``(header, rows)`` shown as is (the TCAV tables).
    text_table: tuple[list[str], list[list[str]]] | None = None
    #: Heading the entry is listed under (a new ``<h2>`` where it changes).
    section: str = "Figures"
    #: :func:`style.layout_problems` of the drawn figure (clipped text, unlabelled axes).
    layout_problems: list[str] = field(default_factory=list)


def layer_axis(ax, layers: list[str]) -> None:
    """Label an x axis with layer names, input to output (rotated when they would overlap).

    Every per-layer figure uses it, so layers read the same way in the whole report.
    """
    ax.set_xticks(range(len(layers)))
    rotate = 45 if len(layers) > 6 or max((len(s) for s in layers), default=0) > 8 else 0
    ax.set_xticklabels(layers, rotation=rotate, ha="right" if rotate else "center")
    ax.set_xlabel("layer (input → output)")


def epoch_label(view: ResultsView, runs: list[str]) -> str:
    """The x-axis label of a per-checkpoint figure: "epoch" when every run records epochs."""
    return "epoch" if all(view.has_epochs(r) for r in runs) else "checkpoint index"


def epoch_axis(ax, view: ResultsView, runs: list[str]) -> None:
    """Label a per-checkpoint x axis and keep its ticks on whole epochs (no epoch 0.5)."""
    ax.set_xlabel(epoch_label(view, runs))
    style.integer_ticks(ax.xaxis)


# ---------------------------------------------------------------------- 1. layer error
def layer_error_data(view: ResultsView) -> pd.DataFrame:
    """Classifier (true labels) test error per layer at each run's first and last checkpoint."""
    rows = []
    for run in view.runs:
        ckpts = view.checkpoints[run]
        roles = [("first", ckpts[0]), ("last", ckpts[-1])] if len(ckpts) > 1 else [("last", ckpts[-1])]
        for role, ckpt in roles:
            df = view.select("classifier", "true_labels", run=run, checkpoint=ckpt)
            for layer in view.layers:
                hit = df[df["layer"] == layer]
                if hit.empty or not np.isfinite(hit["test_error"].iloc[0]):
                    continue
                rows.append(
                    {
                        "run": run, "role": role, "checkpoint": ckpt, "epoch": view.epochs[(run, ckpt)],
                        "layer": layer, "layer_index": view.layers.index(layer),
                        "test_error": float(hit["test_error"].iloc[0]), "flag": str(hit["flag"].iloc[0]),
                    }
                )  # fmt: skip
    if not rows:
        raise SkipFigure("no classifier rows with target true_labels and a test error")
    return pd.DataFrame(rows)


def plot_layer_error(data: pd.DataFrame, view: ResultsView) -> Figure:
    colours = style.run_colors(view.runs)
    layers = [layer for layer in view.layers if layer in set(data["layer"])]
    pos = {layer: i for i, layer in enumerate(layers)}
    fig, (ax,) = style.new_figure(1, width=7.0, height=4.2)
    for (run, role), sub in data.groupby(["run", "role"], sort=False):
        sub = sub.sort_values("layer_index")
        epoch = sub["epoch"].iloc[0]
        when = f"epoch {epoch}" if epoch >= 0 else sub["checkpoint"].iloc[0]
        ax.plot(
            [pos[x] for x in sub["layer"]], 100 * sub["test_error"], style.CHECKPOINT_STYLE[role],
            marker="o", color=colours[run], label=f"{style.run_label(run, view.corruption[run])}, {role} ({when})",
        )  # fmt: skip
        flags.mark_points(ax, [pos[x] for x in sub["layer"]], 100 * sub["test_error"], sub["flag"])
    layer_axis(ax, layers)
    ax.set_ylabel("probe test error (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title("Linear probe test error per layer (true labels)")
    style.legend_outside(fig, ax)
    return fig


# ---------------------------------------------------------------------- 2. heatmap
def error_heatmap_data(view: ResultsView) -> dict[str, pd.DataFrame]:
    """Per run: a layers x checkpoints matrix of classifier (true labels) test error."""
    out = {}
    for run in view.runs:
        df = view.select("classifier", "true_labels", run=run)
        df = df[np.isfinite(df["test_error"])]
        if df.empty:
            continue
        mat = df.pivot_table(index="layer", columns="checkpoint", values="test_error", aggfunc="first")
        layers = [layer for layer in view.layers if layer in mat.index]
        ckpts = [c for c in view.checkpoints[run] if c in mat.columns]
        marked = df.pivot_table(index="layer", columns="checkpoint", values="flag", aggfunc="first")
        out[run] = mat.loc[layers, ckpts]
        out[run].attrs["flags"] = marked.reindex(index=layers, columns=ckpts).fillna("").astype(str).to_numpy(object)
    if not out:
        raise SkipFigure("no classifier rows with target true_labels")
    return out


def plot_error_heatmap(data: dict[str, pd.DataFrame], view: ResultsView) -> Figure:
    from matplotlib.colors import Normalize

    runs = list(data)
    n_layers = max(len(m.index) for m in data.values())
    fig, axes = style.new_figure(len(runs), width=max(3.2, 0.9 * max(m.shape[1] for m in data.values()) + 2.0),
                                 height=max(3.0, 0.35 * n_layers + 1.5))  # fmt: skip
    vmax = max(float(np.nanmax(m.to_numpy(dtype=float))) for m in data.values()) if data else 1.0
    norm = Normalize(0.0, max(vmax * 100, 1e-9))
    colours = style.run_colors(view.runs)
    image = None
    for ax, run in zip(axes, runs):
        mat = data[run]
        values = 100 * mat.to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=style.ERROR_CMAP, norm=norm, aspect="auto")
        ax.set_yticks(range(len(mat.index)))
        ax.set_yticklabels(mat.index)
        labels = [
            f"{view.epochs[(run, c)]}" if view.has_epochs(run) else c for c in mat.columns
        ]
        ax.set_xticks(range(len(mat.columns)))
        ax.set_xticklabels(labels, rotation=0 if view.has_epochs(run) else 45)
        ax.set_xlabel(epoch_label(view, [run]))
        ax.set_ylabel("layer")
        ax.set_title(style.run_label(run, view.corruption[run]), color=colours[run], fontsize="medium")
        if values.size <= 200:
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize="x-small")
        marks = mat.attrs.get("flags")
        if marks is not None:
            cells = [(j, i) for (i, j), f in np.ndenumerate(marks) if f]
            if cells:
                ax.scatter([j + 0.3 for j, _ in cells], [i - 0.28 for _, i in cells], marker="^", s=28,
                           color="black", zorder=5)
    if image is not None:
        fig.colorbar(image, ax=axes, label="probe test error (%)")
    style.figure_title(fig, axes, "Probe test error: layers × checkpoints (red = worse)")
    return fig


# ---------------------------------------------------------------------- 3. RCV vs epoch
def default_rcv_layers(view: ResultsView) -> list[str]:
    """First and last hidden layers with RCV rows (one if they coincide)."""
    present = set(view.select("rcv")["layer"])
    hidden = [layer for layer in view.hidden_layers() if layer in present]
    if not hidden:
        hidden = [layer for layer in view.layers if layer in present]
    return list(dict.fromkeys([hidden[0], hidden[-1]])) if hidden else []


def default_epoch_concepts(view: ResultsView, layers: list[str], n: int = 4) -> list[str]:
    """Concepts whose test R² varies the most (max - min) at the chosen layers."""
    df = view.select("rcv")
    df = df[df["layer"].isin(layers)]
    spread = df.groupby("target", sort=False)["test_r2"].agg(lambda s: s.max() - s.min()).dropna()
    spread = spread.sort_values(ascending=False, kind="stable")
    return [str(t) for t in spread.index[:n]]


def rcv_epochs_data(view: ResultsView, concepts: list[str] | None = None, layers: list[str] | None = None) -> pd.DataFrame:
    """RCV test R² per (concept, run, layer, checkpoint), with the checkpoint's epoch."""
    df = view.select("rcv")
    if df.empty:
        raise SkipFigure("no rcv rows")
    layers = layers or default_rcv_layers(view)
    concepts = concepts or default_epoch_concepts(view, layers)
    df = df[df["layer"].isin(layers) & df["target"].isin(concepts)]
    df = df[np.isfinite(df["test_r2"])]
    if df.empty:
        raise SkipFigure(f"no rcv rows with a test R² for concepts {concepts} at layers {layers}")
    out = df[["target", "run", "layer", "checkpoint", "test_r2", "flag"]].copy()
    out["x"] = [view.x_value(r, c) for r, c in zip(out["run"], out["checkpoint"])]
    out.attrs.update(concepts=concepts, layers=layers)
    return out.sort_values(["target", "run", "layer", "x"]).reset_index(drop=True)


def plot_rcv_epochs(data: pd.DataFrame, view: ResultsView) -> Figure:
    concepts = [c for c in data.attrs["concepts"] if c in set(data["target"])]
    layers = data.attrs["layers"]
    colours = style.run_colors(view.runs)
    fig, axes = style.new_figure(len(concepts), width=4.6, height=3.6, sharey=True)
    for ax, concept in zip(axes, concepts):
        sub = data[data["target"] == concept]
        for run in view.runs:
            for k, layer in enumerate(layers):
                line = sub[(sub["run"] == run) & (sub["layer"] == layer)]
                if line.empty:
                    continue
                ax.plot(line["x"], line["test_r2"], LAYER_STYLES[k % len(LAYER_STYLES)], marker="o",
                        color=colours[run], label=f"{style.run_label(run, view.corruption[run])}, {layer}")  # fmt: skip
                flags.mark_points(ax, line["x"], line["test_r2"], line["flag"])
        ax.set_title(f"concept: {concept}")
        epoch_axis(ax, view, list(sub["run"].unique()))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RCV test R² (1 = perfect, 0 = mean)")
    style.legend_outside(fig, axes[0], fontsize="x-small")
    style.figure_title(fig, axes, "Concept regression (RCV) over training")
    return fig


# ---------------------------------------------------------------------- 4. RCV vs corruption
def default_corruption_concepts(view: ResultsView) -> list[str]:
    concepts = view.concepts()
    return ["area"] if "area" in concepts else concepts[:1]


def rcv_corruption_data(view: ResultsView, concepts: list[str] | None = None) -> pd.DataFrame:
    """Mean RCV test R² per (concept, layer, corruption fraction) at each run's last checkpoint."""
    if view.select("rcv").empty:
        raise SkipFigure("no rcv rows")
    concepts = (concepts or default_corruption_concepts(view))[:4]
    rows = []
    for run in view.trained_runs():
        df = view.select("rcv", run=run, checkpoint=view.last_checkpoint(run))
        df = df[df["target"].isin(concepts) & np.isfinite(df["test_r2"])]
        for r in df.itertuples():
            rows.append({"target": r.target, "layer": r.layer, "run": run,
                         "corruption_fraction": view.corruption[run], "test_r2": float(r.test_r2),
                         "flag": str(r.flag)})  # fmt: skip
    data = pd.DataFrame(rows, columns=["target", "layer", "run", "corruption_fraction", "test_r2", "flag"])
    if data["corruption_fraction"].nunique() < 2:
        raise SkipFigure("needs rcv rows from trained runs with at least two corruption fractions")
    mean = data.groupby(["target", "layer", "corruption_fraction"], as_index=False).agg(
        test_r2=("test_r2", "mean"), flag=("flag", lambda f: "; ".join(sorted({x for x in f if x}))))
    mean.attrs.update(concepts=[c for c in concepts if c in set(mean["target"])])
    return mean


def plot_rcv_corruption(data: pd.DataFrame, view: ResultsView) -> Figure:
    concepts = data.attrs["concepts"]
    layers = [layer for layer in view.layers if layer in set(data["layer"])]
    colours = style.layer_colors(layers)
    fig, axes = style.new_figure(len(concepts), width=6.0, height=4.0, sharey=True)
    for ax, concept in zip(axes, concepts):
        sub = data[data["target"] == concept]
        for layer in layers:
            line = sub[sub["layer"] == layer].sort_values("corruption_fraction")
            if not line.empty:
                ax.plot(line["corruption_fraction"], line["test_r2"], "-o", color=colours[layer], label=layer)
                flags.mark_points(ax, line["corruption_fraction"], line["test_r2"], line["flag"])
        ax.set_title(f"concept: {concept} (last checkpoint)")
        ax.set_xlabel("label corruption fraction (0 = generalizing)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RCV test R²")
    style.legend_outside(fig, axes[0], title="layer")
    style.figure_title(fig, axes, "RCV R² against label corruption, one line per layer")
    return fig


# ---------------------------------------------------------------------- 5. clean vs corrupted
def clean_corrupted_data(view: ResultsView) -> pd.DataFrame:
    """Train accuracy of the model on clean / corrupted samples per corrupted run and epoch.

    ``series`` is "clean samples", "corrupted vs training labels" (memorization) or
    "corrupted vs true labels" (generalization despite the wrong label).
    """
    out = view.select("model_output")
    if out.empty:
        raise SkipFigure("no model_output rows")
    rows = []
    for run in view.corrupted_runs():
        for ckpt in view.checkpoints[run]:
            df = out[(out["run"] == run) & (out["checkpoint"] == ckpt)]
            train = df[df["target"] == "train_labels"]
            true = df[df["target"] == "true_labels"]
            clean_src = train if not train.empty else true
            values = {
                "clean samples": clean_src["clean_error"].iloc[0] if not clean_src.empty else np.nan,
                "corrupted vs training labels": train["corrupted_error"].iloc[0] if not train.empty else np.nan,
                "corrupted vs true labels": true["corrupted_error"].iloc[0] if not true.empty else np.nan,
            }
            for series, err in values.items():
                if np.isfinite(err):
                    rows.append({"run": run, "checkpoint": ckpt, "x": view.x_value(run, ckpt),
                                 "series": series, "accuracy": 1.0 - float(err)})  # fmt: skip
    data = pd.DataFrame(rows, columns=["run", "checkpoint", "x", "series", "accuracy"])
    if data.empty or not (data["series"] != "clean samples").any():
        raise SkipFigure("no model_output rows of a corrupted run with clean_error / corrupted_error")
    return data


_SERIES_STYLE = {
    "clean samples": ("-", "o"),
    "corrupted vs training labels": ("--", "^"),
    "corrupted vs true labels": (":", "x"),
}


def plot_clean_corrupted(data: pd.DataFrame, view: ResultsView) -> Figure:
    runs = [r for r in view.runs if r in set(data["run"])]
    colours = style.run_colors(view.runs)
    fig, axes = style.new_figure(len(runs), width=4.8, height=3.6, sharey=True)
    for ax, run in zip(axes, runs):
        sub = data[data["run"] == run]
        for series, (ls, marker) in _SERIES_STYLE.items():
            line = sub[sub["series"] == series].sort_values("x")
            if not line.empty:
                ax.plot(line["x"], 100 * line["accuracy"], ls, marker=marker, color=colours[run], label=series)
        ax.set_title(style.run_label(run, view.corruption[run]), color=colours[run], fontsize="medium")
        epoch_axis(ax, view, [run])
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("model accuracy on the train split (%)")
    style.legend_outside(fig, axes[0])
    style.figure_title(fig, axes, "Clean vs corrupted training samples")
    return fig


# ---------------------------------------------------------------------- 6. MSPE table
ROLES = ("random", "memorizing", "generalizing")


#: RCV fits shown in Table 1: ridge (alpha chosen on valid) and the authors' OLS.
RCV_FITS = (("rcv", "ridge"), ("rcv_ols", "OLS"))


def default_table_layer(view: ResultsView) -> str | None:
    """The first hidden layer with RCV rows: Graziani et al. report an early layer."""
    present = set(view.select("rcv")["layer"]) | set(view.select("rcv_ols")["layer"])
    for layer in view.hidden_layers() + view.layers:
        if layer in present:
            return layer
    return None


def mspe_table_data(view: ResultsView, layer: str | None = None) -> pd.DataFrame:
    """Test MSPE per concept (columns) for random / memorizing / generalizing (rows).

    When the table has OLS RCVs (``probe = rcv_ols``, the authors' fit) beside the ridge
    ones, each role gets one row per fit (``"random · OLS"``, ``"random · ridge"``):
    Table 1's MSPE of a random network comes from OLS, which no validated ridge
    reproduces. ``attrs["sources"]`` maps each row to the ``run/checkpoint`` it was read
    from, ``attrs["fit"]`` to its fit.
    """
    fits = [(probe, name) for probe, name in RCV_FITS if not view.select(probe).empty]
    if not fits:
        raise SkipFigure("no rcv rows")
    layer = layer or default_table_layer(view)
    refs: dict[str, tuple[str, str]] = {}
    rnd = view.random_reference()
    if rnd:
        refs["random"] = rnd
    mem, gen = view.memorizing_run(), view.generalizing_run()
    if mem:
        refs["memorizing"] = (mem, view.last_checkpoint(mem))
    if gen:
        refs["generalizing"] = (gen, view.last_checkpoint(gen))
    concepts = view.concepts()
    table, sources, fit_of = {}, {}, {}
    marked: set[tuple[str, str]] = set()
    for role in ROLES:
        if role not in refs:
            continue
        run, ckpt = refs[role]
        for probe, fit in fits:
            label = role if len(fits) == 1 else f"{role} · {fit}"
            sel = view.select(probe, run=run, checkpoint=ckpt, layer=layer).set_index("target")
            df = sel["test_mspe"]
            table[label] = [float(df.get(c, np.nan)) for c in concepts]
            marked.update((label, c) for c in concepts if c in sel.index and sel.loc[c, "flag"])
            sources[label], fit_of[label] = f"{run}/{ckpt}", fit
    data = pd.DataFrame.from_dict(table, orient="index", columns=concepts)
    data = data.dropna(how="all")
    if data.empty:
        raise SkipFigure(f"no rcv rows with a test MSPE at layer {layer!r} for a random, memorizing or generalizing network")
    data.index.name = "network"
    data.attrs.update(layer=layer, sources={k: v for k, v in sources.items() if k in data.index},
                      fit={k: v for k, v in fit_of.items() if k in data.index},
                      flags={m for m in marked if m[0] in data.index})
    return data


def plot_mspe_table(data: pd.DataFrame, view: ResultsView) -> Figure:
    concepts = list(data.columns)
    # Taller by the legend below it (one row per two roles), so the bars keep their height.
    fig, (ax,) = style.new_figure(1, width=max(8.0, min(16.0, 0.25 * len(concepts) * len(data) + 3)),
                                  height=3.8 + 0.2 * (len(data) + 2) / 2)
    width = 0.8 / len(data)
    # Trained networks keep their run's colour; the untrained one is grey.
    run_colours = style.run_colors(view.runs)
    sources = data.attrs["sources"]
    role_colours = {role: run_colours.get(sources[role].split("/")[0], "#999999") for role in data.index}
    role_colours.update({role: "#999999" for role in data.index if role.split(" · ")[0] == "random"})
    fit_of = data.attrs.get("fit", {})
    for k, role in enumerate(data.index):
        values = data.loc[role].to_numpy(dtype=float)
        x = np.arange(len(concepts)) + (k - (len(data) - 1) / 2) * width
        flags.mark_points(ax, x, values, [(role, c) in data.attrs.get("flags", set()) for c in concepts])
        ax.bar(np.arange(len(concepts)) + (k - (len(data) - 1) / 2) * width, values, width,
               color=role_colours.get(role), hatch="//" if fit_of.get(role) == "OLS" else None,
               edgecolor="white", label=f"{role} ({data.attrs['sources'][role]})")  # fmt: skip
    if np.nanmin(data.to_numpy(dtype=float)) > 0:
        ax.set_yscale("log")
    ax.set_xticks(range(len(concepts)))
    ax.set_xticklabels(concepts, rotation=45 if len(concepts) > 4 else 0, ha="right" if len(concepts) > 4 else "center")
    ax.set_xlabel("concept")
    ax.set_ylabel("test MSPE (concept units², log)")
    ax.set_title(f"MSPE at layer {data.attrs['layer']} (lower = better)")
    style.legend_outside(fig, ax, handlelength=2)
    return fig


# ---------------------------------------------------------------------- 7. selectivity
def selectivity_data(view: ResultsView) -> pd.DataFrame:
    """Per run and layer at the last checkpoint: selectivity and the control probe's accuracy.

    Selectivity is the table's ``selectivity_test`` when present, else recomputed as
    control test error minus true-label test error (the same thing: accuracy(true) -
    accuracy(control)).
    """
    rows = []
    for run in view.runs:
        ckpt = view.last_checkpoint(run)
        clf = view.select("classifier", "true_labels", run=run, checkpoint=ckpt).set_index("layer")
        ctl = view.select("control", run=run, checkpoint=ckpt).set_index("layer")
        for layer in view.layers:
            if layer not in clf.index:
                continue
            sel = float(clf.loc[layer, "selectivity_test"])
            ctl_test = float(ctl.loc[layer, "test_error"]) if layer in ctl.index else np.nan
            ctl_train = float(ctl.loc[layer, "train_error"]) if layer in ctl.index else np.nan
            if not np.isfinite(sel):
                sel = ctl_test - float(clf.loc[layer, "test_error"])
            if not (np.isfinite(sel) or np.isfinite(ctl_test)):
                continue
            marks = [str(clf.loc[layer, "flag"])] + ([str(ctl.loc[layer, "flag"])] if layer in ctl.index else [])
            rows.append({"run": run, "checkpoint": ckpt, "layer": layer, "selectivity": sel,
                         "control_train_accuracy": 1 - ctl_train, "control_test_accuracy": 1 - ctl_test,
                         "flag": "; ".join(m for m in marks if m)})  # fmt: skip
    data = pd.DataFrame(rows, columns=["run", "checkpoint", "layer", "selectivity",
                                       "control_train_accuracy", "control_test_accuracy", "flag"])  # fmt: skip
    if data.empty or not np.isfinite(data["selectivity"]).any():
        raise SkipFigure("no control rows (or selectivity values) next to classifier rows")
    return data


def plot_selectivity(data: pd.DataFrame, view: ResultsView) -> Figure:
    colours = style.run_colors(view.runs)
    layers = [layer for layer in view.layers if layer in set(data["layer"])]
    pos = {layer: i for i, layer in enumerate(layers)}
    fig, (ax, ax2) = style.new_figure(2, width=5.6, height=4.0)
    for run in view.runs:
        sub = data[data["run"] == run]
        if sub.empty:
            continue
        x = [pos[layer] for layer in sub["layer"]]
        label = style.run_label(run, view.corruption[run])
        ax.plot(x, 100 * sub["selectivity"], "-o", color=colours[run], label=label)
        flags.mark_points(ax, x, 100 * sub["selectivity"], sub["flag"])
        ax2.plot(x, 100 * sub["control_train_accuracy"], "-o", color=colours[run], label=f"{label}, train")
        ax2.plot(x, 100 * sub["control_test_accuracy"], "--", marker="x", color=colours[run], label=f"{label}, test")
    for a in (ax, ax2):
        layer_axis(a, layers)
        a.grid(alpha=0.3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("selectivity (accuracy points, true − control)")
    ax.set_title("Probe selectivity, last checkpoint")
    ax.legend(fontsize="small")
    ax2.set_ylabel("control probe accuracy (%)")
    ax2.set_title("Control probe: train (memorized) vs test")
    ax2.legend(fontsize="x-small")
    return fig


# ---------------------------------------------------------------------- assembly
def make_figures(
    view: ResultsView,
    figures_dir: str | Path,
    *,
    rcv_concepts: list[str] | None = None,
    rcv_layers: list[str] | None = None,
    table_layer: str | None = None,
) -> list[FigureResult]:
    """Draw every figure into ``figures_dir``; a figure without data becomes a note.

    Returns the figures in report order, with paths relative to the report folder.
    """
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    specs = [
        ("layer_error", "Probe test error per layer, first vs last checkpoint (Alain & Bengio Fig. 3)",
         "Classifier probe on the true labels; dashed = first checkpoint, solid = last.",
         lambda: layer_error_data(view), plot_layer_error),
        ("error_heatmap", "Probe test error, layers × checkpoints (Alain & Bengio Fig. 5/9)",
         "One panel per run, shared colour scale; cells give the test error in %.",
         lambda: error_heatmap_data(view), plot_error_heatmap),
        ("rcv_epochs", "RCV test R² over training, generalizing vs memorizing (Graziani Fig. 3)",
         "Colour = run, line style = layer; concepts with the largest R² spread unless chosen.",
         lambda: rcv_epochs_data(view, rcv_concepts, rcv_layers), plot_rcv_epochs),
        ("rcv_corruption", "RCV test R² against label corruption, one line per layer (Graziani Fig. 4)",
         "Last checkpoint of each trained run; runs sharing a corruption fraction are averaged.",
         lambda: rcv_corruption_data(view, rcv_concepts), plot_rcv_corruption),
        ("clean_corrupted", "Model accuracy on clean vs corrupted training samples (Graziani Fig. 5)",
         "argmax of the model's logits on the train split, per corrupted run.",
         lambda: clean_corrupted_data(view), plot_clean_corrupted),
        ("mspe_table", "RCV test MSPE per concept: random / memorizing / generalizing (Graziani Table 1)",
         "random = untrained network, memorizing = most corrupted run, generalizing = corruption 0; "
         "last checkpoints. Lower is better. OLS rows (hatched; probe rcv_ols) are the authors' "
         "unpenalized fit, ridge rows choose alpha on valid.",
         lambda: mspe_table_data(view, table_layer), plot_mspe_table),
        ("selectivity", "Probe selectivity per layer, last checkpoint (control tasks)",
         "Selectivity = accuracy on true labels − accuracy on control labels (test split). "
         "Right: how much the control probe memorizes (train) vs generalizes (test, chance).",
         lambda: selectivity_data(view), plot_selectivity),
    ]  # fmt: skip
    results = draw_figures(specs, view, figures_dir)
    _note_flags(results, view)
    for result in results:
        if result.key == "mspe_table" and result.file:
            data = result.data
            result.table = data
            result.caption += f" Layer: {data.attrs['layer']}; sources: " + ", ".join(
                f"{k} = {v}" for k, v in data.attrs["sources"].items()
            )
    return results


def _marked_count(data: Any) -> int:
    if isinstance(data, dict):
        return sum(int(sum(1 for f in np.ravel(m.attrs.get("flags", [])) if f)) for m in data.values())
    if isinstance(data, pd.DataFrame):
        if "flag" in data.columns:
            return int((data["flag"] != "").sum())
        return len(data.attrs.get("flags", ()))
    return 0


def _note_flags(results: list[FigureResult], view: ResultsView) -> None:
    """End each drawn figure's caption with what it marks and what it leaves out.

    Only when the table has such probes: a clean table keeps short captions.
    """
    table = view.table if view.table is not None else view.rows
    cats = flags.categories(table)
    excluded = len(cats["failed"]) + len(cats["skipped"]) + len(cats["degenerate_split"])
    if not excluded and not (view.rows["flag"] != "").any():
        return
    for result in results:
        if result.file:
            result.caption += flags.caption_note(_marked_count(result.data), excluded)


def mspe_cells(data: pd.DataFrame) -> list[tuple[str, list[tuple[str, bool]]]]:
    """Rows of the MSPE table as ``(network, [(text, is_best_in_column), ...])``.

    Three significant digits, as Graziani et al.'s Table 1 mixes 0.032 and 2e5;
    the lowest MSPE of each concept is flagged so renderers can bold it (among the rows
    of the same fit, ridge or OLS, when both are shown: as in Table 1, bold compares
    networks, not solvers).
    """
    fit_of = data.attrs.get("fit", {})
    groups = {role: fit_of.get(role, "") for role in data.index}
    out = []
    for role, values in data.iterrows():
        peers = data.loc[[r for r in data.index if groups[r] == groups[role]]]
        best = peers.min(axis=0, skipna=True)
        cells = []
        for concept, v in values.items():
            text = "–" if not np.isfinite(v) else f"{v:.3g}"
            text += flags.TABLE_MARK if (role, concept) in data.attrs.get("flags", set()) and np.isfinite(v) else ""
            cells.append((text, bool(np.isfinite(v) and len(peers) > 1 and v == best[concept])))
        out.append((str(role), cells))
    return out
