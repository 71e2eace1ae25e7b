"""The extraction loop for text models: batches of token ids, token-axis reductions in the hooks.

The same contract as :mod:`extract.runner` (one forward pass per batch, every selected
layer reduced on the device inside its hook, rows handed to the background
:class:`extract.writer.CheckpointWriter`, resumable from ``rows_done``), with three
differences that come from the token axis:

* A batch is ``batch_size`` consecutive *sequences* in store order, padded to the
  longest of them (``input_ids`` + ``attention_mask``), so padding costs only what the
  batch's own lengths differ. Batches are not sorted by length: a batch must hold
  consecutive sequences so that its rows are one contiguous range of the store (the
  writer's chunk-aligned, resumable writes rely on it) and a resumed run meets the
  same batches as an uninterrupted one.
* A batch gives a variable number of rows (its tokens or words); they are rows
  ``[row_start[s0], row_start[s1])`` of the store. Which token spans they are is
  decided by the dataset (:mod:`extract.text_datasets`) and applied by
  :class:`extract.token_reductions.TokenRowReducer`; padding is never stored.
* Resuming restarts at the batch holding row ``min(rows_done)``; the writer drops the
  rows already on disk.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from extract.device import autocast_context, prepare_device
from extract.layers import LayerTaps, hidden_state, select_layers, split_call
from extract.reductions import build_reducer, plan_reduction
from extract.runner import CheckpointStats, ExtractionPlan, fill_checkpoint
from extract.token_reductions import BatchRows, TokenRowReducer, sequence_spans
from probestore.errors import ConfigError, DataError, did_you_mean
from probestore.experiment import INPUT_LAYER, ExtractOptions
from probestore.experiment.extraction import split_view
from probestore.selectors import matches
from storage_schema import layout
from storage_schema.reductions import (
    SEQUENCE_KINDS,
    TOKEN_AXIS_KINDS,
    check_row_units,
    parse_reduction,
)

__all__ = ["TextExtractionPlan", "plan_text_extraction", "TextBatchExtractor", "extract_text_checkpoint",
           "row_selection"]

#: The spans key of token-unit layers (every layer of a token store selects the same rows).
ROWS = "rows"


@dataclass
class TextExtractionPlan(ExtractionPlan):
    """An :class:`~extract.runner.ExtractionPlan` with the row unit and what the outputs block holds.

    Attributes
    ----------
    unit : {"sequence", "token"}
    keys : dict of str to str
        Layer -> spans key (``rows`` for token stores; ``cls`` / ``mean`` / ``last``, or
        ``""`` for a layer without a token axis, for sequence stores).
    outputs : {"sequence", "token"} or None
        The model's logits as ``[batch, K]`` (one row per sequence), ``[batch, tokens,
        K]`` (gathered like the token rows), or no outputs block (a bare encoder, or
        ``head = "drop"``).
    """

    unit: str = "sequence"
    keys: dict[str, str] = field(default_factory=dict)
    outputs: str | None = None


def row_selection(options: ExtractOptions) -> str:
    """The reduction whose unit and selection decide a text store's rows.

    The first token reduction among the default and the per-layer overrides (a store
    has one row selection), else ``cls`` (one row per sequence; which sequence
    reduction each layer uses does not change the rows).
    """
    views = [view for layer in options.layers if (view := split_view(layer)[1])]
    specs = [*views, options.reduction, *options.reductions.values()]
    for spec in specs:
        kind, _ = parse_reduction(spec)
        if kind in ("tokens", "random_tokens"):
            return spec
    return "cls"


def _logits(out: Any) -> torch.Tensor | None:
    """A model's logits: a plain tensor output, or the ``logits`` of a ModelOutput; None for an encoder."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def _dry_run(model: nn.Module, dataset, layers: list[str], device) -> tuple[dict[str, tuple[int, ...]], Any, int]:
    """Output shapes (with the batch axis) of ``layers`` and the model output, on two real sequences.

    A layer is a module, a call of it (``name#k``) or a view (``name=cls``): the tensor
    is taken from the module's output by :func:`extract.layers.hidden_state`, the rule
    the hooks apply during extraction.
    """
    n = min(2, dataset.n_sequences)
    ids, mask = dataset.batch(0, n)
    modules = dict(model.named_modules())
    seen: dict[str, list[tuple[int, ...] | None]] = {}
    handles = []
    for module in dict.fromkeys(split_call(name)[0] for name in layers):
        def hook(_m, _a, out, module=module):
            t, _note = hidden_state(out)
            seen.setdefault(module, []).append(None if t is None else tuple(int(s) for s in t.shape))
        handles.append(modules[module].register_forward_hook(hook))
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    shapes: dict[str, tuple[int, ...]] = {}
    for name in layers:
        module, call = split_call(name)
        runs = seen.get(module, [])
        shape = runs[call or 0] if len(runs) > (call or 0) else None
        if shape is not None:
            shapes[name] = shape
    return shapes, out, int(ids.shape[1])


