"""One look for every figure: a fixed colour per run, a line style per checkpoint role.

A reader compares figures side by side, so the generalizing run must be the same
colour in the error curves, the R² curves and the selectivity plot. Colours are
assigned from the run order of :class:`~analyze.report.table.ResultsView` (generalizing
first), from the Okabe-Ito palette, which stays distinguishable for colour-blind
readers and in greyscale print.

Figures are drawn on :class:`matplotlib.figure.Figure` objects, never through
``pyplot``: no global backend is switched (a notebook that imports the report keeps
its own) and nothing needs a display. Saving a bare ``Figure`` renders with Agg.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from probestore.atomic import atomic_path

#: Okabe & Ito (2008) colour-blind safe palette, black last (kept for text).
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

#: Line style of a checkpoint role: the trained network solid, the initial one dashed.
CHECKPOINT_STYLE = {"first": "--", "last": "-"}

#: Heatmaps of error: red is bad, blue is good (Alain & Bengio Fig. 5 / 9).
ERROR_CMAP = "RdYlBu_r"

#: Resolution of saved PNGs: readable on screen, small enough for a results folder.
DPI = 110


def run_colors(runs: Sequence[str]) -> dict[str, str]:
    """A hex colour per run, stable for a given run order (cycles after 8 runs)."""
    extra = colormaps["tab20"]
    colours = {}
    for i, run in enumerate(runs):
        colours[run] = OKABE_ITO[i] if i < len(OKABE_ITO) else to_hex(extra((i - len(OKABE_ITO)) % 20))
    return colours


def layer_colors(layers: Sequence[str]) -> dict[str, str]:
    """Shallow to deep as a sequential colour ramp (a reader sees depth as lightness)."""
    cmap = colormaps["viridis"]
    n = max(1, len(layers) - 1)
    return {layer: to_hex(cmap(0.9 * i / n)) for i, layer in enumerate(layers)}


def run_label(run: str, corruption: float) -> str:
    """Legend text: the run's name and how much of its training set was relabelled."""
    return f"{run} (corruption {corruption:g})"


def new_figure(n_panels: int = 1, *, width: float = 5.0, height: float = 3.6, sharey: bool = False):
    """A ``Figure`` with ``n_panels`` axes side by side (at most 4 per row)."""
    cols = min(4, max(1, n_panels))
    rows = -(-max(1, n_panels) // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def save(fig: Figure, path) -> None:
    """Write a PNG (Agg renderer, no pyplot) atomically: a reader never sees half a figure."""
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
