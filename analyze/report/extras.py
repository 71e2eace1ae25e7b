"""The report's figures beyond the two papers: CKA heatmaps, MDL curves, feature embeddings.

Same contract as :mod:`analyze.report.figures`: a pure ``*_data`` function (raises
:class:`~analyze.report.figures.SkipFigure` when its input is missing, which becomes a
note) and a ``plot_*`` function per figure. The CKA figures read a table written by
``probestore similarity``; the MDL curves read the ``mdl`` rows of the results table;
the embeddings read features from the store (so they need ``--store``).

- ``cka_layers``: layer × layer CKA within the first and last checkpoint of each run
  (Kornblith et al. 2019, Fig. 2 style);
- ``cka_checkpoints``: checkpoint × checkpoint CKA of one layer, per run (how much a
  layer still changes late in training);
- ``cka_runs``: CKA between runs at the same checkpoint and layer, per layer (where a
  memorizing network's representation departs from a generalizing one's);
- ``mdl_layers`` / ``mdl_epochs``: online-code compression (Voita & Titov 2020) per layer
  at the last checkpoint, and over training;
- ``embeddings``: 2-D PCA / t-SNE of a layer's features, coloured by true class,
  corrupted samples marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analyze.report import style
from analyze.report.figures import (
    LAYER_STYLES,
    FigureResult,
    NotRequested,
    SkipFigure,
    draw_figures,
    epoch_axis,
    layer_axis,
)
from analyze.report.table import ResultsView, natural_key


def _ordered_layers(view: ResultsView, names) -> list[str]:
    names = set(names)
    known = [layer for layer in view.layers if layer in names]
    return known + sorted(names - set(known), key=natural_key)


def _matrix(pairs: pd.DataFrame, col_a: str, col_b: str, order: list[str]) -> np.ndarray:
    """Symmetric matrix from pair rows (diagonal 1: a representation is identical to itself)."""
    pos = {name: i for i, name in enumerate(order)}
    M = np.full((len(order), len(order)), np.nan)
    np.fill_diagonal(M, 1.0)
    for a, b, v in zip(pairs[col_a], pairs[col_b], pairs["cka"]):
        if a in pos and b in pos:
            M[pos[a], pos[b]] = M[pos[b], pos[a]] = v
    return M


def _heatmap(ax, M: np.ndarray, labels: list[str], title: str, axis_label: str) -> object:
    im = ax.imshow(M, vmin=0.0, vmax=1.0, cmap="magma", origin="lower")
    ax.set_xticks(range(len(labels)))
    ax.set_yticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center",
                       fontsize="small")
    ax.set_yticklabels(labels, fontsize="small")
    if len(labels) <= 10:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if np.isfinite(M[i, j]):
                    ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize="x-small",
                            color="black" if M[i, j] > 0.6 else "white")
    ax.set_title(title, fontsize="small")
    ax.set_xlabel(axis_label)
    ax.set_ylabel(axis_label)
    return im


# ---------------------------------------------------------------------- CKA
def _run_order(view: ResultsView, runs) -> list[str]:
    runs = set(runs)
    return [r for r in view.runs if r in runs] + sorted(runs - set(view.runs))


def _ckpt_order(view: ResultsView, run: str, table: pd.DataFrame) -> list[str]:
    present = set(table.loc[table["run_a"] == run, "checkpoint_a"]) | set(table.loc[table["run_b"] == run,
                                                                                      "checkpoint_b"])
    known = [c for c in view.checkpoints.get(run, []) if c in present]
    if len(known) == len(present):
        return known
    epochs: dict[str, int] = {}
    for side in ("a", "b"):
        sub = table[table[f"run_{side}"] == run]
        epochs.update(zip(sub[f"checkpoint_{side}"], sub[f"epoch_{side}"]))
    return sorted(present, key=lambda c: (epochs.get(c, -1), natural_key(c)))


def cka_layers_data(view: ResultsView, cka: pd.DataFrame | None) -> list[dict]:
    """Per run, its first and last checkpoint's layer × layer CKA matrix."""
    if cka is None:
        raise NotRequested("no CKA table (run `probestore similarity STORE -o cka.parquet`, then pass --similarity)")
    within = cka[(cka["run_a"] == cka["run_b"]) & (cka["checkpoint_a"] == cka["checkpoint_b"])
                 & (cka["layer_a"] != cka["layer_b"])]
    if within.empty:
        raise SkipFigure("the CKA table has no within-checkpoint (layer × layer) pairs")
    panels = []
    for run in _run_order(view, within["run_a"]):
        sub = within[within["run_a"] == run]
        ckpts = _ckpt_order(view, run, sub)
        for role, ck in ([("first", ckpts[0])] if len(ckpts) > 1 else []) + [("last", ckpts[-1])]:
            pairs = sub[sub["checkpoint_a"] == ck]
            layers = _ordered_layers(view, set(pairs["layer_a"]) | set(pairs["layer_b"]))
            epoch = int(pairs["epoch_a"].iloc[0])
            panels.append({"run": run, "role": role, "checkpoint": ck, "epoch": epoch, "labels": layers,
                           "matrix": _matrix(pairs, "layer_a", "layer_b", layers), "axis": "layer"})
    return panels


