"""One Dask task: read one block once, fit every probe of it, return result rows.

A task opens the store read-only *in the worker* (only the path travels), reads the
block as float32 and hands the same in-memory splits to the batched solvers: all
classifier probes in one :func:`~analyze.solvers.logistic.fit_logistic_block` call (the
true labels along the C grid; the control labels at the true labels' C; a corrupted
run's training labels at the C chosen on an inner split of train, see
:func:`fit_classifier_group`), all RCVs (every concept,
every alpha) in one :func:`~analyze.solvers.ridge.fit_rcv_block` factorization (the
OLS RCVs, ``rcv_ols``, in one :func:`~analyze.solvers.ridge.fit_ols_block` SVD), the MDL
probes (when asked for) from the same train rows (:mod:`analyze.mdl`). The
per-sample data every block shares (labels, splits, control labels, concept targets)
is built once by the driver (:func:`build_sample_data`) and scattered to the workers.

Memory. A block of ``n × F`` features whose float32 size ``4nF`` is within
``max_block_bytes`` is read whole: peak about ``4nF`` (the block) + ``4nF`` (its
train/valid/test copies) + the solvers' float64 working copies of the splits (ridge:
``8nF`` plus the ``F×F`` Gram; logistic: ``12·n_train·F`` standardized copies). A
larger block is *streamed* in row chunks of at most ``max_block_bytes / 4`` bytes:

- the RCVs from :class:`~analyze.solvers.standardize.GramAccumulator` statistics of
  each split (``O(F² + F·T)`` float64: the rows are never held);
- the classifier probes from the train and valid rows only, gathered in float32
  (``4·(n_train + n_valid)·F`` plus the solver's copies of them), then the test split
  is scored in a second pass from the fitted coefficients (its logits, ``n_test × K``,
  are all that is kept).

So the streamed peak is ``O(F²)`` for RCVs and ``≈ 16·(n_train + n_valid)·F`` bytes for
the classifier; a block whose train split alone does not fit in memory needs a
subsampled store (``max_samples``) or a reduction to fewer features.

Failures. A data problem (:class:`~probestore.errors.ProbestoreError`: NaN/Inf
features, a single class, a constant or NaN target, an empty split) becomes rows with
``status="failed"`` and the reason, per probe group or per probe, and the rest of the
block goes on. Anything else (an I/O error, a bug) propagates: the driver counts the
block as not done and a rerun retries it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from analyze.config import AnalysisConfig
from analyze.controls import control_labels
from analyze.jobs import BlockJob, Plan, ProbeSpec
from analyze.outputs import mapped_output_metrics, model_output_metrics, output_head
from analyze.results import make_row
from probestore.errors import ProbestoreError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SampleData:
    """Per-sample arrays shared by every block of an analysis (small; sent once).

    Attributes
    ----------
    fingerprint : str
        The store's dataset fingerprint: a worker refuses a store that changed since.
    split_index : dict split -> int ndarray
        Rows of ``train``, ``valid``, ``test`` (possibly empty), in store order.
    labels, control : ndarray (n,)
        True labels and the control task's labels, a seeded function of the store's
        sample types (:mod:`analyze.controls`); None without control probes or types.
    control_error : str
        Why there are no control labels although control probes are planned (the
        control rows fail with it); "" otherwise.
    train_labels, corrupted : dict run -> ndarray (n,)
        Training labels and corrupted mask of each planned run.
    targets : tuple of str
        Concept targets (columns of ``target_values``).
    target_values : ndarray (n, T) float64
    """

    #: Sent to each Dask worker once (:class:`analyze.cluster.Broadcast`), not with every block.
    broadcast_to_workers: ClassVar[bool] = True

    fingerprint: str
    n_samples: int
    n_classes: int
    split_index: dict[str, np.ndarray]
    labels: np.ndarray
    control: np.ndarray | None
    train_labels: dict[str, np.ndarray]
    corrupted: dict[str, np.ndarray]
    targets: tuple[str, ...]
    target_values: np.ndarray
    control_error: str = ""
    control_note: str = ""
    #: Sequence id of each row of a token store (SCHEMA.md §12), None when rows are independent:
    #: whatever partitions rows inside a split (MDL blocks, inner selection splits) keeps sequences whole.
    groups: np.ndarray | None = None


def build_sample_data(store, plan: Plan, config: AnalysisConfig) -> SampleData:
    """Read the per-sample arrays the planned blocks need (driver side)."""
    names = store.dataset.split_names
    codes = store.splits()
    split_index = {s: np.flatnonzero(codes == names.index(s)) if s in names else np.zeros(0, np.intp)
                   for s in SPLITS}
    labels = store.labels()
    n_classes = len(store.dataset.class_names)
    runs = sorted({j.run for j in plan.jobs})
    targets = plan.targets
    values = np.empty((store.n_samples, len(targets)), dtype=np.float64)
    for t, name in enumerate(targets):
        values[:, t] = store.read_target(name)
    control, control_error, control_note = None, "", ""
    if "control" in config.probes:
        try:
            types = store.sample_types()
            control = control_labels(types, labels, n_classes, config.control_seed)
            control_note = (f"control labels: a seeded function (control_seed {config.control_seed}) of "
                            f"{np.unique(types).size} sample types")
        except ProbestoreError as exc:
            control_error = (f"no control task: {exc}; then rerun the analysis with --retry-failed "
                             "(or leave the control probe out: --probes classifier,rcv,outputs)")
    return SampleData(
        fingerprint=store.fingerprint,
        n_samples=store.n_samples,
        n_classes=n_classes,
        split_index=split_index,
        labels=labels,
        control=control,
        train_labels={r: store.train_labels(r) for r in runs},
        corrupted={r: store.corrupted_mask(r) for r in runs},
        targets=targets,
        target_values=values,
        control_error=control_error,
        control_note=control_note,
        groups=store.sequence() if store.has_sequences() else None,
    )


@dataclass
class BlockOutcome:
    """What a task sends back: rows for the table, optionally weights."""

    key: tuple[str, str, str]
    rows: list[dict[str, Any]]
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    weight_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    streamed: bool = False


# --------------------------------------------------------------------------- rows


def _base(job: BlockJob, spec: ProbeSpec, sample: SampleData) -> dict[str, Any]:
    return {
        "probe_id": job.probe_id(spec),
        "run": job.run,
        "corruption_fraction": job.corruption_fraction,
        "corruption_mode": job.corruption_mode,
        "checkpoint": job.checkpoint,
        "epoch": job.epoch,
        "layer": job.layer,
        "n_features": job.n_features,
        "reduction": job.reduction,
        "target": spec.target,
        "probe": spec.probe,
        "n_train": int(sample.split_index["train"].size),
        "n_valid": int(sample.split_index["valid"].size),
        "n_test": int(sample.split_index["test"].size),
    }


def failed_rows(job, specs, sample, message: str) -> list[dict[str, Any]]:
    """One ``failed`` row per probe spec, saying why (the engine records unreadable blocks with it too)."""
    return [make_row(**_base(job, s, sample), status="failed", message=message) for s in specs]


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ProbestoreError) else f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- classifier group


def _label_sets(job: BlockJob, specs, sample: SampleData, idx) -> dict[str, tuple]:
    sources = {
        "true_labels": sample.labels,
        "train_labels": sample.train_labels.get(job.run),
        "control_labels": sample.control,
    }
    out = {}
    for s in specs:
        y = sources[s.target]
        # The plan only asks for control labels when they were drawn, and only for planned runs.
        assert y is not None, f"no {s.target} for run {job.run}"
        out[s.target] = tuple(y[idx[split]] if idx[split].size else None for split in SPLITS)
    return out


def _status(res, tol_default: str) -> tuple[str, str]:
    if res.status == "failed":
        return "failed", res.message
    gmax = res.path["grad_max"][res.C_index] if "grad_max" in res.path else float("nan")
    if res.status == "max_iter":
        return "not_converged", (f"no convergence in {res.n_iter} iterations at C={res.C:g} "
                                 f"(max |gradient| {gmax:.2e}); raise max_iter")
    if res.status == "stalled":
        return "ok", (f"stopped at the float32 rounding floor after {res.n_iter} iterations "
                      f"(max |gradient| {gmax:.2e}, tol {tol_default})")
    return "ok", res.message or ""


#: Held-out fraction and seed of the inner split of train that selects C for the probe on
#: a corrupted run's training labels (docs/science.md §3).
INNER_FRACTION = 0.2
INNER_SEED = 0


def grid_edge(index: int, size: int) -> str:
    """``"low"`` / ``"high"`` when the selected value is the grid's smallest / largest, else ``""``.

    Why: a validation curve that is still falling at the end of the grid has its optimum
    outside it; the number reported is then the best *of the grid*, not the probe's.
    A one-value grid was not a selection, so it has no edge.
    """
    if size <= 1 or index < 0:
        return ""
    return "low" if index == 0 else ("high" if index == size - 1 else "")


def fit_classifier_group(job, specs, sample, X: Mapping[str, np.ndarray | None], config: AnalysisConfig,
                         *, test_scorer=None, want_weights=False):
    """Classifier + control probes of one block in one batched solve.

    ``X`` maps split -> float32 rows. ``test`` may be None (the streaming path): then
    ``test_scorer({name: (coef, intercept)}) -> {name: test logits}`` scores the test
    split of every fitted label set in one pass over the block.

    How each label set gets its C (docs/science.md §1-3):

    - ``true_labels``: the grid, selected by validation cross-entropy;
    - ``control_labels``: the true-label probe's C, no selection of its own (Hewitt &
      Liang keep the task probe's settings), fitted only at that C;
    - ``train_labels`` (corrupted runs): selected by cross-entropy on a seeded stratified
      inner split of train that carries the *training* labels, then refitted on all of
      train at that C (the valid split carries true labels, which a memorizing run's
      training labels are not).
    """
    from analyze.solvers.logistic import fit_logistic_block, select_C_inner

    idx = sample.split_index
    K = sample.n_classes
    opts = config.solver_options()
    rows: list[dict[str, Any]] = []
    if sample.control is None:  # no sample types: the control rows fail, the rest goes on
        rows += failed_rows(job, [s for s in specs if s.target == "control_labels"], sample, sample.control_error)
        specs = [s for s in specs if s.target != "control_labels"]
    if not specs:
        return rows, {}, {}
    label_sets = _label_sets(job, specs, sample, idx)
    if "control_labels" in label_sets and "true_labels" not in label_sets:  # its C comes from there
        label_sets["true_labels"] = tuple(sample.labels[idx[s]] if idx[s].size else None for s in SPLITS)
    fixed: dict[str, str | float] = {}
    notes = {"true_labels": "", "control_labels": f"fitted at the true-label probe's C; {sample.control_note}"}
    edges: dict[str, str] = {}
    t0 = time.perf_counter()
    try:
        if X["train"] is None or X["valid"] is None:
            missing = [s for s in ("train", "valid") if X[s] is None]
            raise _empty_split(missing)
        if "control_labels" in label_sets:
            fixed["control_labels"] = "true_labels"
        if "train_labels" in label_sets:
            try:
                groups = None if sample.groups is None else sample.groups[idx["train"]]
                C_tr, i_tr, _ = select_C_inner(X["train"], label_sets["train_labels"][0], config.Cs, n_classes=K,
                                               fraction=INNER_FRACTION, seed=INNER_SEED, groups=groups, **opts)
            except ProbestoreError as exc:
                spec = next(s for s in specs if s.target == "train_labels")
                rows += failed_rows(job, [spec], sample, _error_text(exc))
                specs = [s for s in specs if s is not spec]
                del label_sets["train_labels"]
            else:
                fixed["train_labels"] = C_tr
                edges["train_labels"] = grid_edge(i_tr, len(config.Cs))
                held = "stratified" if groups is None else "whole-sequence"
                notes["train_labels"] = (f"C selected by cross-entropy on a {held} {INNER_FRACTION:.0%} inner "
                                         f"split of train with the training labels (seed {INNER_SEED}), then refitted "
                                         "on all of train")
        fit_sets = label_sets
        if X["test"] is None:  # no test rows in memory: score the test split afterwards
            fit_sets = {k: (v[0], v[1], None) for k, v in label_sets.items()}
        results = fit_logistic_block(X["train"], X["valid"], X["test"], fit_sets, config.Cs,
                                     n_classes=K, fixed_C=fixed, **opts)
    except ProbestoreError as exc:
        return rows + failed_rows(job, specs, sample, _error_text(exc)), {}, {}
    seconds = (time.perf_counter() - t0) / max(1, len(specs))
    test_metrics = {}
    if X["test"] is None and test_scorer is not None and idx["test"].size:
        from analyze.outputs import split_scores

        fitted = {k: (r.coef, r.intercept) for k, r in results.items() if r.status != "failed"}
        for name, logits in test_scorer(fitted).items():
            test_metrics[name] = split_scores(logits, label_sets[name][2], K)

    tol = str(opts.get("tol", "default"))
    weights, attrs = {}, {}
    control = results.get("control_labels")
    for spec in specs:
        res = results[spec.target]
        status, message = _status(res, tol)
        row = _base(job, spec, sample)
        if status == "failed":
            rows.append(make_row(**row, status="failed", message=message, fit_seconds=seconds))
            continue
        message = "; ".join(m for m in (message, notes.get(spec.target, "")) if m)
        err = {s: getattr(res, f"error_{s}") for s in SPLITS}
        top5 = {s: getattr(res, f"top5_error_{s}") for s in SPLITS}
        ce = {s: getattr(res, f"ce_{s}") for s in SPLITS}
        if spec.target in test_metrics:
            tm = test_metrics[spec.target]
            err["test"], top5["test"], ce["test"] = tm["error"], tm["top5_error"], tm["loss"]
        edge = edges.get(spec.target, grid_edge(res.C_index, res.Cs.size) if spec.target not in fixed else "")
        row.update(
            hyperparameter="C", hyperparameter_value=float(res.C), grid_edge=edge,
            **{f"{s}_error": err[s] for s in SPLITS},
            **{f"{s}_top5_error": top5[s] for s in SPLITS},
            **{f"{s}_loss": ce[s] for s in SPLITS},
        )
        if spec.target == "true_labels" and control is not None and control.status != "failed":
            c_err = {s: getattr(control, f"error_{s}") for s in SPLITS}
            if "control_labels" in test_metrics:
                c_err["test"] = test_metrics["control_labels"]["error"]
            for s in SPLITS:  # accuracy(true) - accuracy(control), at the same C
                row[f"selectivity_{s}"] = float(c_err[s] - err[s])
        if spec.probe == "classifier" and job.has_corrupted:
            row.update(_clean_corrupted(X["train"], res, label_sets[spec.target][0],
                                        sample.corrupted[job.run][idx["train"]]))
        rows.append(make_row(**row, status=status, message=message, fit_seconds=seconds))
        if want_weights:
            pid = row["probe_id"]
            weights[pid] = {"coef": np.asarray(res.coef, dtype=np.float32),
                            "intercept": np.asarray(res.intercept, dtype=np.float64)}
            attrs[pid] = {"C": float(res.C), "n_classes": K, "space": "raw features"}
    return rows, weights, attrs


def _clean_corrupted(X_train, res, y_train, corrupted_train) -> dict[str, float]:
    """Train error of the probe on the samples the run left clean / corrupted.

    Predictions from the raw-feature coefficients in float64, 8192 rows at a time (so
    the extra memory stays one chunk, not a float64 copy of the train split).
    """
    coef = np.asarray(res.coef, dtype=np.float64).T
    wrong = np.empty(len(y_train), dtype=bool)
    for start in range(0, len(y_train), 8192):
        stop = start + 8192
        logits = np.asarray(X_train[start:stop], dtype=np.float64) @ coef + res.intercept
        wrong[start:stop] = np.argmax(logits, axis=1) != y_train[start:stop]
    out = {"clean_error": float("nan"), "corrupted_error": float("nan")}
    if (~corrupted_train).any():
        out["clean_error"] = float(wrong[~corrupted_train].mean())
    if corrupted_train.any():
        out["corrupted_error"] = float(wrong[corrupted_train].mean())
    return out


def _empty_split(missing) -> ProbestoreError:
    from probestore.errors import DataError

    return DataError(f"the {' and '.join(missing)} split{'s are' if len(missing) > 1 else ' is'} empty",
                     where="store splits", expected="at least one sample in train and in valid",
                     fix="re-create the store with non-empty train and valid splits")


# --------------------------------------------------------------------------- rcv group


def _rcv_rows(job, specs, sample, res, seconds, want_weights):
    rows, weights, attrs = [], {}, {}
    col = {s.target: i for i, s in enumerate(specs)}
    for spec in specs:
        t = col[spec.target]
        row = _base(job, spec, sample)
        if res.status[t] != "ok":
            rows.append(make_row(**row, status="failed", message=res.message[t], fit_seconds=seconds))
            continue
        ols = spec.probe == "rcv_ols"  # no penalty: hyperparameter "none", value NaN
        row.update(
            hyperparameter="none" if ols else "alpha", hyperparameter_value=None if ols else float(res.alpha[t]),
            grid_edge="" if ols else grid_edge(int(res.alpha_index[t]), int(np.asarray(res.alphas).size)),
            **{f"{s}_r2": float(getattr(res, f"r2_{s}")[t]) for s in SPLITS},
            **{f"{s}_mspe": float(getattr(res, f"mspe_{s}")[t]) for s in SPLITS},
        )
        rows.append(make_row(**row, status="ok", message=res.message[t] or "", fit_seconds=seconds))
        if want_weights:
            pid = row["probe_id"]
            weights[pid] = {"coef": res.coef[t].astype(np.float32), "intercept": np.asarray(res.intercept[t]),
                            "direction": res.direction[t].astype(np.float32)}
            attrs[pid] = {"alpha": 0.0 if ols else float(res.alpha[t]), "space": "raw features",
                          "fit": "ols" if ols else "ridge"}
    return rows, weights, attrs


def _target_columns(specs, sample: SampleData) -> np.ndarray:
    pos = {n: i for i, n in enumerate(sample.targets)}
    return np.array([pos[s.target] for s in specs], dtype=np.intp)


def fit_rcv_group(job, specs, sample, X: Mapping[str, np.ndarray | None], config, *, want_weights=False):
    """Every RCV of one block from one factorization (in-memory splits).

    Ridge for probe ``rcv``; ordinary least squares (one SVD) for ``rcv_ols``.
    """
    from analyze.solvers.ridge import fit_ols_block, fit_rcv_block

    idx = sample.split_index
    Y = sample.target_values[:, _target_columns(specs, sample)]
    t0 = time.perf_counter()
    try:
        if X["train"] is None or X["valid"] is None:
            raise _empty_split([s for s in ("train", "valid") if X[s] is None])
        args = (X["train"], Y[idx["train"]], X["valid"], Y[idx["valid"]],
                X["test"], None if X["test"] is None else Y[idx["test"]])
        res = fit_ols_block(*args) if specs[0].probe == "rcv_ols" else fit_rcv_block(*args, config.alphas)
    except ProbestoreError as exc:
        return failed_rows(job, specs, sample, _error_text(exc)), {}, {}
    return _rcv_rows(job, specs, sample, res, (time.perf_counter() - t0) / max(1, len(specs)), want_weights)


# --------------------------------------------------------------------------- mdl group


def fit_mdl_group(job, specs, sample, X_train: np.ndarray | None, config) -> list[dict[str, Any]]:
    """Online-code MDL of the true (and training) labels of one block, sharing every solve.

    The probe's ``C`` is ``config.mdl_C`` (fixed), recorded as the row's hyperparameter.
    """
    from analyze.mdl import online_codelength

    label_sets = _label_sets(job, specs, sample, sample.split_index)
    t0 = time.perf_counter()
    try:
        if X_train is None:
            raise _empty_split(["train"])
        groups = None if sample.groups is None else sample.groups[sample.split_index["train"]]
        res = online_codelength(X_train, {k: v[0] for k, v in label_sets.items()}, n_classes=sample.n_classes,
                                C=config.mdl_C, seed=config.mdl_seed, groups=groups, **config.solver_options())
    except ProbestoreError as exc:
        return failed_rows(job, specs, sample, _error_text(exc))
    seconds = (time.perf_counter() - t0) / max(1, len(specs))
    rows = []
    for spec in specs:
        r = res[spec.target]
        rows.append(make_row(**_base(job, spec, sample), hyperparameter="C", hyperparameter_value=float(config.mdl_C),
                             mdl_codelength_bits=r.codelength_bits, mdl_uniform_bits=r.uniform_bits,
                             mdl_compression=r.compression, status="ok",
                             message=f"online code over {r.block_ends.size} blocks", fit_seconds=seconds))
    return rows


# --------------------------------------------------------------------------- reading


def _split_rows(X: np.ndarray, sample: SampleData) -> dict[str, np.ndarray | None]:
    return {s: (X[sample.split_index[s]] if sample.split_index[s].size else None) for s in SPLITS}


def _row_step(job: BlockJob, budget: int) -> int:
    """Rows per streamed read: whole store chunks, at most ``budget / 4`` bytes."""
    per_row = max(1, job.n_features * 4)
    rows = max(1, (budget // 4) // per_row)
    if rows >= job.chunk_rows:
        rows -= rows % job.chunk_rows
    return max(1, min(rows, job.n_samples))


def _stats_columns(s, cols: np.ndarray):
    """The statistics of a subset of the targets (same rows and features)."""
    from analyze.solvers.standardize import SplitStats

    return SplitStats(s.n, s.mean_x, s.mean_y[cols], s.cxx, s.cxy[:, cols], s.cyy[cols], s.y_nonfinite[cols])


def _fit_streamed(store, job, specs_by_group, sample, config, want_weights):
    """Every probe of a block too large to load: one pass over its row chunks, then the fits.

    The pass accumulates the RCVs' Gram statistics and gathers the classifiers' train and
    valid rows (which fit in memory when the whole block does not); the classifiers' test
    logits take one more pass. Rows come out in the in-memory order: RCVs, MDL, classifiers.
    """
    step = _row_step(job, config.max_block_bytes)
    split_of = _split_codes(job.n_samples, sample)
    # Ridge and OLS RCVs share one set of Gram statistics (over the union of their targets).
    reg_groups = {g: specs_by_group[g] for g in ("rcv", "rcv_ols") if specs_by_group.get(g)}
    clf_specs = specs_by_group.get("classifier", [])
    mdl_specs = specs_by_group.get("mdl", [])
    acc, gathered, rcv_error, t_rcv = _stream_block(store, job, step, split_of, sample, reg_groups,
                                                    gather=bool(clf_specs or mdl_specs))
    rows, weights, attrs = [], {}, {}
    if reg_groups:
        r, w, a = _fit_streamed_rcvs(job, reg_groups, sample, acc, rcv_error, t_rcv, config, want_weights)
        rows += r
        weights.update(w)
        attrs.update(a)
    if mdl_specs:
        rows += fit_mdl_group(job, mdl_specs, sample, gathered["train"] if gathered["train"].size else None, config)
    if clf_specs:
        X = {"train": gathered["train"] if gathered["train"].size else None,
             "valid": gathered["valid"] if gathered["valid"].size else None, "test": None}
        scorer = _streamed_test_scorer(store, job, step, split_of, sample.split_index["test"])
        r, w, a = fit_classifier_group(job, clf_specs, sample, X, config, test_scorer=scorer,
                                       want_weights=want_weights)
        rows += r
        weights.update(w)
        attrs.update(a)
    return rows, weights, attrs


def _split_codes(n: int, sample) -> np.ndarray:
    """Each row's split as its index in ``SPLITS`` (-1: in no split)."""
    split_of = np.full(n, -1, dtype=np.int8)
    for code, s in enumerate(SPLITS):
        split_of[sample.split_index[s]] = code
    return split_of


