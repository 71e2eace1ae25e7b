"""The probe grids and analysis settings shared by the tests of the analysis engine."""

from __future__ import annotations

from pathlib import Path

from analyze.config import AnalysisConfig
from analyze.results import NONDETERMINISTIC_COLUMNS

CS = (0.01, 0.1, 1.0, 10.0)
ALPHAS = (0.01, 1.0, 10.0, 100.0, 1e4)


def quiet(msg):  # the engine's log lines are not needed in tests
    pass


def sync_config(tmp, name="results.parquet", **kw):
    return AnalysisConfig(scheduler="none", Cs=CS, alphas=ALPHAS, results=str(Path(tmp) / name), **kw)


def comparable(df):
    """The table without its timing column (the only one allowed to change between runs)."""
    return df.drop(columns=list(NONDETERMINISTIC_COLUMNS)).reset_index(drop=True)
