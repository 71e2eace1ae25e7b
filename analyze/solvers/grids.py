"""The default regularization grids, defined once for every probe that selects a penalty.

They live here, at the bottom of ``analyze`` (numpy only), because every layer above
uses them: the solvers (default arguments, the fix text of a bad grid), the
scikit-learn-style estimators (:mod:`analyze.estimators`) and the analysis config
(:mod:`analyze.config`). Changing a grid changes the numbers of every table fitted
without an explicit grid, so it is a versioned decision, not a local tweak.
"""

from __future__ import annotations

import numpy as np

from probestore.errors import ConfigError

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_ALPHAS_TEXT", "DEFAULT_CS", "DEFAULT_CS_TEXT", "check_alphas", "check_Cs"]

#: Inverse L2 strengths of the logistic probes (``LogisticRegression``'s ``C``): 1e-4 … 1e2.
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))
#: Ridge penalties of the RCVs (``Ridge``'s ``alpha``): 1e-3 … 1e5.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 5, 15))
#: How to write the grids in a suggested fix (Python and TOML alike).
DEFAULT_CS_TEXT = "np.logspace(-4, 2, 7)"
DEFAULT_ALPHAS_TEXT = "np.logspace(-3, 5, 15)"


def check_Cs(Cs) -> np.ndarray:
    """A logistic C grid as the solvers walk it: float64, sorted ascending, duplicates dropped.

    Raises
    ------
    ConfigError
        Empty, non-finite or non-positive values.
    """
    c = np.asarray(Cs, dtype=np.float64).ravel()
    if c.size == 0 or not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ConfigError("invalid inverse-regularization grid", where="Cs",
                          expected="a non-empty sequence of finite values > 0",
                          got=repr(np.asarray(Cs).tolist()), fix=f"e.g. Cs = {DEFAULT_CS_TEXT}")
    return np.unique(c)


def check_alphas(alphas) -> np.ndarray:
    """A ridge penalty grid as the solvers walk it: float64, sorted ascending, duplicates dropped.

    Raises
    ------
    ConfigError
        Empty, non-finite or non-positive values.
    """
    a = np.asarray(alphas, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ConfigError(
            "invalid ridge penalty grid",
            where="alphas",
            expected="a non-empty sequence of finite values > 0",
            got=repr(np.asarray(alphas).tolist()),
            fix=f"e.g. alphas = {DEFAULT_ALPHAS_TEXT}",
        )
    return np.unique(a)
