"""What an analysis will do: blocks of the store and the probes fitted on each.

The unit of work is a *block*, one (run, checkpoint, layer) array: it is read once and
every probe of that layer is fitted from the copy in memory (Alain & Bengio's probes
are cheap next to reading features). Per feature block:

- ``classifier`` / ``true_labels``: the classifier probe on the dataset's labels;
- ``classifier`` / ``train_labels``: on the labels the model was trained on, only when
  the run has corrupted samples (otherwise the two label sets are the same);
- ``control`` / ``control_labels``: the probe on Hewitt & Liang's control task (one
  seeded random label per recurring sample type, at the true-label probe's C), which
  measures what the probe can memorize;
- ``rcv`` / *concept*: one ridge RCV per continuous concept target;
- ``rcv_ols`` / *concept*: the same RCVs by ordinary least squares (Graziani et al.'s
  fit, no penalty), only when asked for;
- ``mdl`` / ``true_labels`` (and ``train_labels`` for corrupted runs): the online-code
  description length of the labels (:mod:`analyze.mdl`), only when asked for.

Per (run, checkpoint), the ``outputs`` block gives ``model_output`` rows (true and, for
corrupted runs, training labels) from the stored logits. Only complete checkpoints and
blocks are planned: an analysis started while extraction is writing sees what is done.

Probes come in *groups* that are fitted together (all classifier probes in one batched
solve, all RCVs in one factorization). When some probes of a block are already in the
results table, a group with at least one missing probe is refitted whole (so that, for
instance, selectivity still has its control probe); rows already present are not
written again. Results are deterministic, so this changes no number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from analyze.block_checks import unreadable_blocks
from analyze.config import AnalysisConfig
from analyze.results import probe_id
from probestore.errors import ConfigError, did_you_mean
from probestore.progress import format_bytes
from probestore.selectors import NoMatchError, check_matched, matches, select
from storage_schema import layout

#: probe kind -> the group it is fitted in
GROUP_OF = {"classifier": "classifier", "control": "classifier", "rcv": "rcv", "rcv_ols": "rcv_ols",
            "model_output": "outputs", "mdl": "mdl"}


@dataclass(frozen=True)
class ProbeSpec:
    """One row of the results table to produce."""

    probe: str  # classifier | control | rcv | rcv_ols | model_output | mdl
    target: str  # true_labels | train_labels | control_labels | concept name

    @property
    def group(self) -> str:
        return GROUP_OF[self.probe]


@dataclass(frozen=True)
class BlockJob:
    """One block to read and the probes to fit on it (picklable: sent to workers)."""

    run: str
    checkpoint: str
    layer: str  # a feature layer, or layout.OUTPUTS
    layer_index: int
    epoch: int
    corruption_fraction: float
    corruption_mode: str
    has_corrupted: bool
    n_features: int
    dtype: str
    chunk_rows: int
    reduction: str
    n_samples: int
    probes: tuple[ProbeSpec, ...]

    @property
    def kind(self) -> str:
        return "outputs" if self.layer == layout.OUTPUTS else "features"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.run, self.checkpoint, self.layer)

    @property
    def name(self) -> str:
        return "/".join(self.key)

    @property
    def read_bytes(self) -> int:
        """Bytes in memory once read as float32."""
        return self.n_samples * self.n_features * 4

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.group for p in self.probes))

    def probe_id(self, spec: ProbeSpec) -> str:
        return probe_id(self.run, self.checkpoint, self.layer, spec.probe, spec.target)

    def probe_ids(self) -> list[str]:
        return [self.probe_id(p) for p in self.probes]


@dataclass
class Plan:
    """Every block of an analysis, in a stable order (run, epoch, checkpoint, layer)."""

    store: str
    dataset: str
    n_samples: int
    n_classes: int
    jobs: list[BlockJob]
    targets: tuple[str, ...] = ()
    stored_bytes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: key -> why a block of a complete checkpoint cannot be read (its probes become failed rows)
    unreadable: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def probe_counts(self) -> Counter:
        return Counter(p.probe for j in self.jobs for p in j.probes)

    @property
    def n_probes(self) -> int:
        return sum(len(j.probes) for j in self.jobs)

    def probe_ids(self) -> list[str]:
        return [pid for j in self.jobs for pid in j.probe_ids()]

    def pending(self, done: Iterable[str]) -> Plan:
        """The plan without probe groups whose every probe is already done."""
        done = set(done)
        jobs = []
        for job in self.jobs:
            keep_groups = {p.group for p in job.probes if job.probe_id(p) not in done}
            probes = tuple(p for p in job.probes if p.group in keep_groups)
            if probes:
                jobs.append(replace(job, probes=probes))
        return replace(self, jobs=jobs)


def reduction_label(reduction: Any) -> str:
    """Short text of a block's reduction: ``"gap"``, ``"random:1000"``, ``"flatten"``, ``"none"``."""
    if not isinstance(reduction, dict) or not reduction.get("kind"):
        return "none"
    kind = str(reduction["kind"])
    raw_params = reduction.get("params")
    params = raw_params if isinstance(raw_params, dict) else {}
    k = params.get("k", reduction.get("k"))
    return f"{kind}:{k}" if k is not None and kind in ("random", "project") else kind