def plot_cka_matrices(panels: list[dict], view: ResultsView, what: str) -> Figure:
    fig, axes = style.new_figure(len(panels), width=4.2, height=3.9)
    im = None
    for ax, p in zip(axes, panels):
        when = p.get("title") or (f"{p['role']}: epoch {p['epoch']}" if p.get("epoch", -1) >= 0 else p["checkpoint"])
        im = _heatmap(ax, p["matrix"], p["labels"], f"{p['run']}, {when}", p["axis"])
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="linear CKA")
    style.figure_title(fig, axes, what)
    return fig


def default_cka_layer(view: ResultsView, layers) -> str:
    """The last hidden layer among ``layers`` (else the last one)."""
    layers = _ordered_layers(view, layers)
    hidden = view.hidden_layers(layers)
    return (hidden or layers)[-1]


def cka_checkpoints_data(view: ResultsView, cka: pd.DataFrame | None, layer: str | None = None) -> list[dict]:
    """Per run, the checkpoint × checkpoint CKA matrix of one layer (default: the last hidden)."""
    if cka is None:
        raise NotRequested("no CKA table (pass --similarity)")
    across = cka[(cka["run_a"] == cka["run_b"]) & (cka["layer_a"] == cka["layer_b"])
                 & (cka["checkpoint_a"] != cka["checkpoint_b"])]
    if across.empty:
        raise SkipFigure("the CKA table has no across-checkpoint pairs")
    layer = layer or default_cka_layer(view, across["layer_a"])
    across = across[across["layer_a"] == layer]
    if across.empty:
        raise SkipFigure(f"no across-checkpoint pairs at layer {layer!r}")
    panels = []
    for run in _run_order(view, across["run_a"]):
        sub = across[across["run_a"] == run]
        ckpts = _ckpt_order(view, run, sub)
        epochs = dict(zip(sub["checkpoint_a"], sub["epoch_a"])) | dict(zip(sub["checkpoint_b"], sub["epoch_b"]))
        labels = [str(epochs[c]) if epochs.get(c, -1) >= 0 else c for c in ckpts]
        M = _matrix(sub, "checkpoint_a", "checkpoint_b", ckpts)
        axis = "epoch" if all(epochs.get(c, -1) >= 0 for c in ckpts) else "checkpoint"
        panels.append({"run": run, "title": f"layer {layer}", "labels": labels, "matrix": M, "layer": layer,
                       "axis": axis})
    return panels


