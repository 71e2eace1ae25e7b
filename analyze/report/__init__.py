"""``probestore report``: figures, an HTML page and a Markdown summary from a results table.

The report reproduces the figures of Alain & Bengio (2016) and Graziani et al. (2019)
from any results table written by ``probestore analyze``, and states for this run
whether each of the papers' headline findings holds, with the numbers behind it.

Modules: :mod:`~analyze.report.table` (reading, model order, run roles),
:mod:`~analyze.report.figures` (one data + one plot function per figure),
:mod:`~analyze.report.extras` (CKA, MDL, embeddings),
:mod:`~analyze.report.sensitivity` (TCAV, RCV sensitivity, ConExp),
:mod:`~analyze.report.findings`, :mod:`~analyze.report.language` (a language model's
word rows: the probing literature's layer and random-baseline claims), :mod:`~analyze.report.html`,
:mod:`~analyze.report.markdown`, :mod:`~analyze.report.style` (colours).
matplotlib is used without pyplot; nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from analyze.report.extras import make_extra_figures
from analyze.report.figures import FigureResult, make_figures
from analyze.report.findings import Finding, compute_findings, run_models
from analyze.report.flags import summary_line
from analyze.report.html import render_html
from analyze.report.language import language_findings, text_unit
from analyze.report.markdown import render_markdown
from analyze.report.sensitivity import make_sensitivity_figures, read_tcav
from analyze.report.table import ResultsView, make_view, read_results
from probestore.atomic import atomic_write

__all__ = ["build_report", "Finding", "FigureResult", "ResultsView", "read_results", "make_view", "compute_findings",
           "read_tcav"]


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    """Accept ``"area,perimeter"`` (the CLI) as well as a list."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(v).strip() for v in items if str(v).strip()]
    return items or None


def build_report(
    results_path: str | Path,
    store_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    rcv_concepts: str | Sequence[str] | None = None,
    rcv_layers: str | Sequence[str] | None = None,
    table_layer: str | None = None,
    similarity_path: str | Path | None = None,
    embedding_method: str = "pca",
    embedding_layer: str | None = None,
    embedding_checkpoints: str | Sequence[str] | None = None,
    tcav_path: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write ``index.html``, ``report.md`` and ``figures/*.png`` for a results table.

    Parameters
    ----------
    results_path
        The results table (``.parquet`` or ``.csv``) written by ``probestore analyze``.
    store_path
        Optional activation store the table was computed from: gives the dataset's
        name and classes and the model order of the layers. The table alone suffices.
    out_dir
        Folder to write into (created). Default: ``<results stem>_report`` beside the
        table.
    rcv_concepts
        Concepts for the RCV figures (list or comma-separated). Default: the 4 with the
        largest R² spread over epochs (Fig. 3) and "area" or the first concept (Fig. 4
        and the corruption finding).
    rcv_layers
        Layers for the RCV-over-epochs figure. Default: the first and last hidden layers.
    table_layer
        Layer of the MSPE table. Default: the first hidden layer (Graziani et al. use an
        early layer, ``mixed0``).
    similarity_path
        A CKA table written by ``probestore similarity``: adds the CKA heatmaps.
    embedding_method
        ``"pca"`` or ``"tsne"`` for the feature embeddings (these need ``store_path``).
    embedding_layer
        Layer to embed. Default: the last hidden layer.
    embedding_checkpoints
        Checkpoints to embed (list or comma-separated). Default: each run's first and last.
    tcav_path
        A table written by ``probestore tcav``: adds the concept-sensitivity section (TCAV
        scores with their t-test per concept, class, layer and checkpoint; TCAV per layer
        at the last checkpoints; RCV sensitivity and ConExp when the table has them).
        Without it the section is one "not drawn" note.
    log
        Receives one line counting the failed, degenerate-split, not-converged and
        grid-edge probes (nothing when there are none).

    Returns
    -------
    pathlib.Path
        Path of ``index.html``.

    Raises
    ------
    NotFoundError, ConfigError, DataError
        Missing table, unknown format, missing key columns, or a chosen concept / layer
        that the table does not have (with a suggestion). Missing *data* for a figure
        is not an error: the figure is skipped with a note.
    """
    results_path = Path(results_path)
    df = read_results(results_path)
    view = make_view(df, store_path)
    concepts = _names(rcv_concepts)
    if concepts:
        concepts = view.check_concepts(concepts)
    layers = _names(rcv_layers)
    if layers:
        layers = [view.check_layer(layer, "rcv_layers") for layer in layers]
    if table_layer is not None:
        table_layer = view.check_layer(str(table_layer), "table_layer")

    if embedding_method not in ("pca", "tsne"):
        from probestore.errors import ConfigError, did_you_mean

        raise ConfigError(f"unknown embedding method {embedding_method!r}", where="embedding_method",
                          expected="pca or tsne", got=repr(embedding_method),
                          fix=did_you_mean(str(embedding_method), ("pca", "tsne")) or "use pca or tsne")
    cka = None
    if similarity_path is not None:
        from analyze.tables import CKA, read_table

        cka = read_table(similarity_path, CKA)
    tcav = read_tcav(tcav_path) if tcav_path is not None else None

    out = Path(out_dir) if out_dir is not None else results_path.with_name(f"{results_path.stem}_report")
    with _report_write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        figures = make_figures(view, out / "figures", rcv_concepts=concepts, rcv_layers=layers, table_layer=table_layer)
        figures += make_extra_figures(view, out / "figures", cka=cka, store_path=store_path,
                                      embedding_method=embedding_method, embedding_layer=embedding_layer,
                                      embedding_checkpoints=_names(embedding_checkpoints))
        figures += make_sensitivity_figures(view, out / "figures", tcav=tcav,
                                            source=str(tcav_path) if tcav_path is not None else "the TCAV table")
        # The store names each run's model: A&B's findings say whether this is their setting.
        models = run_models(store_path) if store_path is not None else None
        findings = compute_findings(view, concept=concepts[0] if concepts else None, models=models)
        if text_unit(store_path) in ("token", "word"):  # a language model's word rows: its own claims first
            findings = language_findings(view) + findings
        source = str(results_path)
        atomic_write(out / "report.md", render_markdown(view, findings, figures, source=source))
        index = out / "index.html"
        atomic_write(index, render_html(view, findings, figures, source=source))
    line = summary_line(view.table if view.table is not None else view.rows)
    if line and log is not None:
        log(line)
    return index


@contextlib.contextmanager
def _report_write_errors(out: Path) -> Iterator[None]:
    """An unwritable report folder (permissions, read-only, a file in the way, full disk) as one line."""
    try:
        yield
    except OSError as exc:
        from analyze.engine import write_fix
        from probestore.errors import ProbestoreError

        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise ProbestoreError(
            f"cannot write the report ({reason})",
            where=str(exc.filename or out),
            got=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
            fix=write_fix(exc, "-o/--out folder"),
        ) from None
