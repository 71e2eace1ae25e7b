"""The ``[analysis]`` configuration: probe grids, filters and where the work runs.

An analysis is configured in three layers, later ones winning: the defaults below, an
``[analysis]`` table (in the experiment TOML that built the store, or in a TOML file of
its own), and command-line options. Everything is validated here, before the store is
opened or a cluster started, so that a typo costs a second and not a failed overnight
run: unknown keys get a did-you-mean, types and ranges are checked.

Example (every key optional)::

    [analysis]
    Cs = [1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100]   # inverse L2 strengths of the classifier probes
    alphas = [1e-3, 1e-2, 0.1, 1, 10, 100, 1e3, 1e4, 1e5]  # ridge penalties of the RCVs
    control_seed = 0          # seed of the control labels (one per sample type; analyze.controls)
    max_iter = 1000           # iterations of the classifier solver per C
    probes = ["classifier", "control", "rcv", "outputs"]   # add "mdl" (online-code MDL), "rcv_ols" (OLS RCVs)
    mdl_C = 1.0               # fixed inverse L2 strength of the MDL probes
    mdl_seed = 0              # seed of the MDL transmission order
    runs = ["generalizing", "memorizing-*"]      # names or globs; default: all
    checkpoints = ["*"]
    layers = ["relu*", "input"]
    targets = ["area", "eccentricity"]           # continuous concept targets for RCVs
    scheduler = "local"       # "local" (embedded cluster), "none" (in-process) or "tcp://HOST:PORT"
    n_workers = 2             # default: sized to the machine (see analyze.cluster)
    threads_per_worker = 1    # BLAS threads of each worker
    memory_limit = "auto"     # per worker, e.g. "4GB"
    max_block_bytes = "1GiB"  # larger blocks are streamed in row chunks
    results = "results/mnist.parquet"
    save_weights = false

Filters are lists of names or globs (``"fc*"``, :mod:`probestore.selectors`); on the command line, a comma-separated
string. The layer filter applies to feature layers; the model-output analysis is
selected with ``probes`` (``"outputs"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from analyze.solvers.grids import DEFAULT_ALPHAS, DEFAULT_CS
from probestore.errors import ConfigError, did_you_mean
from probestore.experiment import read_analysis
from probestore.fields import check_keys, check_range, check_type
from probestore.paths import expand_path

#: ``rcv_ols``: the RCVs by ordinary least squares, as Graziani et al. fitted them (opt-in).
PROBE_KINDS = ("classifier", "control", "rcv", "rcv_ols", "outputs", "mdl")
#: Probes fitted when ``probes`` is not given. MDL is left out: it adds about two more
#: classifier fits per block (at one C) and most analyses only need accuracies.
DEFAULT_PROBES = ("classifier", "control", "rcv", "outputs")
DEFAULT_MDL_C = 1.0
DEFAULT_MAX_BLOCK_BYTES = 1 << 30
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ExecutionSettings:
    """Where tasks run: what ``probestore analyze``, ``similarity`` and ``tcav`` share.

    :func:`analyze.cluster.open_executor` needs only these; :class:`AnalysisConfig`
    adds the probe settings, so the probe engine passes its config as it is, while TCAV
    and CKA build just this (no probe grid or filter they would not use). Values are
    validated on construction, like every config field.

    Attributes
    ----------
    scheduler : str
        ``"local"``, ``"none"`` (synchronous, in this process) or a scheduler address.
    n_workers, threads_per_worker : int or None
        Local cluster size (None: sized to the machine); ``n_workers=0`` means in-process.
    memory_limit : str or int
        Per-worker memory limit of the local cluster (``"auto"``: machine memory / workers).
    host : str
        Interface the local scheduler, workers and dashboard bind to. Anything other than
        127.0.0.1 exposes an unauthenticated Dask scheduler (which runs arbitrary code
        submitted to it) to the network: only on a trusted network.
    """

    scheduler: str = "local"
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | int = "auto"
    host: str = LOOPBACK

    def __post_init__(self) -> None:
        # Constructed directly (library use) or via from_dict: validated and normalised
        # the same way either way ("fc*,input" -> ("fc*", "input"), grids sorted).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _NOT_SETTINGS or value is None:
                continue
            object.__setattr__(self, f.name, _validate(f.name, value, f"analysis config {f.name}"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "[analysis]") -> Self:
        """Validate a mapping (a TOML table, CLI overrides) into settings of this class.

        Raises
        ------
        ConfigError
            Unknown key (with a did-you-mean), wrong type, value out of range.
        """
        fields = [f.name for f in dataclasses.fields(cls) if f.name not in _NOT_SETTINGS]
        check_keys(d, fields, where=where)
        return cls(**{k: _validate(k, v, f"{where}.{k}") for k, v in d.items() if v is not None})

    def replace(self, **overrides: Any) -> Self:
        """A copy with validated overrides (``None`` values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        checked = type(self).from_dict(given, where="command-line options")
        return dataclasses.replace(self, **{k: getattr(checked, k) for k in given})

    @property
    def synchronous(self) -> bool:
        """Run blocks in this process (debugging; no cluster)."""
        return self.scheduler == "none" or self.n_workers == 0


#: Dataclass fields that are not settings (not validated, not accepted as keys).
_NOT_SETTINGS = frozenset({"extra"})


@dataclass(frozen=True)
class AnalysisConfig(ExecutionSettings):
    """Validated analysis settings (build with :meth:`from_dict` or :func:`load_config`).

    Attributes
    ----------
    Cs, alphas : tuple of float
        Regularization grids, sorted ascending. ``C`` is scikit-learn's inverse L2
        strength of ``LogisticRegression``; ``alpha`` is ``Ridge``'s penalty, both on
        train-standardized features.
    control_seed : int
        Seed of the control labels (Hewitt & Liang: one random label per sample type of
        the store, :mod:`analyze.controls`): fixed so reruns and workers agree.
    max_iter : int or None
        Solver iterations per C (None: the solver's default).
    tol : float or None
        Solver tolerance (None: the solver's default).
    probes : tuple of str
        Subset of ``PROBE_KINDS`` (default ``DEFAULT_PROBES``: all but ``"mdl"`` and ``"rcv_ols"``).
    mdl_C : float
        Inverse L2 strength of every MDL probe (fixed, not selected: see
        :mod:`analyze.mdl`).
    mdl_seed : int
        Seed of the order in which the MDL online code transmits the train labels.
    runs, checkpoints, layers, targets : tuple of str or None
        names or globs; None selects everything.
    scheduler, n_workers, threads_per_worker, memory_limit, host
        Where the blocks run: see :class:`ExecutionSettings`.
    max_block_bytes : int
        A block whose float32 size exceeds this is streamed in row chunks.
    results : str or None
        Results table path (None: beside the store, ``<store>.results.parquet``).
    save_weights : bool
        Also save probe coefficients and RCV directions to ``<results>.weights.zarr``.
    retry_failed : bool
        On a rerun, fit again the probes recorded as failed.
    """

    Cs: tuple[float, ...] = DEFAULT_CS
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    control_seed: int = 0
    max_iter: int | None = None
    tol: float | None = None
    probes: tuple[str, ...] = DEFAULT_PROBES
    mdl_C: float = DEFAULT_MDL_C
    mdl_seed: int = 0
    runs: tuple[str, ...] | None = None
    checkpoints: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
    results: str | None = None
    save_weights: bool = False
    retry_failed: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in the results table's metadata)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def probe_settings(self) -> dict[str, Any]:
        """The settings that change a probe's numbers (recorded with the results)."""
        out = {"Cs": list(self.Cs), "alphas": list(self.alphas), "control_seed": self.control_seed,
               "max_iter": self.max_iter, "tol": self.tol}
        # Recorded only when changed: tables written before MDL existed stay resumable.
        if self.mdl_C != DEFAULT_MDL_C:
            out["mdl_C"] = self.mdl_C
        if self.mdl_seed != 0:
            out["mdl_seed"] = self.mdl_seed
        return out

    def solver_options(self) -> dict[str, Any]:
        """Keyword arguments for the classifier solver (only those set)."""
        out: dict[str, Any] = {}
        if self.max_iter is not None:
            out["max_iter"] = self.max_iter
        if self.tol is not None:
            out["tol"] = self.tol
        return out


def _validate(key: str, value: Any, where: str) -> Any:
    if key in ("Cs", "alphas"):
        return _grid(value, where)
    if key == "mdl_C":
        check_type(value, (int, float), where=where)
        if not (np.isfinite(value) and value > 0):
            raise ConfigError("mdl_C must be positive and finite", where=where, expected="a number > 0", got=value)
        return float(value)
    if key in ("control_seed", "mdl_seed"):
        check_type(value, int, where=where)
        return int(check_range(value, where=where, low=0))
    if key == "max_iter":
        check_type(value, int, where=where)
        return int(check_range(value, where=where, low=1))
    if key == "tol":
        check_type(value, (int, float), where=where)
        if not value > 0:
            raise ConfigError("tolerance must be positive", where=where, expected="a number > 0", got=value)
        return float(value)
    if key == "probes":
        probes = _patterns(value, where)
        for p in probes:
            if p not in PROBE_KINDS:
                raise ConfigError(
                    f"unknown probe kind {p!r}",
                    where=where,
                    expected=", ".join(PROBE_KINDS),
                    got=repr(p),
                    fix=did_you_mean(p, PROBE_KINDS) or "choose among the expected kinds",
                )
        # canonical order, so that equal selections compare equal
        return tuple(k for k in PROBE_KINDS if k in probes)
    if key in ("runs", "checkpoints", "layers", "targets"):
        return _patterns(value, where)
    if key == "scheduler":
        check_type(value, str, where=where)
        if value not in ("local", "none") and "://" not in value:
            raise ConfigError(
                "unknown scheduler",
                where=where,
                expected="'local', 'none' or a scheduler address like 'tcp://10.0.0.5:8786'",
                got=repr(value),
                fix=did_you_mean(value, ["local", "none"]) or "give the address the `dask scheduler` printed",
            )
        return value
    if key in ("n_workers",):
        check_type(value, int, where=where)
        return int(check_range(value, where=where, low=0))
    if key == "threads_per_worker":
        check_type(value, int, where=where)
        return int(check_range(value, where=where, low=1))
    if key == "memory_limit":
        check_type(value, (str, int), where=where)
        if isinstance(value, str) and value != "auto":
            _parse_bytes(value, where)
        return value
    if key == "host":
        check_type(value, str, where=where)
        if not value:
            raise ConfigError("empty host", where=where, expected="an interface address such as 127.0.0.1")
        return value
    if key == "max_block_bytes":
        check_type(value, (str, int), where=where)
        n = _parse_bytes(value, where) if isinstance(value, str) else int(value)
        return int(check_range(n, where=where, low=1))
    if key == "results":
        check_type(value, (str, Path), where=where)
        return str(value)
    if key in ("save_weights", "retry_failed"):
        return check_type(value, bool, where=where)
    raise AssertionError(key)  # pragma: no cover - check_keys ran first


def _grid(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ConfigError("a grid must be a non-empty list of numbers", where=where,
                          expected="e.g. [0.01, 0.1, 1, 10]", got=repr(value))
    out = []
    for i, v in enumerate(value):
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ConfigError("not a number", where=f"{where}[{i}]", got=repr(v)) from None
        check_type(v, (int, float), where=f"{where}[{i}]")
        if not (np.isfinite(v) and v > 0):
            raise ConfigError("grid values must be positive and finite", where=f"{where}[{i}]",
                              expected="a number > 0", got=v)
        out.append(float(v))
    if len(set(out)) != len(out):
        raise ConfigError("duplicate values in a grid", where=where, got=out, fix="list each value once")
    return tuple(sorted(out))


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError("expected a non-empty list of names or patterns", where=where,
                          expected='e.g. ["fc*", "input"] or "fc*,input"', got=repr(value))
    for i, v in enumerate(value):
        check_type(v, str, where=f"{where}[{i}]")
    return tuple(value)


def _parse_bytes(text: str, where: str) -> int:
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        raise ConfigError("not a size", where=where, expected="e.g. '512MB', '2GiB' or bytes as an integer",
                          got=repr(text)) from None


def load_config(path: str | Path | None, **overrides: Any) -> tuple[AnalysisConfig, str | None]:
    """Read the ``[analysis]`` table of a TOML file, then apply overrides.

    Parameters
    ----------
    path : path or None
        An experiment TOML (its ``[analysis]`` table is used; its ``[experiment].store``
        is returned, ``~`` and ``$VARS`` expanded, so the store need not be repeated), or
        a TOML holding only an ``[analysis]`` table. None: defaults. Read with
        :func:`probestore.experiment.read_analysis`, the parser every command uses.
    **overrides
        Command-line values; None means "not given".

    Returns
    -------
    config : AnalysisConfig
    store : str or None
        ``[experiment].store`` of the file, when it has one.
    """
    store = None
    if path is not None:
        # The one reader of the experiment file: [experiment].store is parsed (and
        # expanded) exactly as `probestore extract` parses it.
        table, store_path = read_analysis(path)
        store = None if store_path is None else str(store_path)
        if isinstance(table.get("results"), str):
            # the same expansion as every path of the file (``~``, ``$VARS``)
            table = {**table, "results": str(expand_path(table["results"], where=f"{path} [analysis].results"))}
        config = AnalysisConfig.from_dict(table, where=f"{path} [analysis]")
    else:
        config = AnalysisConfig()
    return config.replace(**overrides), store
