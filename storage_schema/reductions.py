"""The reduction grammar: how a layer's output becomes its stored features, as plain data.

A store records for every feature block the reduction that produced it (SCHEMA.md §4.5,
``reduction`` = ``{"kind", "params"}``) and, for gradients, the ``lift_scale`` that
follows from it (§6.1). Which kinds exist, which ones an experiment file may ask for,
which ones are linear and what ``lift_scale`` a linear one implies are therefore facts
of the schema, and they live here, with no torch and no numpy: the experiment-file
parser checks ``[extract] reduction = "random:1000"`` with :func:`parse_reduction` on a
machine without torch, and the validator and the readers compute ``lift_scale`` with
the same :func:`lift_scale_for` as the writer. *Applying* a reduction to a tensor needs
torch and lives in :mod:`extract.reductions`.

Spec strings (``[extract] reduction`` / ``reductions``): ``gap`` and ``gmp`` (mean / max
over the positions after the channel axis), ``flatten`` (everything), ``random:K`` (a
fixed random subset of K features), ``project:K`` (a fixed Gaussian projection to K
dimensions) and ``auto`` (``gap`` for a 4-D output, ``flatten`` for a 2-D one; resolved
per layer before anything is stored). Alain & Bengio 2016, §3.4.
"""

from __future__ import annotations

import math
from typing import Any

from probestore.errors import ConfigError, did_you_mean

__all__ = ["SPEC_KINDS", "STORED_KINDS", "NEEDS_K", "LINEAR_REDUCTIONS", "parse_reduction", "lift_scale_for"]

#: What an experiment file may ask for (``auto`` is resolved per layer, never stored).
SPEC_KINDS = ("gap", "gmp", "random", "project", "flatten", "auto")
#: What a store may record in a block's ``reduction.kind`` (SCHEMA.md §4.5; ``none``: the
#: features are the layer output as is, written by other producers than probestore).
STORED_KINDS = ("gap", "gmp", "random", "project", "flatten", "none")
#: The kinds written with a ``:K`` argument (``params.k`` in the store).
NEEDS_K = ("random", "project")
#: Reductions with a matrix ``R`` (SCHEMA.md §6.1); ``gmp`` is not linear, so a stored
#: gradient of a max-pooled layer means nothing.
LINEAR_REDUCTIONS = ("flatten", "none", "random", "project", "gap")


def parse_reduction(spec: str) -> tuple[str, int | None]:
    """Split a reduction spec string into ``(kind, k)``.

    Parameters
    ----------
    spec : str
        One of ``"gap"``, ``"gmp"``, ``"flatten"``, ``"auto"``, ``"random:K"``,
        ``"project:K"`` with K a positive integer (case and spaces around the parts are
        ignored).

    Returns
    -------
    kind : str
    k : int or None
        None for the kinds that take no K.

    Raises
    ------
    ConfigError
        Unknown kind, missing / extra / non-integer K.
    """
    where = "reduction spec"
    if not isinstance(spec, str):
        raise ConfigError("wrong type", where=where, expected="str such as 'gap' or 'random:1000'",
                          got=f"{type(spec).__name__} {spec!r}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in SPEC_KINDS:
        raise ConfigError(f"unknown reduction {spec!r}", where=where,
                          expected="gap, gmp, flatten, auto, random:K or project:K", got=spec,
                          fix=did_you_mean(kind, SPEC_KINDS) or "use one of the expected forms")
    if kind not in NEEDS_K:
        if sep:
            raise ConfigError(f"reduction {kind!r} takes no ':K' argument", where=where,
                              got=spec, fix=f"write {kind!r}")
        return kind, None
    arg = arg.strip()
    if not arg.isdigit() or int(arg) < 1:
        raise ConfigError(f"reduction {kind!r} needs a positive integer K", where=where,
                          expected=f"'{kind}:K', e.g. '{kind}:1000'", got=spec)
    return kind, int(arg)


def lift_scale_for(reduction: Any, source_shape: Any = None) -> float | None:
    """The ``lift_scale`` SCHEMA.md §6.1 prescribes for a linear reduction (None: undecidable).

    With ``R Rᵀ = c·I`` the lift ``u = Rᵀ v / c`` moves the reduced features by exactly
    ``v`` and is the minimum-norm such move, so the derivative it stands for is
    ``⟨g, u⟩ = ⟨R g, v⟩ / c``: ``lift_scale = 1/c``. ``flatten`` / ``random:K``: ``c = 1``;
    ``gap`` (the mean over H·W positions): ``c = 1/(H·W)``; ``project:K`` (``R = Wᵀ``,
    entries of ``W`` drawn from N(0, 1/K)): ``E[WᵀW] = (D/K)·I`` with D the flattened
    size, so ``lift_scale = K/D`` (exact in expectation; see §6.1 for the deviation).
    One function for the writer (``extract.gradients``), the validator and the readers.

    Parameters
    ----------
    reduction : dict
        A stored ``reduction`` attribute (``kind``, ``params``, ``source_shape``...).
    source_shape : sequence of int, optional
        The layer's output shape without the batch axis, when the block records it
        apart from ``reduction``.
    """
    if not isinstance(reduction, dict):
        return None
    kind = reduction.get("kind")
    if kind in ("flatten", "none", "random"):
        return 1.0
    shape = source_shape if source_shape is not None else reduction.get("source_shape")
    if not (isinstance(shape, (list, tuple)) and shape
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        return None
    if kind == "gap":
        return float(math.prod(shape[1:])) if len(shape) >= 2 else None
    if kind == "project":
        params = reduction.get("params")
        k = params.get("k") if isinstance(params, dict) else None
        k = reduction.get("n_features") if k is None else k
        if isinstance(k, int) and not isinstance(k, bool) and k > 0:
            return k / float(math.prod(shape))
    return None