def plan_jobs(store, config: AnalysisConfig) -> Plan:
    """Enumerate the blocks and probes of an analysis of ``store``.

    Parameters
    ----------
    store : ActivationStore
        Opened (read-only is enough).
    config : AnalysisConfig
        Probe kinds and filters.

    Returns
    -------
    Plan

    Raises
    ------
    NoMatchError
        A filter pattern that matches no run / checkpoint / layer / target (a ConfigError).
    ConfigError
        A store without a train and a valid split.
    """
    where = f"analysis of {store.path}"
    _require_train_and_valid(store)
    probes = set(config.probes)
    targets = _selected_targets(store, config.targets, where)
    hint = _inspect_hint(store)
    runs = select(store.runs(), config.runs, what="run", where=f"{where} (--runs)", hint=hint("runs"))
    found = _Found()
    for run in runs:
        info = store.run_info(run)
        has_corrupted = bool(np.any(store.corrupted_mask(run)))
        ckpts = store.checkpoints(run)
        found.ckpt_names_seen.update(c.name for c in ckpts)
        chosen_ckpts = select([c.name for c in ckpts], config.checkpoints, what="checkpoint", where=where,
                              must_match=False)
        for ckpt in ckpts:
            if ckpt.name not in chosen_ckpts:
                continue
            found.ckpt_matched.add(ckpt.name)
            common = {
                "run": run,
                "checkpoint": ckpt.name,
                "epoch": -1 if ckpt.epoch is None else int(ckpt.epoch),
                "corruption_fraction": float(info.corruption_fraction),
                "corruption_mode": str(info.corruption_mode),
                "has_corrupted": has_corrupted,
                "n_samples": store.n_samples,
            }
            _add_checkpoint_jobs(store, common, probes, targets, config.layers, where, found,
                                 head_dropped=info.model.get("head") == "drop")
    check_matched(config.checkpoints, found.ckpt_matched, found.ckpt_names_seen, what="checkpoint",
                  where=f"{where} (--checkpoints)", hint=hint("checkpoints"))
    check_matched(config.layers, found.layer_matched, found.layer_names_seen, what="layer",
                  where=f"{where} (--layers)", hint=hint("layers"))
    jobs = sorted(found.jobs, key=lambda j: (j.run, j.epoch, j.checkpoint, j.layer_index, j.layer))
    return Plan(
        store=str(store.path),
        dataset=store.dataset.name,
        n_samples=store.n_samples,
        n_classes=len(store.dataset.class_names),
        jobs=jobs,
        targets=targets,
        stored_bytes=found.stored,
        unreadable=found.unreadable,
    )


@dataclass
class _Found:
    """What :func:`plan_jobs` collects while it walks the checkpoints.

    The names seen and matched let the filters report a pattern that matched nothing in
    any run (a layer pattern may match in one checkpoint and not another).
    """

    jobs: list[BlockJob] = field(default_factory=list)
    stored: dict[tuple[str, str, str], int] = field(default_factory=dict)
    unreadable: dict[tuple[str, str, str], str] = field(default_factory=dict)
    ckpt_names_seen: set[str] = field(default_factory=set)
    layer_names_seen: set[str] = field(default_factory=set)
    ckpt_matched: set[str] = field(default_factory=set)
    layer_matched: set[str] = field(default_factory=set)