def _stream_block(store, job, step: int, split_of: np.ndarray, sample, reg_groups: dict, *, gather: bool):
    """One pass over the block's row chunks: RCV statistics per split, train/valid rows gathered.

    Returns ``(accumulators or None, gathered train/valid rows ({} unless ``gather``), the first error of the RCV
    statistics or None, seconds spent on them)``. An error in the statistics (e.g.
    non-finite targets) stops only their accumulation: the classifiers still get rows.
    """
    from analyze.solvers.standardize import GramAccumulator

    n, F = job.n_samples, job.n_features
    rcv_specs = [s for specs in reg_groups.values() for s in specs]
    Y = sample.target_values[:, _target_columns(rcv_specs, sample)] if rcv_specs else None
    acc = {s: GramAccumulator(F, len(rcv_specs)) for s in SPLITS} if rcv_specs else None
    gathered: dict[str, np.ndarray] = \
        {s: np.empty((sample.split_index[s].size, F), dtype=np.float32) for s in ("train", "valid")} if gather else {}
    filled = {"train": 0, "valid": 0}
    rcv_error = None
    t_rcv = 0.0
    for start in range(0, n, step):
        stop = min(n, start + step)
        chunk = np.asarray(store.read_layer(job.run, job.checkpoint, job.layer, rows=slice(start, stop),
                                            check_chunks=start == 0), dtype=np.float32)
        codes = split_of[start:stop]
        for c, s in enumerate(SPLITS):
            sel = codes == c
            if not sel.any():
                continue
            if acc is not None and Y is not None and rcv_error is None:  # both exist iff RCVs are planned
                t0 = time.perf_counter()
                try:
                    acc[s].update(chunk[sel], Y[start:stop][sel], where=f"{job.name} {s} rows {start}:{stop}")
                except ProbestoreError as exc:
                    rcv_error = exc
                t_rcv += time.perf_counter() - t0
            if s in gathered:
                k = int(sel.sum())
                gathered[s][filled[s]:filled[s] + k] = chunk[sel]
                filled[s] += k
    return acc, gathered, rcv_error, t_rcv


