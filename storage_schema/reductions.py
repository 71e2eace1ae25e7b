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

Token-axis reductions (text models and vision transformers, outputs ``[batch, tokens,
hidden]``) decide what a store's *rows* are (SCHEMA.md 1.3, ``dataset.unit``):
``cls`` (the first token), ``mean`` (mean over the real tokens, padding masked) and
``last`` (the last real token) keep one row per sequence; ``tokens`` (every real token
its own row) and ``random_tokens:K`` (K seeded positions per sequence) make every row a
token (or a labelled word). All keep the hidden width as features. One store has one
row unit, so every layer of a token-unit store uses the same row selection
(:func:`row_unit`, :func:`check_row_units`).
"""

from __future__ import annotations

import math
from typing import Any

from probestore.errors import ConfigError, did_you_mean

__all__ = ["SPEC_KINDS", "STORED_KINDS", "NEEDS_K", "LINEAR_REDUCTIONS", "SEQUENCE_KINDS", "TOKEN_KINDS",
           "TOKEN_AXIS_KINDS", "parse_reduction", "lift_scale_for", "row_unit", "check_row_units"]

#: Token-axis reductions that keep one row per sequence.
SEQUENCE_KINDS = ("cls", "mean", "last")
#: Token-axis reductions whose rows are tokens (or labelled words).
TOKEN_KINDS = ("tokens", "random_tokens")
#: Every reduction over a ``[batch, tokens, hidden]`` output.
TOKEN_AXIS_KINDS = SEQUENCE_KINDS + TOKEN_KINDS

#: What an experiment file may ask for (``auto`` is resolved per layer, never stored).
SPEC_KINDS = ("gap", "gmp", "random", "project", "flatten", "auto", "cls", "mean", "last", "tokens",
              "random_tokens")
#: What a store may record in a block's ``reduction.kind`` (SCHEMA.md §4.5; ``none``: the
#: features are the layer output as is, written by other producers than probestore).
STORED_KINDS = ("gap", "gmp", "random", "project", "flatten", "none", "cls", "mean", "last", "tokens",
                "random_tokens")
#: The kinds written with a ``:K`` argument (``params.k`` in the store).
NEEDS_K = ("random", "project", "random_tokens")
#: Reductions with a matrix ``R`` (SCHEMA.md §6.1); ``gmp`` is not linear, so a stored
#: gradient of a max-pooled layer means nothing.
LINEAR_REDUCTIONS = ("flatten", "none", "random", "project", "gap")


def parse_reduction(spec: str) -> tuple[str, int | None]:
    """Split a reduction spec string into ``(kind, k)``.

    Parameters
    ----------
    spec : str
        One of ``"gap"``, ``"gmp"``, ``"flatten"``, ``"auto"``, ``"random:K"``,
        ``"project:K"``, ``"cls"``, ``"mean"``, ``"last"``, ``"tokens"``,
        ``"random_tokens:K"`` with K a positive integer (case and spaces around the parts are
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
                          expected="gap, gmp, flatten, auto, random:K, project:K, cls, mean, last, "
                                   "tokens or random_tokens:K", got=spec,
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


def row_unit(kind: str) -> str:
    """``"token"`` for reductions whose rows are tokens / words, else ``"sequence"``.

    Image reductions and ``cls`` / ``mean`` / ``last`` keep one row per input (an
    image, a sequence); ``tokens`` and ``random_tokens`` make one row per token.
    """
    return "token" if kind in TOKEN_KINDS else "sequence"


def check_row_units(specs: dict[str, str], where: str = "extract.reductions") -> str:
    """The one row unit of a set of per-layer reduction specs (refuse a mix).

    A store's rows (``samples/*``, the first axis of every block) are either sequences
    or tokens, so ``cls`` on one layer and ``tokens`` on another cannot share a store;
    token-unit layers must also select the same rows (``random_tokens:8`` on one
    layer and ``tokens`` on another would give blocks of different lengths).

    Parameters
    ----------
    specs : dict of str to str
        Layer name -> reduction spec.

    Returns
    -------
    str
        ``"sequence"`` or ``"token"``.

    Raises
    ------
    ConfigError
        Layers of both units, or token layers with different row selections.
    """
    parsed = {name: parse_reduction(spec) for name, spec in specs.items()}
    token = {n: (k, kk) for n, (k, kk) in parsed.items() if k in TOKEN_KINDS}
    if not token:
        return "sequence"
    other = [n for n in parsed if n not in token]
    if other:
        a, b = next(iter(token)), other[0]
        raise ConfigError("one store holds one row unit: sequences or tokens, not both", where=where,
                          expected="the same row unit for every layer",
                          got=f"{a!r}: {specs[a]!r} (token rows), {b!r}: {specs[b]!r} (sequence rows)",
                          fix="make two experiments (two stores): one with the token reduction, "
                              "one with the sequence reduction")
    selections = sorted({f"{k}:{kk}" if kk else k for k, kk in token.values()})
    if len(selections) > 1:
        raise ConfigError("every layer of a token store must select the same token rows", where=where,
                          expected="one of " + ", ".join(selections) + " for every layer",
                          got=", ".join(f"{n!r}: {specs[n]!r}" for n in list(token)[:4]),
                          fix=f'use reduction = "{selections[0]}" for every layer, or make two experiments')
    return "token"