def _require_train_and_valid(store) -> None:
    """ConfigError unless the store has a train and a valid split (probes are fitted and selected on them)."""
    splits = store.dataset.split_names
    for needed in ("train", "valid"):
        if needed not in splits:
            raise ConfigError(
                f"the store has no {needed!r} split",
                where=str(store.path),
                expected="splits train, valid (and test)",
                got=", ".join(splits),
                fix="probes are fitted on train and selected on valid: re-create the store with these splits",
            )


def _selected_targets(store, patterns, where: str) -> tuple[str, ...]:
    """The continuous concept targets the RCVs are fitted to (``--targets`` patterns or all).

    A pattern matching no continuous target is an error that says when it matches a
    target of another kind (RCVs are regressions: they need continuous targets).
    """
    all_targets = store.target_names()
    continuous = [t for t in all_targets if store.target_info(t).kind == "continuous"]
    if patterns is not None:
        for p in patterns:
            if not any(matches(t, p) for t in continuous):
                other = [t for t in all_targets if matches(t, p)]
                raise NoMatchError(
                    f"no continuous concept target matches {p!r}",
                    where=f"{where} (--targets)",
                    expected=", ".join(continuous) or "no continuous targets in the store",
                    got=f"{p!r}" + (f" (matches non-continuous {other}: RCVs need continuous targets)" if other else ""),
                    fix=did_you_mean(p, continuous) or "`probestore inspect STORE` lists the targets",
                )
    return tuple(select(continuous, patterns, what="target", where=where, must_match=False))


def _add_checkpoint_jobs(store, common: dict[str, Any], probes: set[str], targets: tuple[str, ...],
                         layer_patterns, where: str, found: _Found, *, head_dropped: bool = False) -> None:
    """The jobs of one checkpoint: its selected feature blocks, its outputs, its unreadable blocks.

    A run whose head was dropped at extraction has no outputs block; its model-output
    probes are still planned (reading nothing) so that the table says, in ``skipped``
    rows, why they have no numbers.
    """
    run, ckpt = common["run"], common["checkpoint"]
    has_corrupted = common["has_corrupted"]
    blocks = store.blocks(run, ckpt)
    features = [b for b in blocks if b.kind == "features"]
    found.layer_names_seen.update(b.name for b in features)
    chosen_layers = select([b.name for b in features], layer_patterns, what="layer", where=where, must_match=False)
    for index, block in enumerate(features):
        if block.name not in chosen_layers:
            continue
        found.layer_matched.add(block.name)
        specs = _feature_probes(probes, has_corrupted, targets)
        if not specs:
            continue
        found.jobs.append(BlockJob(
            layer=block.name, layer_index=index, n_features=int(block.n_features),
            dtype=block.dtype, chunk_rows=int(block.chunk_rows),
            reduction=reduction_label(block.reduction), probes=specs, **common,
        ))
        found.stored[found.jobs[-1].key] = store.stored_bytes(run, ckpt, block.name)
    outputs = [b for b in blocks if b.kind == "logits"]
    if "outputs" in probes and outputs:
        out_specs: tuple[ProbeSpec, ...] = (ProbeSpec("model_output", "true_labels"),)
        if has_corrupted:
            out_specs += (ProbeSpec("model_output", "train_labels"),)
        b = outputs[0]
        found.jobs.append(BlockJob(
            layer=layout.OUTPUTS, layer_index=len(features), n_features=int(b.n_features),
            dtype=b.dtype, chunk_rows=int(b.chunk_rows), reduction="none", probes=out_specs, **common,
        ))
        found.stored[found.jobs[-1].key] = store.stored_bytes(run, ckpt, layout.OUTPUTS)
    elif "outputs" in probes and head_dropped:
        found.jobs.append(BlockJob(
            layer=layout.OUTPUTS, layer_index=len(features), n_features=0, dtype="", chunk_rows=1,
            reduction="none", probes=(ProbeSpec("model_output", "true_labels"),)
            + ((ProbeSpec("model_output", "train_labels"),) if has_corrupted else ()), **common,
        ))
    for bad in unreadable_blocks(store, run, ckpt, {b.name for b in blocks}):
        found.layer_names_seen.update([bad.name] if bad.kind == "features" else [])
        job = _unreadable_job(bad, probes, has_corrupted, targets, layer_patterns, len(features), common)
        if job is not None:
            found.layer_matched.update([bad.name] if bad.kind == "features" else [])
            found.jobs.append(job)
            found.unreadable[job.key] = bad.reason