def _fit_streamed_rcvs(job, reg_groups: dict, sample, acc, rcv_error, t_rcv: float, config, want_weights):
    """Ridge and OLS RCV rows from the streamed statistics (each group fails on its own)."""
    from analyze.solvers.ridge import fit_ols_stats, fit_ridge_path

    rcv_specs = [s for specs in reg_groups.values() for s in specs]
    if rcv_error is not None:
        return failed_rows(job, rcv_specs, sample, _error_text(rcv_error)), {}, {}
    rows, weights, attrs = [], {}, {}
    st = {s: acc[s].stats() for s in SPLITS}
    lo = 0
    for group, specs in reg_groups.items():
        cols = np.arange(lo, lo + len(specs))
        lo += len(specs)
        t0 = time.perf_counter()
        try:
            if st["train"].n == 0 or st["valid"].n == 0:
                raise _empty_split([s for s in ("train", "valid") if st[s].n == 0])
            sub = {s: _stats_columns(st[s], cols) for s in SPLITS}
            test = sub["test"] if sub["test"].n else None
            res = fit_ols_stats(sub["train"], sub["valid"], test) if group == "rcv_ols" else \
                fit_ridge_path(sub["train"], sub["valid"], config.alphas, test)
        except ProbestoreError as exc:
            rows += failed_rows(job, specs, sample, _error_text(exc))
        else:
            seconds = (t_rcv * len(specs) / len(rcv_specs) + time.perf_counter() - t0) / len(specs)
            r, w, a = _rcv_rows(job, specs, sample, res, seconds, want_weights)
            rows += r
            weights.update(w)
            attrs.update(a)
    return rows, weights, attrs


