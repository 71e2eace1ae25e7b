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

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

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


def figure_title(fig: Figure, axes: Sequence, text: str) -> None:
    """The figure's title, never clipped and centred over what it describes.

    A one-panel figure gets it as the first line of the panel's own title (a separate
    suptitle is centred on the canvas, not on the panel beside an outside legend, so the
    two lines looked misaligned); otherwise a suptitle. Either is wrapped, narrower
    until the laid-out figure holds it.
    """
    own = axes[0].get_title() if len(axes) == 1 else ""
    width = max(20, int(10 * fig.get_size_inches()[0]))
    for _ in range(6):
        wrapped = textwrap.fill(text, width)
        if len(axes) == 1:
            artist = axes[0].set_title(f"{wrapped}\n{own}" if own else wrapped)
        else:
            artist = fig.suptitle(wrapped)
        if _inside_canvas(fig, artist) or width <= 20:
            return
        width = max(20, int(width * 0.8))


def _inside_canvas(fig: Figure, artist) -> bool:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = artist.get_window_extent(canvas.get_renderer())
    t = _CLIP_TOLERANCE_PX
    return box.x0 >= -t and box.x1 <= fig.bbox.width + t and box.y0 >= -t and box.y1 <= fig.bbox.height + t


def legend_outside(fig: Figure, ax, **kwargs) -> None:
    """The panel's legend below the panels, where it covers neither data nor titles.

    Below rather than beside: the panels keep the figure's width (a side legend squeezed
    a one-panel figure to a sliver). Line handles are drawn long enough (``handlelength``
    4) to tell solid, dashed and dotted lines apart.
    """
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        kwargs.setdefault("fontsize", "small")
        kwargs.setdefault("handlelength", 4)
        width_in = fig.get_size_inches()[0]
        longest = max(len(label) for label in labels)
        # About 14 characters of "small" text per inch; a handle and padding take ~8 more.
        kwargs.setdefault("ncols", max(1, min(len(labels), int(width_in * 14 // (longest + 8)))))
        fig.legend(handles, labels, loc="outside lower center", **kwargs)


def save(fig: Figure, path) -> list[str]:
    """Write a PNG (Agg renderer, no pyplot) atomically: a reader never sees half a figure.

    Returns the figure's :func:`layout_problems` (empty for a figure fit for a paper), so
    that the report can say which figure is flawed instead of shipping it silently.
    """
    problems = layout_problems(fig)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return problems


#: Pixels a text may stick out of the canvas before it counts as clipped (anti-aliasing).
_CLIP_TOLERANCE_PX = 1.0


def layout_problems(fig: Figure) -> list[str]:
    """What a reader would see as a flaw: text cut off by the canvas, an axis without a label.

    Checked on the laid-out figure (the Agg renderer, as :func:`save` draws it):

    * every visible text (titles, suptitle, axis and tick labels, legends, annotations)
      lies inside the canvas;
    * every visible axes with a drawn axis has an x and a y label; a colour bar has a
      label on its long axis;
    * a legend inside a panel covers none of its data (line markers, bars);
    * an axis counting epochs or checkpoints has whole-number ticks only.

    Returns one line per problem, naming the panel by its title.
    """
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    problems = []

    def outside(bbox) -> bool:
        t = _CLIP_TOLERANCE_PX
        return bbox.x0 < -t or bbox.y0 < -t or bbox.x1 > width + t or bbox.y1 > height + t

    for text in fig.texts:
        if text.get_visible() and text.get_text().strip() and outside(text.get_window_extent(renderer)):
            problems.append(f"figure text {text.get_text()!r} falls outside the canvas")
    titles = [t for t in fig.texts if t.get_visible() and t.get_text().strip()]
    titles += [ax.title for ax in fig.axes if ax.get_visible() and ax.get_title().strip()]
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes]
    for legend in legends:
        if legend is None or not legend.get_visible():
            continue
        box = legend.get_window_extent(renderer)
        if outside(box):
            problems.append("a legend falls outside the canvas")
        for title in titles:
            if title.get_window_extent(renderer).overlaps(box):
                problems.append(f"a legend overlaps the title {title.get_text()!r}")
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        name = _panel_name(ax)
        if outside(ax.get_tightbbox(renderer)):
            problems.append(f"panel {name}: text (title, labels or ticks) falls outside the canvas")
        if not ax.axison:
            continue
        colorbar = getattr(ax, "_colorbar", None)
        if colorbar is not None:
            long_axis = ax.yaxis if colorbar.orientation == "vertical" else ax.xaxis
            if not long_axis.get_label_text().strip():
                problems.append(f"colour bar of {name}: no label")
            continue
        for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if axis.get_visible() and not axis.get_label_text().strip() and not _label_shared(ax, which):
                problems.append(f"panel {name}: no {which} axis label")
        if _legend_covers_data(ax, renderer):
            problems.append(f"panel {name}: the legend covers data")
        problems += [f"panel {name}: {p}" for p in _fractional_count_ticks(ax)]
    return problems


#: Axis labels of quantities that only take whole values (ticks at 0.5 would be nonsense).
COUNT_AXES = ("epoch", "checkpoint index", "step")


def integer_ticks(axis) -> None:
    """Whole-number ticks on an axis of epochs or checkpoints (no tick at epoch 0.5)."""
    axis.set_major_locator(MaxNLocator(integer=True))


def _fractional_count_ticks(ax) -> list[str]:
    out = []
    for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        label = axis.get_label_text().strip().lower()
        if not label.startswith(COUNT_AXES):
            continue
        lo, hi = sorted(axis.get_view_interval())
        ticks = [t for t in axis.get_majorticklocs() if lo - 1e-9 <= t <= hi + 1e-9]
        bad = [t for t in ticks if abs(t - round(t)) > 1e-9]
        if bad:
            out.append(f"{which} axis {label!r} has fractional ticks {bad[:3]}")
    return out


def _legend_covers_data(ax, renderer) -> bool:
    """True when an in-panel legend's box holds a plotted point or overlaps a bar."""
    legend = ax.get_legend()
    if legend is None or not legend.get_visible():
        return False
    box = legend.get_window_extent(renderer)
    for line in ax.get_lines():
        if not line.get_visible() or line.get_marker() in (None, "", "None", " "):
            continue
        xy = line.get_transform().transform(line.get_xydata())
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) and ((xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1)
                        & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)).any():
            return True
    for patch in ax.patches:
        if patch.get_visible() and isinstance(patch, Rectangle) and patch.get_height():
            extent = patch.get_window_extent(renderer)
            if extent.width > 0 and extent.height > 0 and extent.overlaps(box):
                return True
    return False


def _panel_name(ax) -> str:
    title = ax.get_title() or ax.get_title("left") or ax.get_title("right")
    return repr(title) if title else f"#{ax.figure.axes.index(ax)}"


def _label_shared(ax, which: str) -> bool:
    """A row of panels sharing y (or a column sharing x) labels the axis once, on the outer panel."""
    group = ax.get_shared_y_axes() if which == "y" else ax.get_shared_x_axes()
    siblings = [a for a in group.get_siblings(ax) if a is not ax and a.get_visible()]
    axis_of = (lambda a: a.yaxis) if which == "y" else (lambda a: a.xaxis)
    return any(axis_of(a).get_label_text().strip() for a in siblings)
