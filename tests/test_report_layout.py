"""Every report figure, drawn from a real analysis of a small store, is fit for a paper.

The results and CKA tables come from the real engine (``run_analysis``,
``run_similarity``) on a small synthetic store; the TCAV table is shaped like
``probestore tcav``'s. Two shapes: three runs over four checkpoints, and the demo's
awkward case of a single corrupted run over three epochs (one panel, where a long title
was clipped and the epoch axis got ticks at 0.5). :func:`style.layout_problems` then
checks what a reader would see: no text outside the canvas, a label on every axis, no
legend over the data, whole-number epoch ticks.
"""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.figure import Figure

from analyze.engine import run_analysis
from analyze.report import make_view, style
from analyze.report.extras import make_extra_figures
from analyze.report.figures import make_figures
from analyze.report.sensitivity import make_sensitivity_figures
from analyze.similarity import run_similarity
from tests.helpers.analysis import quiet, sync_config
from tests.helpers.stores import make_store
from tests.test_report import make_tcav_table

PROBES = ("classifier", "control", "rcv", "rcv_ols", "outputs", "mdl")

SHAPES = {
    "three_runs": {"runs": (("clean", 0.0), ("half", 0.5), ("all", 1.0)), "epochs": (0, 1, 3, 5)},
    "one_corrupted_run": {"runs": (("generalizing", 0.0), ("memorizing", 1.0)), "epochs": (0, 1, 2)},
}

#: Figures that must be drawn from these tables (the optional ones included).
ALL_FIGURES = {"layer_error", "error_heatmap", "rcv_epochs", "rcv_corruption", "clean_corrupted", "mspe_table",
               "selectivity", "mdl_layers", "mdl_epochs", "cka_layers", "cka_checkpoints", "cka_runs",
               "embeddings", "tcav_layers"}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(SHAPES))
def drawn(request, tmp_path_factory):
    shape = SHAPES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    store = make_store(tmp / "s.zarr", n=160, runs=shape["runs"], epochs=shape["epochs"])
    run_analysis(str(store), sync_config(tmp, probes=PROBES), progress=False, log=quiet)
    table = pd.read_parquet(tmp / "results.parquet")
    cka = run_similarity(str(store), tmp / "cka.parquet", config=sync_config(tmp), log=quiet)
    view = make_view(table)
    figures = make_figures(view, tmp / "figures")
    figures += make_extra_figures(view, tmp / "figures", cka=cka, store_path=store)
    figures += make_sensitivity_figures(view, tmp / "figures", tcav=make_tcav_table())
    return request.param, {f.key: f for f in figures}


def test_every_figure_is_drawn(drawn):
    shape, figures = drawn
    expected = ALL_FIGURES - ({"rcv_corruption"} if shape == "one_corrupted_run" else set())
    missing = {k: figures[k].note for k in expected if not figures[k].file}
    assert not missing


def test_no_figure_has_layout_problems(drawn):
    _, figures = drawn
    problems = {k: f.layout_problems for k, f in figures.items() if f.layout_problems}
    assert not problems, "\n".join(f"{k}: {p}" for k, ps in problems.items() for p in ps)


# ---------------------------------------------------------------------- the checker itself
def _panel(width: float = 4.0) -> tuple[Figure, object]:
    fig, (ax,) = style.new_figure(1, width=width)
    ax.plot([0, 1, 2], [0.1, 0.5, 0.9], "-o", label="a line")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error")
    return fig, ax


def test_checker_passes_a_clean_panel():
    fig, ax = _panel()
    style.integer_ticks(ax.xaxis)
    assert style.layout_problems(fig) == []


@pytest.mark.parametrize("flaw, expected", [
    ("clipped_suptitle", "falls outside the canvas"),
    ("no_ylabel", "no y axis label"),
    ("legend_over_points", "the legend covers data"),
    ("half_epochs", "fractional ticks"),
    ("unlabelled_colorbar", "colour bar"),
])  # fmt: skip
def test_checker_finds_each_flaw(flaw, expected):
    fig, ax = _panel(width=3.0)
    style.integer_ticks(ax.xaxis)
    if flaw == "clipped_suptitle":
        fig.suptitle("A title far too long for a three-inch canvas, so it is cut off on both sides")
    elif flaw == "no_ylabel":
        ax.set_ylabel("")
    elif flaw == "legend_over_points":
        ax.plot([0.2], [0.85], "s", label="a point under the legend")
        ax.legend(loc="upper left")
    elif flaw == "half_epochs":
        ax.xaxis.set_major_locator(__import__("matplotlib.ticker").ticker.MultipleLocator(0.5))
    elif flaw == "unlabelled_colorbar":
        im = ax.imshow([[0, 1], [1, 0]])
        fig.colorbar(im, ax=ax)
    problems = style.layout_problems(fig)
    assert len(problems) == 1 and expected in problems[0], problems