def _streamed_test_scorer(store, job, step: int, split_of: np.ndarray, test_idx: np.ndarray):
    """A function giving the test logits of fitted classifiers, in one more pass over the block."""

    def test_scorer(fitted):
        """Test logits of every fitted label set, in one more pass over the block."""
        names = list(fitted)
        if not names:
            return {}
        K = fitted[names[0]][0].shape[0]
        W = np.concatenate([np.asarray(fitted[k][0], dtype=np.float32).T for k in names], axis=1)
        b = np.concatenate([np.asarray(fitted[k][1], dtype=np.float64) for k in names])
        out = np.empty((test_idx.size, W.shape[1]))
        filled_t = 0
        for start in range(0, job.n_samples, step):
            stop = min(job.n_samples, start + step)
            sel = split_of[start:stop] == 2
            if not sel.any():
                continue
            chunk = np.asarray(store.read_layer(job.run, job.checkpoint, job.layer, rows=slice(start, stop),
                                                check_chunks=False), dtype=np.float32)
            k = int(sel.sum())
            out[filled_t:filled_t + k] = (chunk[sel] @ W).astype(np.float64) + b
            filled_t += k
        return {name: out[:, i * K:(i + 1) * K] for i, name in enumerate(names)}

    return test_scorer


# --------------------------------------------------------------------------- the task


