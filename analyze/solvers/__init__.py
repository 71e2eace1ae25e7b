"""Pure probe solvers: arrays (or split statistics) in, fitted and scored probes out.

numpy only (no scikit-learn, no torch), so the Dask engine can call them once per
(run, checkpoint, layer) block on any worker:

- :func:`fit_rcv_block` / :func:`fit_ridge_path`: Regression Concept Vectors (ridge);
- :func:`fit_logistic_block`: linear classifier probes (multinomial logistic);
- :class:`Standardizer`, :class:`GramAccumulator`, :func:`merge_stats`: train-split
  standardization and the streaming statistics ridge needs.
"""

from analyze.solvers.logistic import LogisticResult, fit_logistic_block
from analyze.solvers.ridge import RidgeResult, fit_rcv_block, fit_ridge_path
from analyze.solvers.standardize import (
    GramAccumulator,
    SplitStats,
    Standardizer,
    chunk_stats,
    merge_stats,
    stats_from_arrays,
)

__all__ = [
    "GramAccumulator",
    "LogisticResult",
    "RidgeResult",
    "SplitStats",
    "Standardizer",
    "chunk_stats",
    "fit_logistic_block",
    "fit_rcv_block",
    "fit_ridge_path",
    "merge_stats",
    "stats_from_arrays",
]