def plan_text_extraction(model: nn.Module, dataset, options: ExtractOptions, *, device="cpu",
                         head: str = "keep") -> TextExtractionPlan:
    """Resolve the layers of a text model and plan their token-axis reductions, before any real batch.

    Raises
    ------
    ConfigError
        Patterns matching nothing, the ``input`` pseudo-layer, sequence and token
        reductions mixed (the fix: two experiments), a token selection other than the
        dataset's, an image reduction on a ``[batch, tokens, hidden]`` output (its
        token count changes with each batch's padding), a per-sequence output in a
        token store, ``gradients``.
    """
    where = "extract.reductions"
    if options.gradients:
        raise ConfigError("gradients are not extracted for text models", where="extract.gradients", got="true",
                          fix="set gradients = false")
    modules = {n for n, _ in model.named_modules() if n}
    if INPUT_LAYER in options.layers and INPUT_LAYER not in modules:
        raise ConfigError("a text model has no 'input' pseudo-layer (its input is token ids)", where="extract.layers",
                          got=repr(INPUT_LAYER), fix="select the embedding module instead (e.g. 'embeddings'; "
                                                     "`probestore layers` lists them)")
    chosen = select_layers(model, list(options.layers))
    for key in options.reductions:
        if key not in chosen and not any(matches(n, key) for n in chosen):
            raise ConfigError(f"reduction override {key!r} matches no selected layer", where=where,
                              expected=chosen[:10], got=repr(key),
                              fix=did_you_mean(key, chosen) or "select the layer in extract.layers, or remove the override")
    specs = {name: options.reduction_for(name) for name in chosen}
    unit = check_row_units(specs, where)
    want = "sequence" if dataset.unit == "sequence" else "token"
    if unit != want:
        raise ConfigError(f"the layers' reductions make {unit} rows but the dataset was laid out as {want} rows",
                          where=where, fix="use the same reduction for every layer (make two experiments for two units)")
    if unit == "token":
        selection = {spec.strip().lower().replace(" ", "") for spec in specs.values()}
        expected = row_selection(options).strip().lower().replace(" ", "")
        if selection != {expected}:
            raise ConfigError("the layers select other token rows than the store", where=where,
                              expected=expected, got=sorted(selection), fix="use one token reduction for every layer")
    shapes, out, n_tokens = _dry_run(model, dataset, chosen, device)
    missing = [n for n in chosen if n not in shapes]
    if missing:
        raise ConfigError(f"{len(missing)} selected layer(s) output no tensor in a forward pass", where="extract.layers",
                          got=missing[:5], fix="select modules that run and return a tensor (`probestore layers`)")
    plans, keys = {}, {}
    max_length = int(dataset.tokenization.get("max_length", n_tokens))
    for name in chosen:
        kind, _ = parse_reduction(specs[name])
        shape = shapes[name][1:]
        token_axis = len(shape) == 2 and shape[0] == n_tokens
        if kind in TOKEN_AXIS_KINDS:
            if not token_axis:
                raise ConfigError(f"layer {name!r} has no token axis for {specs[name]!r}", where=where,
                                  expected=f"an output [batch, {n_tokens} tokens, hidden]",
                                  got=f"[batch, {', '.join(map(str, shape))}]",
                                  fix=(f'set reductions = {{ "{name}" = "flatten" }} (one vector per sequence '
                                       "already)" if unit == "sequence" else
                                       "select blocks with one vector per token; a per-sequence output (a "
                                       "pooler) belongs in a sequence store (make two experiments)"))
            plans[name] = plan_reduction(specs[name], name, (max_length, shape[1]), seed=options.reduction_seed)
            keys[name] = ROWS if unit == "token" else kind
        else:
            if token_axis or kind == "auto" and len(shape) == 2:
                raise ConfigError(f"{specs[name]!r} does not fit the token axis of layer {name!r}", where=where,
                                  expected=", ".join(TOKEN_AXIS_KINDS), got=specs[name],
                                  fix='use "cls", "mean" or "last" (one row per sequence) or "tokens" / '
                                      '"random_tokens:K" (token rows): padding changes the token count per batch')
            plans[name] = plan_reduction(specs[name], name, shape, seed=options.reduction_seed,
                                         max_flatten_features=options.max_flatten_features)
            keys[name] = ""
    outputs, n_outputs = _outputs_kind(out, unit, n_tokens, head)
    return TextExtractionPlan(chosen, plans, n_outputs, {n: tuple(p.source_shape) for n, p in plans.items()},
                              unit=unit, keys=keys, outputs=outputs)