@contextlib.contextmanager
def _blas_threads(n: int | None):
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n)):
        yield


def run_block(store_path: str, job: BlockJob, sample: SampleData, config: AnalysisConfig,
              want_weights: bool = False) -> BlockOutcome:
    """Fit every probe of one block (the Dask task; also called in-process).

    Parameters
    ----------
    store_path : str
        Opened read-only here: on a cluster every worker must see the same path.
    job : BlockJob
    sample : SampleData
    config : AnalysisConfig
        ``threads_per_worker`` (when set) caps the BLAS threads of this task.
    want_weights : bool
        Return coefficients / RCV directions too.

    Returns
    -------
    BlockOutcome
    """
    from storage_schema.store import open_store

    t0 = time.perf_counter()
    with _blas_threads(config.threads_per_worker), open_store(store_path, "r") as store:
        store.check_fingerprint(sample.fingerprint, where=f"{store_path} (changed during the analysis?)")
        if job.kind == "outputs":
            outputs = _outputs_rows(store, job, sample)
            return BlockOutcome(job.key, outputs, seconds=time.perf_counter() - t0)
        groups: dict[str, list[ProbeSpec]] = {}
        for spec in job.probes:
            groups.setdefault(spec.group, []).append(spec)
        streamed = job.read_bytes > config.max_block_bytes
        rows: list[dict[str, Any]] = []
        weights: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        if streamed:
            r, w, a = _fit_streamed(store, job, groups, sample, config, want_weights)
            rows, weights, attrs = r, w, a
        else:
            X = np.asarray(store.read_layer(job.run, job.checkpoint, job.layer), dtype=np.float32)
            Xs = _split_rows(X, sample)
            del X
            if "classifier" in groups:
                r, w, a = fit_classifier_group(job, groups["classifier"], sample, Xs, config,
                                               want_weights=want_weights)
                rows += r
                weights.update(w)
                attrs.update(a)
            for group in ("rcv", "rcv_ols"):
                if group in groups:
                    r, w, a = fit_rcv_group(job, groups[group], sample, Xs, config, want_weights=want_weights)
                    rows += r
                    weights.update(w)
                    attrs.update(a)
            if "mdl" in groups:
                rows += fit_mdl_group(job, groups["mdl"], sample, Xs["train"], config)
    return BlockOutcome(job.key, rows, weights, attrs, time.perf_counter() - t0, streamed)