def cka_runs_data(view: ResultsView, cka: pd.DataFrame | None) -> pd.DataFrame:
    """CKA between two runs at the same layer, at the last checkpoint name they share."""
    if cka is None:
        raise NotRequested("no CKA table (pass --similarity)")
    across = cka[(cka["run_a"] != cka["run_b"]) & (cka["layer_a"] == cka["layer_b"])
                 & (cka["checkpoint_a"] == cka["checkpoint_b"])].copy()
    if across.empty:
        raise SkipFigure("the CKA table has no across-run pairs")
    rows = []
    for (ra, rb), sub in across.groupby(["run_a", "run_b"], sort=False):
        last = sub.sort_values(["epoch_a", "checkpoint_a"])["checkpoint_a"].iloc[-1]
        sub = sub[sub["checkpoint_a"] == last]
        order = _ordered_layers(view, sub["layer_a"])
        for layer in order:
            rows.append({"pair": f"{ra} vs {rb}", "checkpoint": last, "epoch": int(sub["epoch_a"].iloc[0]),
                         "layer": layer, "layer_index": order.index(layer),
                         "cka": float(sub.loc[sub["layer_a"] == layer, "cka"].iloc[0])})
    return pd.DataFrame(rows)


def plot_cka_runs(data: pd.DataFrame, view: ResultsView) -> Figure:
    fig, (ax,) = style.new_figure(1, width=7.0, height=4.0)
    layers = _ordered_layers(view, data["layer"])
    pos = {layer: i for i, layer in enumerate(layers)}
    for k, (pair, sub) in enumerate(data.groupby("pair", sort=False)):
        when = f"epoch {sub['epoch'].iloc[0]}" if sub["epoch"].iloc[0] >= 0 else sub["checkpoint"].iloc[0]
        ax.plot([pos[x] for x in sub["layer"]], sub["cka"], marker="o", color=style.OKABE_ITO[k % 8],
                label=f"{pair} ({when})")
    layer_axis(ax, layers)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("linear CKA between runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("How similar two runs' representations are, layer by layer")
    return fig


# ---------------------------------------------------------------------- MDL
def mdl_layers_data(view: ResultsView) -> pd.DataFrame:
    """Compression per layer at each run's last checkpoint (true and training labels)."""
    df = view.select("mdl")
    if df.empty or "mdl_compression" not in df.columns:
        raise NotRequested("no mdl rows (analyze with probes including \"mdl\")")
    rows = []
    for run in view.runs:
        sub = df[(df["run"] == run) & (df["checkpoint"] == view.last_checkpoint(run))]
        for r in sub.itertuples():
            if np.isfinite(r.mdl_compression):
                rows.append({"run": run, "target": r.target, "layer": r.layer, "checkpoint": r.checkpoint,
                             "epoch": view.epochs[(run, r.checkpoint)], "compression": float(r.mdl_compression),
                             "layer_index": view.layers.index(r.layer)})
    if not rows:
        raise SkipFigure("no mdl rows with a compression at the last checkpoints")
    return pd.DataFrame(rows).sort_values(["run", "target", "layer_index"]).reset_index(drop=True)


def plot_mdl_layers(data: pd.DataFrame, view: ResultsView) -> Figure:
    colours = style.run_colors(view.runs)
    layers = [layer for layer in view.layers if layer in set(data["layer"])]
    pos = {layer: i for i, layer in enumerate(layers)}
    fig, (ax,) = style.new_figure(1, width=7.0, height=4.2)
    for (run, target), sub in data.groupby(["run", "target"], sort=False):
        ls = "-" if target == "true_labels" else ":"
        ax.plot([pos[x] for x in sub["layer"]], sub["compression"], ls, marker="o", color=colours[run],
                label=f"{style.run_label(run, view.corruption[run])}, {target}")
    layer_axis(ax, layers)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("compression (uniform / online codelength)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("MDL probe compression per layer, last checkpoint (higher = labels cheaper)")
    return fig


def mdl_epochs_data(view: ResultsView, layers: list[str] | None = None) -> pd.DataFrame:
    """Compression of the true labels over checkpoints at the first and last hidden layers."""
    df = view.select("mdl", "true_labels")
    if df.empty or "mdl_compression" not in df.columns:
        raise NotRequested("no mdl rows (analyze with probes including \"mdl\")")
    if layers is None:
        hidden = view.hidden_layers(set(df["layer"])) or _ordered_layers(view, df["layer"])
        layers = list(dict.fromkeys([hidden[0], hidden[-1]]))
    df = df[df["layer"].isin(layers) & np.isfinite(df["mdl_compression"])]
    if df["checkpoint"].nunique() < 2:
        raise SkipFigure("mdl rows at fewer than two checkpoints")
    out = df[["run", "layer", "checkpoint", "mdl_compression"]].copy()
    out["x"] = [view.x_value(r, c) for r, c in zip(out["run"], out["checkpoint"])]
    out.attrs["layers"] = layers
    return out.sort_values(["run", "layer", "x"]).reset_index(drop=True)


def plot_mdl_epochs(data: pd.DataFrame, view: ResultsView) -> Figure:
    colours = style.run_colors(view.runs)
    fig, (ax,) = style.new_figure(1, width=7.0, height=4.2)
    for run in view.runs:
        for k, layer in enumerate(data.attrs["layers"]):
            line = data[(data["run"] == run) & (data["layer"] == layer)]
            if not line.empty:
                ax.plot(line["x"], line["mdl_compression"], LAYER_STYLES[k % len(LAYER_STYLES)], marker="o",
                        color=colours[run], label=f"{style.run_label(run, view.corruption[run])}, {layer}")
    ax.axhline(1.0, color="grey", lw=0.8)
    epoch_axis(ax, view, list(data["run"].unique()))
    ax.set_ylabel("compression (true labels)")
    ax.grid(alpha=0.3)
    style.legend_outside(fig, ax, fontsize="x-small")
    ax.set_title("MDL probe compression over training")
    return fig


# ---------------------------------------------------------------------- embeddings
def embeddings_data(view: ResultsView, store_path, *, method: str = "pca", layer: str | None = None,
                    checkpoints: list[str] | None = None, n_samples: int = 2000, seed: int = 0) -> list:
    """Embeddings of one layer's features, per run, at its first and last checkpoint.

    Samples of every split (a seeded subsample of at most ``n_samples``, the same for
    every run): corrupted labels exist only in the train split, and the point is to see
    where those samples sit. ``checkpoints``: names to use instead (those a run lacks
    are left out).
    """
    from analyze.embeddings import embed_store_block
    from storage_schema.store import open_store

    if store_path is None:
        raise NotRequested("needs the store the table came from (--store)")
    out = []
    with open_store(store_path, "r") as store:
        for run in view.runs:
            if run not in store.runs():
                continue
            done = [c.name for c in store.checkpoints(run)]
            if checkpoints:
                chosen = [c for c in checkpoints if c in done]
            else:
                chosen = list(dict.fromkeys([done[0], done[-1]])) if done else []
            for ck in chosen:
                feats = [b.name for b in store.blocks(run, ck) if b.kind == "features"]
                if not feats:
                    continue
                name = layer if layer is not None else default_cka_layer(view, feats)
                if name not in feats:
                    continue
                out.append(embed_store_block(store, run, ck, name, method=method, split="all",
                                             n_samples=n_samples, seed=seed))
        class_names = list(store.dataset.class_names)
    if not out:
        raise SkipFigure(f"no complete block of layer {layer!r} in the store" if layer else "no feature blocks")
    return [out, class_names]


def plot_embeddings(data: list, view: ResultsView) -> Figure:
    embs, class_names = data
    runs = list(dict.fromkeys(e.run for e in embs))
    per_run = max(sum(e.run == r for e in embs) for r in runs)
    fig = Figure(figsize=(4.0 * per_run, 3.8 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), per_run, squeeze=False)
    cmap = colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    for i, run in enumerate(runs):
        mine = [e for e in embs if e.run == run]
        for j in range(per_run):
            ax = axes[i, j]
            if j >= len(mine):
                ax.set_visible(False)
                continue
            e = mine[j]
            colours = cmap(e.labels % cmap.N)
            clean = ~e.corrupted
            ax.scatter(e.coords[clean, 0], e.coords[clean, 1], c=colours[clean], s=8, marker="o", linewidths=0)
            if e.corrupted.any():
                ax.scatter(e.coords[e.corrupted, 0], e.coords[e.corrupted, 1], c=colours[e.corrupted], s=22,
                           marker="x", linewidths=0.9, label="corrupted label in training")
                ax.legend(fontsize="x-small", loc="best")
            when = f"epoch {e.epoch}" if e.epoch >= 0 else e.checkpoint
            ax.set_title(f"{run}, {when}, {e.layer} ({e.method.upper()}, {e.rows.size} samples)", fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{e.method.upper()} 1")
            ax.set_ylabel(f"{e.method.upper()} 2")
    handles = [Line2D([], [], marker="o", ls="", color=cmap(k % cmap.N), label=name)
               for k, name in enumerate(class_names[:20])]
    fig.legend(handles=handles, loc="outside right upper", fontsize="x-small", title="true class")
    style.figure_title(fig, list(axes.ravel()), "Features in 2-D by true class (× = corrupted training label)")
    return fig


# ---------------------------------------------------------------------- assembly
def make_extra_figures(view: ResultsView, figures_dir: str | Path, *, cka: pd.DataFrame | None = None,
                       store_path=None, embedding_method: str = "pca", embedding_layer: str | None = None,
                       embedding_checkpoints: list[str] | None = None) -> list[FigureResult]:
    """Draw the CKA, MDL and embedding figures; each without data becomes a note."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    specs = [
        ("mdl_layers", "MDL probe compression per layer (Voita & Titov 2020)",
         "Online code on the train split: uniform codelength / online codelength; solid = true labels, "
         "dotted = the run's training labels. 1 = no better than the uniform code.",
         lambda: mdl_layers_data(view), plot_mdl_layers),
        ("mdl_epochs", "MDL probe compression over training",
         "True labels; colour = run, line style = layer (first and last hidden layers).",
         lambda: mdl_epochs_data(view), plot_mdl_epochs),
        ("cka_layers", "Layer × layer linear CKA, first and last checkpoint (Kornblith et al. 2019)",
         "Linear CKA between the layers of one network over the same samples; 1 on the diagonal.",
         lambda: cka_layers_data(view, cka), lambda d, v: plot_cka_matrices(d, v, "Layer similarity (linear CKA)")),
        ("cka_checkpoints", "Checkpoint × checkpoint linear CKA of one layer",
         "How much the layer's representation changes during training (axis: epoch).",
         lambda: cka_checkpoints_data(view, cka),
         lambda d, v: plot_cka_matrices(d, v, "Similarity across training (linear CKA)")),
        ("cka_runs", "Linear CKA between runs, per layer",
         "Same checkpoint and layer in two runs (e.g. generalizing vs memorizing), last shared checkpoint.",
         lambda: cka_runs_data(view, cka), plot_cka_runs),
        ("embeddings", f"Features in 2-D ({embedding_method.upper()}), coloured by true class",
         "Samples of all splits (at most 2,000, seeded, the same in every panel); × marks train samples "
         "whose training label was corrupted.",
         lambda: embeddings_data(view, store_path, method=embedding_method, layer=embedding_layer,
                                 checkpoints=embedding_checkpoints), plot_embeddings),
    ]  # fmt: skip
    return draw_figures(specs, view, figures_dir)
