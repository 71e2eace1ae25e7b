"""Probes whose numbers the report must not show as if they were fine.

Four kinds of rows carry a warning in the results table, and the report treats each
the same way in every figure, finding and section:

- ``failed``: no numbers, only a reason. **Left out.**
- ``degenerate_split``: fitted, but the valid or test split lacks classes present in
  train (or the test split is empty): the chosen C or the test error is measured on
  the wrong classes. **Left out** of figures and findings.
- ``not_converged``: the solver stopped at ``max_iter``; the numbers are those of an
  unfinished fit, usually close. **Drawn, and marked** (an open black ring on a line,
  a triangle in a heatmap cell, ``†`` in a table cell).
- grid edge (column ``grid_edge`` = ``low`` / ``high``): the chosen C or alpha is the
  smallest or largest of its grid, so the optimum may lie outside it. **Drawn, and
  marked** the same way.

Every figure's caption says which of its points are marked and how many probes were
left out; the report's "Probes left out or flagged" section lists them, and
``probestore report`` prints a one-line count.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

#: Statuses whose rows are left out of figures and findings.
EXCLUDED_STATUSES = ("failed", "skipped", "degenerate_split")
#: Marker drawn over a marked point (line figures) and in a marked heatmap cell.
RING = {"marker": "o", "s": 120, "facecolors": "none", "edgecolors": "black", "linewidths": 1.4, "zorder": 5}
TABLE_MARK = "†"

_CATEGORIES = (
    ("failed", "failed", "left out (no numbers)"),
    ("skipped", "skipped as not applicable", "left out (no numbers; the message says why)"),
    ("degenerate_split", "degenerate split", "left out of figures and findings"),
    ("not_converged", "not converged", "drawn, marked"),
    ("grid_low", "C / alpha at the low edge of its grid", "drawn, marked"),
    ("grid_high", "C / alpha at the high edge of its grid", "drawn, marked"),
)


def _grid_edge(df: pd.DataFrame) -> pd.Series:
    if "grid_edge" not in df.columns:
        return pd.Series("", index=df.index, dtype=object)
    return df["grid_edge"].fillna("").astype(str)


def flag_of(df: pd.DataFrame) -> pd.Series:
    """Per usable row: why it is marked (``""`` when it is not)."""
    edge = _grid_edge(df)
    hp = df["hyperparameter"].fillna("").astype(str) if "hyperparameter" in df.columns else pd.Series("", df.index)
    text = pd.Series("", index=df.index, dtype=object)
    at_edge = edge.isin(("low", "high"))
    text[at_edge] = (hp[at_edge].replace("", "hyperparameter") + " at the " + edge[at_edge] + " grid edge")
    slow = df["status"] == "not_converged"
    text[slow] = np.where(text[slow] != "", "not converged; " + text[slow], "not converged")
    return text


def categories(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows of the whole table per category (a row may be in two: not converged and at an edge)."""
    edge = _grid_edge(df)
    usable = ~df["status"].isin(EXCLUDED_STATUSES)
    return {
        "failed": df[df["status"] == "failed"],
        "skipped": df[df["status"] == "skipped"],
        "degenerate_split": df[df["status"] == "degenerate_split"],
        "not_converged": df[df["status"] == "not_converged"],
        "grid_low": df[usable & (edge == "low")],
        "grid_high": df[usable & (edge == "high")],
    }


def count_lines(df: pd.DataFrame) -> list[tuple[str, int, str]]:
    """``(category, count, how the report treats it)`` for each non-empty category."""
    cats = categories(df)
    return [(label, len(cats[key]), how) for key, label, how in _CATEGORIES if len(cats[key])]


def summary_line(df: pd.DataFrame) -> str:
    """The CLI's one line (``""`` when every probe is fine)."""
    lines = count_lines(df)
    if not lines:
        return ""
    parts = ", ".join(f"{n} {label} ({how})" for label, n, how in lines)
    return (f"report: {parts} of {len(df)} probes; listed under 'Probes left out or flagged' in the report")


def example_rows(df: pd.DataFrame, limit: int = 20) -> tuple[list[list[str]], int]:
    """Up to ``limit`` flagged rows as ``[probe, status, grid edge, message]``, and how many there are."""
    edge = _grid_edge(df)
    bad = df[(df["status"] != "ok") | edge.isin(("low", "high"))]
    order = bad["status"].map({"failed": 0, "skipped": 1, "degenerate_split": 2, "not_converged": 3}).fillna(4)
    bad = bad.assign(_o=order.to_numpy()).sort_values("_o", kind="stable")
    rows = []
    for r in bad.head(limit).itertuples():
        pid = getattr(r, "probe_id", "") or "/".join((r.run, r.checkpoint, r.layer, r.probe, r.target))
        rows.append([str(pid), str(r.status), str(edge.get(r.Index, "")), str(getattr(r, "message", ""))])
    return rows, len(bad)


def caption_note(marked: int, excluded: int) -> str:
    """The sentence every figure caption ends with."""
    return (f" Marked (open black ring; triangle in a heatmap cell; {TABLE_MARK} in a table): not-converged probes "
            f"and probes whose C / alpha is at the edge of its grid ({marked} here). Left out: failed, skipped and "
            f"degenerate-split probes ({excluded} in the table); see 'Probes left out or flagged'.")


def mark_points(ax, x: Iterable[float], y: Iterable[float], flags: Iterable[str | bool]) -> int:
    """Draw the ring over every marked point; returns how many were marked."""
    pts = [(a, b) for a, b, f in zip(x, y, flags) if f and np.isfinite(b)]
    if pts:
        xs, ys = zip(*pts)
        # One legend entry per panel, so that a figure read on its own still says what a ring is.
        label = None if getattr(ax, "_probestore_ring", False) else "not converged / C or alpha at grid edge"
        ax.scatter(xs, ys, label=label, **RING)
        ax._probestore_ring = True
    return len(pts)
