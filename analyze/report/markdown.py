"""The report as Markdown: the same findings and tables, readable in a terminal or a PR.

Kept next to the HTML page so that a reader without a browser (a CI log, a code
review) still sees every verdict with its numbers; figures are linked by the same
relative paths.
"""

from __future__ import annotations

from analyze.report import flags
from analyze.report.figures import FigureResult, mspe_cells
from analyze.report.findings import Finding
from analyze.report.table import ResultsView, run_summary


def _cell(text: object) -> str:
    """Make text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _flagged(view: ResultsView) -> list[str]:
    """Counts per kind of flagged probe, how the report treats each, and examples."""
    table = view.table if view.table is not None else view.rows
    counts = flags.count_lines(table)
    if not counts:
        return ["Every probe converged, chose a C / alpha inside its grid and was measured on proper splits.", ""]
    out = _table(["probes", "count", "in this report"], [[label, str(n), how] for label, n, how in counts])
    rows, total = flags.example_rows(table)
    out += _table(["probe", "status", "grid edge", "message"], rows)
    if total > len(rows):
        out += [f"{total - len(rows)} more: filter the results table on `status` and `grid_edge`.", ""]
    return out


def render_markdown(view: ResultsView, findings: list[Finding], figures: list[FigureResult], *, source: str) -> str:
    """The Markdown summary as a string.

    Parameters
    ----------
    view
        The results table in model order.
    findings, figures
        As for :func:`~analyze.report.html.render_html`.
    source
        Where the results table was read from.
    """
    title = "probestore report" + (f": {view.dataset_name}" if view.dataset_name else "")
    out = [f"# {title}", "", f"Results table: `{source}`; layer order from the {view.layer_order_source}.", ""]
    summary = run_summary(view)
    out += _table(list(summary.columns), [[str(v) for v in r] for r in summary.itertuples(index=False)])
    out += [f"Layers (model order): {', '.join(view.layers)}", ""]
    out += ["## Probes left out or flagged", ""] + _flagged(view)

    out += ["## Headline findings, checked on this run", "",
            "Observations from this table, not assertions: a small run may disagree with a paper.", ""]  # fmt: skip
    for f in findings:
        out.append(f"- **{f.statement}**: *{f.verdict}*.")
        out += [f"  - {line}" for line in f.number_lines()]
        if f.detail:
            out.append(f"  - rule / reason: {f.detail}")
    out.append("")

    section = None
    for fig in figures:
        if fig.section != section:
            section = fig.section
            out += [f"## {section}", ""]
        out += [f"### {fig.title}", ""]
        if fig.note:
            out += [f"*{fig.note}*", ""]
        if fig.table is not None:
            cells = mspe_cells(fig.table)
            header = ["network"] + [str(c) for c in fig.table.columns]
            out += _table(header, [[role] + [f"**{t}**" if best else t for t, best in row] for role, row in cells])
        if fig.text_table is not None:
            out += _table(*fig.text_table)
        if fig.file:
            out += [f"![{fig.title}]({fig.file})", ""]
        out += [fig.caption, ""]
    return "\n".join(out)