def _outputs_kind(out: Any, unit: str, n_tokens: int, head: str) -> tuple[str | None, int]:
    """What the outputs block stores: sequence logits, token logits, or nothing (a bare encoder)."""
    logits = _logits(out) if head == "keep" else None
    if logits is None:
        return None, 0
    if logits.dim() == 2 and unit == "sequence":
        return "sequence", int(logits.shape[1])
    if logits.dim() == 3 and unit == "token" and logits.shape[1] == n_tokens:
        return "token", int(logits.shape[2])
    return None, 0  # e.g. a sequence classifier probed on token rows: its logits are not per row


class TextBatchExtractor:
    """Forward one batch of sequences and return every block's rows, on the device (a context manager)."""

    def __init__(self, model: nn.Module, plan: TextExtractionPlan, device: torch.device, amp: str = "none") -> None:
        self.model, self.plan, self.device, self.amp = model, plan, torch.device(device), amp
        self.rows = BatchRows()
        reducers: dict[str, nn.Module] = {}
        for name in plan.layers:
            p = plan.reductions[name]
            reducers[name] = TokenRowReducer(plan.keys[name], p.n_features, self.rows, name) \
                if p.kind in TOKEN_AXIS_KINDS else build_reducer(p, self.device, torch.float32)
        self.taps = LayerTaps(model, reducers)

    def __enter__(self) -> TextBatchExtractor:
        self.taps.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.taps.close()

    def spans(self, dataset, s0: int, s1: int, n_tokens: int) -> dict:
        """The device spans of sequences ``[s0, s1)``: the store's rows, or one per sequence kind."""
        if self.plan.unit == "token":
            return {ROWS: dataset.row_spans(s0, s1).on_device(n_tokens, self.device)}
        lengths = dataset.lengths(s0, s1)
        kinds = {k for k in self.plan.keys.values() if k in SEQUENCE_KINDS}
        return {k: sequence_spans(k, lengths).on_device(n_tokens, self.device) for k in kinds}

    def __call__(self, dataset, s0: int, s1: int) -> dict[str, torch.Tensor]:
        ids, mask = dataset.batch(s0, s1)
        ids = ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        spans = self.spans(dataset, s0, s1, int(ids.shape[1]))
        self.rows.set(tuple(ids.shape), spans)
        with torch.inference_mode(), autocast_context(self.device, self.amp):
            out = self.model(input_ids=ids, attention_mask=mask)
            feats = self.taps.pop()
            result = {n: feats[n] for n in self.plan.layers}
            if self.plan.outputs is not None:
                logits = _logits(out)
                assert logits is not None
                result[layout.OUTPUTS] = (logits.float() if self.plan.outputs == "sequence"
                                          else TokenRowReducer(ROWS, logits.shape[2], self.rows, "logits")(logits))
        return result


def extract_text_checkpoint(store, run: str, checkpoint: str, model: nn.Module, dataset,
                            plan: TextExtractionPlan, options: ExtractOptions, *, device: torch.device,
                            progress: bool = True) -> CheckpointStats:
    """Fill (or finish) one registered checkpoint's blocks from a text dataset (one pass).

    Parameters
    ----------
    store : ActivationStore
        Created with the dataset's rows (``len(dataset)`` rows).
    dataset : extract.text_datasets.TextDataset
    plan : TextExtractionPlan
    options : ExtractOptions
        ``batch_size`` (sequences per batch), ``amp``, ``dtype``, ``chunk_rows``, ``compression``.

    Raises
    ------
    DataError
        A store of another length than the dataset's rows; a batch whose reduced rows
        differ from its rows in the store.
    """
    n = store.n_samples
    if len(dataset) != n:
        raise DataError("dataset rows and store differ in length", where=str(store.path), expected=n,
                        got=len(dataset), fix="extract into a new store (the dataset or its tokenization changed)")
    device = torch.device(device)
    prepare_device(device)
    model.to(device).eval()
    bs = options.batch_size
    row_start = dataset.row_start

    def batches(resume_row: int) -> tuple[int, Generator[tuple[int, int, dict[str, torch.Tensor]], None, None]]:
        starts = row_start[::bs][: -(-dataset.n_sequences // bs)]  # first row of each batch
        first = int(np.searchsorted(starts, resume_row, side="right") - 1)

        def produce() -> Generator[tuple[int, int, dict[str, torch.Tensor]], None, None]:
            with TextBatchExtractor(model, plan, device, options.amp) as extractor:
                for s0 in range(first * bs, dataset.n_sequences, bs):
                    s1 = min(s0 + bs, dataset.n_sequences)
                    blocks = extractor(dataset, s0, s1)
                    k = int(row_start[s1] - row_start[s0])
                    if any(t.shape[0] != k for t in blocks.values()):
                        raise DataError("a batch gave another number of rows than the store holds for it",
                                        where=f"sequences {s0}..{s1 - 1}", expected=k,
                                        got={b: int(t.shape[0]) for b, t in blocks.items()})
                    yield int(row_start[s0]), k, blocks

        return int(starts[first]), produce()

    return fill_checkpoint(store, run, checkpoint, plan, options, unit="row", progress=progress,
                           batches=batches)