def _unreadable_job(bad, probes, has_corrupted, targets, layer_patterns, n_layers, common) -> BlockJob | None:
    """The job of a block that cannot be read: the probes it would have (see analyze.block_checks)."""
    if bad.kind == "logits":
        if "outputs" not in probes:
            return None
        specs: tuple[ProbeSpec, ...] = (ProbeSpec("model_output", "true_labels"),)
        specs += (ProbeSpec("model_output", "train_labels"),) if has_corrupted else ()
        layer, index = layout.OUTPUTS, n_layers + 1
    else:
        if layer_patterns is not None and not any(matches(bad.name, p) for p in layer_patterns):
            return None
        specs = _feature_probes(probes, has_corrupted, targets)
        layer, index = bad.name, n_layers
    if not specs:
        return None
    return BlockJob(layer=layer, layer_index=index, n_features=max(bad.n_features, 0), dtype="", chunk_rows=1,
                    reduction="unknown", probes=specs, **common)


def _inspect_hint(store):
    """``hint("layers")``: how to list the names a pattern may select (a command that works)."""
    return lambda what: f"`probestore inspect {store.path}` lists the {what}"


def _feature_probes(probes: set[str], has_corrupted: bool, targets: Sequence[str]) -> tuple[ProbeSpec, ...]:
    specs: list[ProbeSpec] = []
    if "classifier" in probes:
        specs.append(ProbeSpec("classifier", "true_labels"))
        if has_corrupted:
            specs.append(ProbeSpec("classifier", "train_labels"))
    if "control" in probes:
        specs.append(ProbeSpec("control", "control_labels"))
    if "rcv" in probes:
        specs.extend(ProbeSpec("rcv", t) for t in targets)
    if "rcv_ols" in probes:
        specs.extend(ProbeSpec("rcv_ols", t) for t in targets)
    if "mdl" in probes:
        specs.append(ProbeSpec("mdl", "true_labels"))
        if has_corrupted:
            specs.append(ProbeSpec("mdl", "train_labels"))
    return tuple(specs)


def format_plan(plan: Plan, *, max_block_bytes: int, done: int = 0, max_lines: int = 40) -> str:
    """Human-readable plan (``--dry-run``): blocks, probes per kind, bytes to read."""
    counts = plan.probe_counts()
    features = [j for j in plan.jobs if j.kind == "features"]
    outputs = [j for j in plan.jobs if j.kind == "outputs"]
    runs = sorted({j.run for j in plan.jobs})
    ckpts = sorted({(j.run, j.checkpoint) for j in plan.jobs})
    mem = sum(j.read_bytes for j in plan.jobs)
    disk = sum(plan.stored_bytes.get(j.key, 0) for j in plan.jobs)
    streamed = [j for j in features if j.read_bytes > max_block_bytes]
    largest = max((j.read_bytes for j in plan.jobs), default=0)
    lines = [
        f"plan: {plan.store} (dataset {plan.dataset!r}, {plan.n_samples} samples, {plan.n_classes} classes)",
        f"  runs: {len(runs)}, checkpoints: {len(ckpts)}, blocks: {len(features)} feature + {len(outputs)} outputs",
        "  probes: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("classifier", "control", "rcv", "model_output")
                              + tuple(k for k in ("rcv_ols", "mdl") if counts.get(k)))
        + f" (total {plan.n_probes})",
        f"  concept targets: {', '.join(plan.targets) if plan.targets else 'none'}",
        f"  read: {format_bytes(mem)} as float32 ({format_bytes(disk)} on disk); largest block {format_bytes(largest)}; "
        f"{len(streamed)} block(s) over the {format_bytes(max_block_bytes)} budget streamed in row chunks",
    ]
    if done:
        lines.append(f"  already in the results table: {done} probes (skipped)")
    lines.append("  blocks:")
    for j in plan.jobs[:max_lines]:
        kinds = Counter(p.probe for p in j.probes)
        what = ", ".join(f"{k} {v}" for k, v in kinds.items())
        lines.append(f"    {j.name:<48} F={j.n_features:<6} {j.reduction:<12} {format_bytes(j.read_bytes):>10}  {what}")
    if len(plan.jobs) > max_lines:
        lines.append(f"    ... {len(plan.jobs) - max_lines} more")
    return "\n".join(lines)