def _outputs_rows(store, job: BlockJob, sample: SampleData) -> list[dict[str, Any]]:
    """The model-output rows of one checkpoint: as always for a head of the dataset's
    classes, on the mapped classes with a ``class_map``, ``skipped`` otherwise
    (:func:`analyze.outputs.output_head`)."""
    t0 = time.perf_counter()
    labelings = {"true_labels": sample.labels, "train_labels": sample.train_labels[job.run]}
    specs = list(job.probes)
    try:
        head = output_head(store.run_info(job.run).model, store.dataset.class_names)
        if head.kind == "skipped":
            return [make_row(**_base(job, s, sample), status="skipped", message=head.message) for s in specs]
        logits = np.asarray(store.read_logits(job.run, job.checkpoint), dtype=np.float64)
        wanted = {s.target: labelings[s.target] for s in specs}
        if head.kind == "mapped":
            assert head.columns is not None
            metrics = mapped_output_metrics(logits, wanted, sample.split_index, sample.corrupted[job.run],
                                            head.columns)
        else:
            metrics = model_output_metrics(logits, wanted, sample.split_index, sample.corrupted[job.run],
                                           sample.n_classes)
    except ProbestoreError as exc:
        return failed_rows(job, specs, sample, _error_text(exc))
    seconds = (time.perf_counter() - t0) / len(specs)
    return [make_row(**{**_base(job, s, sample), **metrics[s.target]}, status="ok", message=head.message,
                     fit_seconds=seconds) for s in specs]
