"""How long and how much memory an analysis will take, before it runs (``--dry-run``).

An overnight extraction at Alain & Bengio's scale (1,000 classes, 1,000 features per
layer, tens of thousands of samples, ~20 layers, many checkpoints) makes probe fitting
the bottleneck; a user needs to know whether the plan takes an hour or a week, and how
many workers finish it by a deadline, *before* starting it.

The model. Each block's time is the sum of its parts, each an operation count times a
rate measured on this machine by :func:`calibrate` (about a second, cached):

- classifier probes: L-BFGS evaluations × the cost of one evaluation (two float32
  GEMMs of ``n_train × F × K·P`` multiply-adds, the softmax pass over ``n_train × K·P``
  logits, the L-BFGS step over ``(F+1)·K·P`` float64 parameters and their history); evaluations per C come from :func:`evaluations_per_C` (a prior for
  warm-started paths at the given tolerance, checked against measured fits in
  ``benchmarks/bench_paper_scale.py``; within 2× there);
- RCVs: the float64 Gram ``n_train · F²`` and a symmetric eigendecomposition ``F³``;
- reading: the float32 bytes at ``READ_BYTES_PER_S`` (lz4-compressed Zarr decodes
  faster than that on one core).

Memory per block: the rows in float32 (twice while the splits are cut), the float64
standardization temporary of the largest split, the solver's float32 copies, the
logits, the path of solutions (``len(Cs)`` parameter sets), the L-BFGS history
(``2 · 10`` parameter sets per label set), plus the worker's own baseline (the
interpreter and libraries, measured at calibration). A streamed block (larger than
``max_block_bytes``) holds one row chunk and the train and valid rows instead of the
whole block.

Workers for a deadline: blocks are independent tasks, so ``ceil(total / deadline)``
workers suffice as long as no single block is longer than the deadline (a block is the
unit of parallelism: one huge block cannot be split over workers) and the longest
blocks are packed first (the engine submits the largest blocks first).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from probestore.errors import ConfigError
from probestore.progress import format_bytes

#: Bump when what is measured changes (an old cache is then re-measured).
CALIBRATION_VERSION = 3
#: Decoding rate assumed for stored blocks (float32 bytes per second per worker).
READ_BYTES_PER_S = 300e6
#: L-BFGS history length of the classifier solver (analyze.solvers.logistic._HISTORY).
HISTORY = 10
#: Fixed overhead of one task (scheduling, opening the store, writing its rows), seconds.
TASK_OVERHEAD_S = 0.05


@dataclass(frozen=True)
class Calibration:
    """Rates of this machine for the operations the probes are made of (one worker's threads).

    Attributes
    ----------
    gemm32_flops, gemm64_flops : float
        Floating-point operations per second of a float32 / float64 matrix product.
    softmax_s : float
        Seconds per logit of the classifier's softmax-and-residual pass.
    stream_s : float
        Seconds per parameter of one L-BFGS step outside the objective (direction from
        a full history, its update, the line search's vector passes).
    eigh_s : float
        Seconds per ``F³`` of a symmetric eigendecomposition.
    baseline_bytes : int
        Resident memory of a process with numpy and the solvers imported.
    threads : int
        BLAS threads it was measured with.
    machine, measured_at : str
    load : float
        1-minute load average while measuring (a busy machine gives slow rates).
    """

    gemm32_flops: float
    gemm64_flops: float
    softmax_s: float
    stream_s: float
    eigh_s: float
    baseline_bytes: int
    threads: int
    machine: str
    measured_at: str
    load: float = 0.0
    version: int = CALIBRATION_VERSION


def machine_key(threads: int) -> str:
    """What a calibration is valid for: this host, its CPU and BLAS thread count, numpy."""
    return f"{platform.node()}|{platform.machine()}|{_cpu_model()}|numpy {np.__version__}|{threads} thread(s)"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def _best_of(fn, repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def _stale(entry: dict) -> bool:
    """A cached calibration taken on a busy machine, now that it is quiet: measure again.

    Why: the rates of a loaded machine are several times too slow, and a cache would
    otherwise keep them forever.
    """
    load, cores = _load()
    return float(entry.get("load", 0.0)) > 1.5 * cores and load <= cores


def calibrate(threads: int = 1) -> Calibration:
    """Measure this machine's rates with ``threads`` BLAS threads (about one second).

    Best of three for each: on a busy machine the rates are those of its quiet moments,
    so an estimate is optimistic by the load factor (say so when quoting it).
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    n, F, K = 2048, 512, 256
    a32 = rng.standard_normal((n, F), dtype=np.float32)
    b32 = rng.standard_normal((F, K), dtype=np.float32)
    a64, b64 = a32.astype(np.float64), b32.astype(np.float64)
    z = rng.standard_normal((n, K * 4), dtype=np.float32)
    step = _lbfgs_step(rng, 200_000)
    sym = np.cov(rng.standard_normal((400, 300)), rowvar=False)

    def softmax_pass():
        e = z - z.max(axis=1, keepdims=True)
        np.exp(e, out=e)
        s = e.sum(axis=1, keepdims=True, dtype=np.float64)
        e *= (1.0 / s).astype(np.float32)
        e.sum(axis=0, dtype=np.float64)

    with threadpool_limits(limits=int(threads)):
        t32 = _best_of(lambda: a32 @ b32)
        t64 = _best_of(lambda: a64 @ b64)
        tsm = _best_of(softmax_pass)
        thist = _best_of(step)
        teig = _best_of(lambda: np.linalg.eigh(sym))
    return Calibration(
        gemm32_flops=2.0 * n * F * K / t32,
        gemm64_flops=2.0 * n * F * K / t64,
        softmax_s=tsm / z.size,
        stream_s=thist / 200_000,
        eigh_s=teig / 300**3,
        baseline_bytes=_rss_bytes(),
        threads=int(threads),
        machine=machine_key(threads),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        load=_load()[0],
    )


def _lbfgs_step(rng, D: int):
    """One L-BFGS step's work outside the objective, on a full history of ``D`` parameters.

    The solver's own compact-form history (direction and update) plus the ~15 vector
    passes of the line search and bookkeeping (trial point, masks, differences, copies).
    """
    from analyze.solvers.logistic import _History

    hist = _History(1, D)
    idx = np.zeros(1, dtype=np.intp)
    for _ in range(HISTORY):
        s = rng.standard_normal((1, D))
        hist.push(idx, s, s + 0.1 * rng.standard_normal((1, D)))
    g = rng.standard_normal((1, D))
    out = np.empty_like(g)

    def step():
        d = hist.direction(g, idx)
        for _ in range(15):
            np.add(g, d, out=out)
        hist.push(idx, d, out - g)

    return step


def _rss_bytes() -> int:
    """Current resident memory of this process (0 where it cannot be read)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or not permitted: no baseline
        return 0


def cache_file() -> Path:
    """Where calibrations are cached: ``$PROBESTORE_CACHE_DIR``, else the user's cache dir.

    The user's cache dir is ``$XDG_CACHE_HOME/probestore`` (``~/.cache/probestore``).
    """
    env = os.environ.get("PROBESTORE_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "calibration.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "probestore" / "calibration.json"


def load_or_calibrate(threads: int = 1, path: Path | None = None, *, refresh: bool = False
                      ) -> tuple[Calibration, str]:
    """The cached calibration of this machine and thread count, or a fresh one (then cached).

    Returns the calibration and a phrase saying where it came from (printed by the
    dry run, so a user knows whether the figures are this machine's). A cache that
    cannot be read or written is not an error: the calibration is then measured anew
    each time (about a second).
    """
    path = cache_file() if path is None else Path(path)
    key = machine_key(threads)
    entries: dict = {}
    if path.exists() and not refresh:
        with contextlib.suppress(OSError, ValueError):
            entries = json.loads(path.read_text())
            hit = entries.get(key)
            if isinstance(hit, dict) and hit.get("version") == CALIBRATION_VERSION and not _stale(hit):
                with contextlib.suppress(TypeError):
                    return Calibration(**hit), (f"cached calibration {path} ({hit['measured_at']}, load average "
                                                f"{hit['load']:.1f})")
    cal = calibrate(threads)
    entries = entries if isinstance(entries, dict) else {}
    entries[key] = asdict(cal)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, path)
        where = f"calibrated now at load average {cal.load:.1f}, cached in {path}"
    except OSError:
        where = f"calibrated now at load average {cal.load:.1f} (cache {path} not writable)"
    return cal, where


# --------------------------------------------------------------------------- the model


def evaluations_per_C(tol: float, max_iter: int) -> float:
    """Objective evaluations per C of a warm-started path (a prior; see the module doc).

    Measured: ~15 iterations per C with 10 classes and ~35 with 1,000 at ``tol`` 1e-4
    (the first, cold C dominating), about twice as many at 1e-6; line searches add ~10%.
    """
    base = 30.0 * (1.0 + 0.5 * max(0.0, math.log10(1e-4 / tol)))
    return 1.1 * min(float(max_iter), base)


@dataclass
class BlockEstimate:
    """Estimated seconds and peak memory of one block's task."""

    name: str
    seconds: float
    memory_bytes: int
    streamed: bool
    parts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitSizes:
    train: int
    valid: int
    test: int

    @property
    def total(self) -> int:
        return self.train + self.valid + self.test


def _eval_seconds(cal: Calibration, n: int, F: int, K: int, P: int) -> float:
    """One objective-and-gradient evaluation of P label sets, plus the L-BFGS step around it."""
    gemms = 2 * 2.0 * n * F * K * P / cal.gemm32_flops
    softmax = n * K * P * cal.softmax_s
    history = (F + 1) * K * P * cal.stream_s
    return gemms + softmax + history


def _classifier_seconds(job, splits: SplitSizes, K: int, cal: Calibration, n_Cs: int, tol: float,
                        max_iter: int) -> float:
    targets = {p.target for p in job.probes if p.group == "classifier"}
    if not targets:
        return 0.0
    Fw = min(job.n_features, splits.train)
    evals = evaluations_per_C(tol, max_iter)
    grid = n_Cs * evals * _eval_seconds(cal, splits.train, Fw, K, 1)
    n_fixed = len(targets & {"control_labels", "train_labels"})
    fixed = 2 * evals * _eval_seconds(cal, splits.train, Fw, K, n_fixed) if n_fixed else 0.0
    inner = 0.0
    if "train_labels" in targets:  # C selected on an inner split of train: a second grid
        inner = n_Cs * evals * _eval_seconds(cal, int(0.8 * splits.train), Fw, K, 1)
    scoring = (n_Cs + 1) * 2.0 * splits.total * Fw * K * len(targets) / cal.gemm32_flops
    standardize = 3 * splits.total * job.n_features * cal.softmax_s
    return grid + fixed + inner + scoring + standardize


def _rcv_seconds(job, splits: SplitSizes, cal: Calibration) -> float:
    groups = {p.group for p in job.probes} & {"rcv", "rcv_ols"}
    if not groups:
        return 0.0
    F = job.n_features
    gram = 2.0 * splits.total * F * F / cal.gemm64_flops
    return len(groups) * (gram + 2 * F**3 * cal.eigh_s)


def _memory_bytes(job, splits: SplitSizes, K: int, cal: Calibration, n_Cs: int, streamed: bool,
                  max_block_bytes: int) -> int:
    F, n = job.n_features, job.n_samples
    targets = {p.target for p in job.probes if p.group == "classifier"}
    L = max(1, len(targets))
    fitted_rows = splits.train + splits.valid + (0 if streamed else splits.test)
    data = (min(max_block_bytes, 4 * n * F) + 4 * fitted_rows * F) if streamed else 8 * n * F
    standardize = 8 * max(splits.train, splits.valid, splits.test) * F + 4 * fitted_rows * F
    solver = 0
    if targets:
        Fw = min(F, splits.train)
        D = (Fw + 1) * K
        logits = 2 * 4 * splits.train * K * L + 8 * max(splits.valid, splits.test) * K * L
        path = 8 * D * n_Cs * L + 8 * K * F * n_Cs * L  # solutions (standardized and raw) along the grid
        history = 2 * HISTORY * 8 * D * L + 8 * 8 * D * L  # pairs, plus iterate, gradient, direction, trial
        solver = logits + path + history
    rcv = 3 * 8 * F * F if {p.group for p in job.probes} & {"rcv", "rcv_ols"} else 0
    return int(cal.baseline_bytes + data + standardize + max(solver, rcv))


def estimate_block(job, splits: SplitSizes, n_classes: int, config, cal: Calibration) -> BlockEstimate:
    """Seconds and peak bytes of one block's task under ``config`` (grids, tol, max_iter, budget)."""
    if job.kind == "outputs":
        return BlockEstimate(job.name, TASK_OVERHEAD_S, cal.baseline_bytes, False, {"outputs": TASK_OVERHEAD_S})
    tol = config.tol if config.tol is not None else 1e-6
    max_iter = config.max_iter if config.max_iter is not None else 500
    streamed = job.read_bytes > config.max_block_bytes
    parts = {
        "read": job.read_bytes * (2 if streamed else 1) / READ_BYTES_PER_S,
        "classifier": _classifier_seconds(job, splits, n_classes, cal, len(config.Cs), tol, max_iter),
        "rcv": _rcv_seconds(job, splits, cal),
        "overhead": TASK_OVERHEAD_S,
    }
    mem = _memory_bytes(job, splits, n_classes, cal, len(config.Cs), streamed, config.max_block_bytes)
    return BlockEstimate(job.name, sum(parts.values()), mem, streamed, parts)


def workers_for(estimates: Iterable[BlockEstimate], deadline_s: float) -> tuple[int | None, str]:
    """Workers needed to finish by ``deadline_s`` (largest blocks first), or None and why not."""
    secs = sorted((e.seconds for e in estimates), reverse=True)
    if not secs:
        return 0, "nothing to fit"
    if secs[0] > deadline_s:
        return None, (f"the longest block alone takes ~{format_seconds(secs[0])}, more than the deadline: a block "
                      "runs on one worker, so no number of workers helps (use a faster machine, fewer Cs, or "
                      "a reduction to fewer features)")
    w = max(1, math.ceil(sum(secs) / deadline_s))
    while _makespan(secs, w) > deadline_s:  # packing: whole blocks, largest first
        w += 1
    return w, ""


def _makespan(secs: list[float], workers: int) -> float:
    loads = [0.0] * workers
    for s in secs:
        i = loads.index(min(loads))
        loads[i] += s
    return max(loads)


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?"
                       r"\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(text: str, where: str = "--deadline") -> float:
    """Seconds of ``'8h'``, ``'90m'``, ``'1h30m'``, ``'2d'``, ``'45s'`` (or a bare number of seconds)."""
    t = str(text).strip().lower()
    with contextlib.suppress(ValueError):
        value = float(t)
        if value > 0 and math.isfinite(value):
            return value
    m = _DURATION.match(t)
    if not t or m is None or not any(m.groups()):
        raise ConfigError("not a duration", where=where, expected="e.g. 8h, 90m, 1h30m, 2d or seconds",
                          got=repr(text), fix=f"{where} 8h")
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    total = ((d * 24 + h) * 60 + mi) * 60 + s
    if total <= 0:
        raise ConfigError("the deadline must be positive", where=where, got=repr(text), fix=f"{where} 8h")
    return total


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _load() -> tuple[float, int]:
    """1-minute load average and cores: how much slower than the calibrated rates a run may be now."""
    cores = max(1, os.cpu_count() or 1)
    try:
        return os.getloadavg()[0], cores
    except OSError:  # pragma: no cover - not available on this platform
        return 0.0, cores


def split_sizes(store) -> SplitSizes:
    """Train / valid / test sample counts of a store."""
    names = store.dataset.split_names
    counts = np.bincount(store.splits(), minlength=len(names))
    get = {s: int(counts[names.index(s)]) if s in names else 0 for s in ("train", "valid", "test")}
    return SplitSizes(**get)


def estimate_plan(plan, splits: SplitSizes, config, cal: Calibration) -> list[BlockEstimate]:
    return [estimate_block(j, splits, plan.n_classes, config, cal) for j in plan.jobs if j.key not in plan.unreadable]


def format_estimate(estimates: list[BlockEstimate], cal: Calibration, source: str, *, workers: int,
                    deadline_s: float | None = None, max_lines: int = 40) -> str:
    """The dry run's cost lines: per block, in total, on ``workers`` workers, and for a deadline."""
    total = sum(e.seconds for e in estimates)
    peak = max((e.memory_bytes for e in estimates), default=0)
    lines = [f"estimate: this machine, {cal.threads} BLAS thread(s) per worker ({source}); rates of a quiet machine, "
             "so a busy one is slower by its load"]
    lines.append("  per block (largest first):")
    for e in sorted(estimates, key=lambda e: -e.seconds)[:max_lines]:
        lines.append(f"    {e.name:<48} ~{format_seconds(e.seconds):>9}  peak ~{format_bytes(e.memory_bytes)}"
                     + ("  (streamed)" if e.streamed else ""))
    if len(estimates) > max_lines:
        lines.append(f"    ... {len(estimates) - max_lines} more")
    w = max(1, workers)
    lines.append(f"  total: ~{format_seconds(total)} of work; ~{format_seconds(_makespan(sorted((e.seconds for e in estimates), reverse=True), w) if estimates else 0.0)} "
                 f"on {w} worker(s); peak memory per worker ~{format_bytes(peak)}")
    load, cores = _load()
    if load > 1.5 * cores:
        lines.append(f"  the machine is busy now (load average {load:.1f} on {cores} cores): at this load expect up "
                     f"to ~{load / cores:.1f}× these times")
    if deadline_s is not None:
        n, why = workers_for(estimates, deadline_s)
        if n is None:
            lines.append(f"  deadline {format_seconds(deadline_s)}: not reachable: {why}")
        else:
            lines.append(f"  deadline {format_seconds(deadline_s)}: {n} worker(s) "
                         f"(each ~{format_bytes(peak)}; {cal.threads} core(s) each)")
    return "\n".join(lines)
