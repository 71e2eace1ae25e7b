"""The report as one HTML page: summary, findings, figures, the MSPE table.

The page is a single file with inline CSS and no scripts; figures are PNGs in the
``figures/`` folder beside it, referenced by relative path, so the whole folder can be
zipped, attached or served as is. Every string from the table (run and layer names,
failure messages) is escaped: a results table is data, not markup.
"""

from __future__ import annotations

from html import escape

from analyze.report import flags
from analyze.report.figures import FigureResult, mspe_cells
from analyze.report.findings import Finding
from analyze.report.table import ResultsView, run_summary

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.holds { color: #0a6b2d; font-weight: bold; }
.fails { color: #a11; font-weight: bold; }
.untestable { color: #777; font-weight: bold; }
.skipped { color: #8a5a00; font-style: italic; }
.optional { color: #777; font-style: italic; }
.caption, .rule { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
ul.numbers { margin: 0; padding-left: 1.2em; }
"""

_VERDICT_CLASS = {True: "holds", False: "fails", None: "untestable"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells are already escaped / marked up."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(view: ResultsView, source: str) -> str:
    parts = [f"<p>Results table: <code>{escape(source)}</code>"]
    if view.dataset_name:
        parts.append(f" &middot; dataset: <b>{escape(view.dataset_name)}</b>")
    if view.class_names:
        parts.append(f" ({len(view.class_names)} classes)")
    parts.append(f" &middot; layer order from the {escape(view.layer_order_source)}</p>")
    summary = run_summary(view)
    rows = [[escape(str(v)) for v in r] for r in summary.itertuples(index=False)]
    parts.append(_table([escape(c) for c in summary.columns], rows))
    parts.append(f"<p>Layers (model order): {escape(', '.join(view.layers))}</p>")
    return "".join(parts)


def _flagged(view: ResultsView) -> str:
    """The "Probes left out or flagged" section: counts, how each is treated, examples."""
    table = view.table if view.table is not None else view.rows
    counts = flags.count_lines(table)
    if not counts:
        return "<p>Every probe converged, chose a C / alpha inside its grid and was measured on proper splits.</p>"
    parts = [_table(["probes", "count", "in this report"],
                    [[escape(label), str(n), escape(how)] for label, n, how in counts])]
    rows, total = flags.example_rows(table)
    parts.append(_table(["probe", "status", "grid edge", "message"], [[escape(c) for c in r] for r in rows]))
    if total > len(rows):
        parts.append(f"<p class='caption'>{total - len(rows)} more: filter the results table on "
                     "<code>status</code> and <code>grid_edge</code>.</p>")
    return "".join(parts)


def _findings(findings: list[Finding]) -> str:
    rows = []
    for f in findings:
        numbers = "".join(f"<li>{escape(line)}</li>" for line in f.number_lines())
        rows.append(
            [
                escape(f.statement),
                f"<span class='{_VERDICT_CLASS[f.holds]}'>{escape(f.verdict)}</span>",
                f"<ul class='numbers'>{numbers}</ul>" if numbers else "",
                f"<span class='rule'>{escape(f.detail)}</span>",
            ]
        )
    return _table(["finding", "this run", "numbers", "rule / reason"], rows)


def _figure(fig: FigureResult) -> str:
    parts = [f"<section id='{escape(fig.key)}'><h3>{escape(fig.title)}</h3>"]
    if fig.note:
        parts.append(f"<p class='{'skipped' if fig.requested else 'optional'}'>{escape(fig.note)}</p>")
    if fig.table is not None:
        cells = mspe_cells(fig.table)
        header = ["network"] + [escape(str(c)) for c in fig.table.columns]
        rows = [[escape(role)] + [f"<b>{escape(t)}</b>" if best else escape(t) for t, best in row] for role, row in cells]
        parts.append(_table(header, rows))
    if fig.text_table is not None:
        header, rows = fig.text_table
        parts.append(_table([escape(h) for h in header], [[escape(str(c)) for c in row] for row in rows]))
    if fig.file:
        parts.append(f"<img src='{escape(fig.file)}' alt='{escape(fig.title)}'>")
    parts.append(f"<p class='caption'>{escape(fig.caption)}</p></section>")
    return "".join(parts)


def render_html(view: ResultsView, findings: list[Finding], figures: list[FigureResult], *, source: str) -> str:
    """The whole page as a string.

    Parameters
    ----------
    view
        The results table in model order.
    findings, figures
        From :func:`~analyze.report.findings.compute_findings` and
        :func:`~analyze.report.figures.make_figures`.
    source
        Where the results table was read from (shown, escaped).
    """
    title = "probestore report" + (f": {view.dataset_name}" if view.dataset_name else "")
    body = [
        f"<h1>{escape(title)}</h1>",
        "<h2>Runs</h2>",
        _summary(view, source),
        "<h2>Probes left out or flagged</h2>",
        _flagged(view),
        "<h2>Headline findings, checked on this run</h2>",
        "<p class='caption'>Observations from this table, not assertions: a small run may disagree with a paper.</p>",
        _findings(findings),
    ]
    section = None
    for f in figures:
        if f.section != section:
            section = f.section
            body.append(f"<h2>{escape(section)}</h2>")
        body.append(_figure(f))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
