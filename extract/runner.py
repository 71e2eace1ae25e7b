"""The extraction loop: one forward pass per batch, every selected layer, reduced on the device.

For each checkpoint the whole dataset goes through the network once, in store order,
in batches ``[k * batch_size, (k + 1) * batch_size)``. :class:`extract.layers.LayerTaps`
reduces each selected layer inside its forward hook, so only ``[batch, k]`` tensors
leave the device; they are copied to the host in one transfer per batch and handed to
the background :class:`extract.writer.CheckpointWriter`.

Resuming restarts at ``min(rows_done)`` over the checkpoint's blocks rounded *down* to
a multiple of the batch size: batches are then exactly those of an uninterrupted run
(batch composition can change the floats of a batched matmul), so the resumed store
is identical to an uninterrupted one.

The pseudo-layer ``"input"`` is the network input itself (after normalization),
reduced like any layer: the baseline a probe on raw pixels gives (Alain & Bengio).
Its ``auto`` reduction is ``flatten`` (every pixel) when it fits
``max_flatten_features``, else ``random:<max_flatten_features>``. A model module
literally named ``input`` takes precedence.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from extract.device import autocast_context, prepare_device
from extract.gradients import check_gradient_plan
from extract.layers import (
    LayerTaps,
    check_calls,
    list_layers,
    no_tensor_error,
    select_layers,
    split_call,
)
from extract.loading import batch_loader
from extract.reductions import ReductionPlan, build_reducer, plan_reduction
from extract.writer import CheckpointWriter
from probestore.errors import ConfigError, DataError, did_you_mean
from probestore.experiment import INPUT_LAYER, ExtractOptions
from probestore.selectors import matches
from storage_schema import layout

__all__ = ["ExtractionPlan", "plan_extraction", "BatchExtractor",
           "extract_checkpoint", "CheckpointStats", "extract_set_features"]


@dataclass
class ExtractionPlan:
    """What is stored per checkpoint: the layers, their reductions and the output size.

    Attributes
    ----------
    layers : list of str
        Feature blocks in store order: ``"input"`` first when asked, then model order.
    reductions : dict of str to ReductionPlan
    n_outputs : int
        Width of the model output (logits) block; 0: no outputs block (``head = "drop"``).
    source_shapes : dict of str to tuple
        Layer output shapes without the batch dimension.
    """

    layers: list[str]
    reductions: dict[str, ReductionPlan]
    n_outputs: int
    source_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def n_features(self) -> int:
        """Stored floats per sample over all blocks (outputs included)."""
        return sum(p.n_features for p in self.reductions.values()) + self.n_outputs


def plan_extraction(model: nn.Module, input_shape: Sequence[int], options: ExtractOptions,
                    *, device: str | torch.device = "cpu",
                    stored_indices: Mapping[str, np.ndarray] | None = None,
                    head=None) -> ExtractionPlan:
    """Resolve layer patterns and plan every reduction, before any data is read.

    Parameters
    ----------
    model : torch.nn.Module
        On ``device``; one dry forward pass on a dummy batch finds the output shapes.
    input_shape : sequence of int
        ``(C, H, W)`` of one sample.
    options : ExtractOptions
        Layers, reductions (default and per-layer overrides), seed, flatten limit.
    device : str or torch.device
    stored_indices : mapping, optional
        Random-subset indices already in the store (per layer): they must equal the
        ones drawn now.
    head : extract.models.HeadInfo, optional
        The head to drop (``[model] head = "drop"``): no outputs block is planned
        (``n_outputs = 0``), and the head and every module whose output comes after it
        are refused as layers (their values would be those of an unloaded head).

    Returns
    -------
    ExtractionPlan

    Raises
    ------
    ConfigError
        A pattern or override matching no layer (with the closest names), a reduction
        that does not fit a layer, a model whose output is not ``[batch, K]``, a
        non-linear reduction (``gmp``) with ``options.gradients``.
    """
    module_names = {n for n, _ in model.named_modules() if n}
    pseudo_input = INPUT_LAYER in options.layers and INPUT_LAYER not in module_names
    patterns = [p for p in options.layers if not (pseudo_input and p == INPUT_LAYER)]
    chosen = select_layers(model, patterns) if patterns else []
    no_tensor: dict[str, str] = {}
    described = list_layers(model, input_shape, device=device, no_tensor=no_tensor)
    ran = {d.name for d in described}
    not_run = [n for n in chosen if split_call(n)[0] not in ran]
    untensored = [n for n in not_run if split_call(n)[0] in no_tensor]
    if untensored:  # ran, but returned None or a tuple without a tensor (extract.layers.hidden_state)
        raise no_tensor_error(untensored[0], no_tensor[split_call(untensored[0])[0]], "extract.layers")
    if not_run:
        raise ConfigError(f"{len(not_run)} selected layer(s) do not output a tensor in a forward pass",
                          where="extract.layers", got=not_run[:5],
                          fix="select modules that run and return a tensor (`probestore layers` lists them)")
    # A module run several times per forward must be chosen per call (name#k): refused
    # here, before any data is read, rather than storing one of its calls silently.
    shapes = check_calls(chosen, described)
    if options.gradients and any(n != split_call(n)[0] for n in chosen):
        raise ConfigError("per-call layers (name#k) and views (name=reduction) cannot be combined with gradients",
                          where="extract.layers", got=[n for n in chosen if n != split_call(n)[0]][:5],
                          fix="select plain modules that run once per forward pass, or set gradients = false")
    if head is not None:
        _refuse_head_layers(chosen, head)
    layers = ([INPUT_LAYER] if pseudo_input else []) + chosen
    if pseudo_input:
        shapes[INPUT_LAYER] = tuple(int(s) for s in input_shape)
    for key in options.reductions:
        if key not in layers and not any(matches(n, key) for n in layers):
            raise ConfigError(f"reduction override {key!r} matches no selected layer",
                              where="extract.reductions", expected=layers[:10], got=repr(key),
                              fix=did_you_mean(key, layers) or "select the layer in extract.layers, "
                                                              "or remove the override")
    plans = {}
    for name in layers:
        stored = None if stored_indices is None else stored_indices.get(name)
        spec = options.reduction_for(name)
        if name == INPUT_LAYER and pseudo_input and spec == "auto":
            spec = _input_auto(shapes[name], options.max_flatten_features)
        if stored is not None and not spec.strip().lower().startswith("random"):
            stored = None  # indices of another reduction: the store refuses the mix later
        plans[name] = plan_reduction(spec, name, shapes[name], seed=options.reduction_seed,
                                     max_flatten_features=options.max_flatten_features,
                                     indices=stored)
    if options.gradients:  # before any work: a max pool has no meaningful reduced gradient
        check_gradient_plan(plans)
    n_outputs = _output_width(model, input_shape, device) if head is None else 0
    return ExtractionPlan(layers, plans, n_outputs, {n: tuple(shapes[n]) for n in layers})


def _refuse_head_layers(chosen: Sequence[str], head) -> None:
    """With ``head = "drop"``, the head and what runs after it hold no loaded weights' values."""
    tainted = {head.name, *head.after}
    bad = [n for n in chosen if split_call(n)[0] in tainted]
    if bad:
        raise ConfigError(f"{len(bad)} selected layer(s) are the dropped head or come after it",
                          where="extract.layers", got=bad[:5],
                          fix=f'leave them out of [extract] layers (the head {head.name!r} is not loaded with '
                              'head = "drop"), or keep the head')


def _input_auto(shape: Sequence[int], limit: int) -> str:
    """``auto`` for the input: all pixels when they fit (the raw-pixel probe baseline).

    Pooling an image to its channel means (what ``auto`` does for a 4-D layer) would
    leave 1 or 3 numbers, no baseline at all; above ``limit`` a fixed random subset of
    ``limit`` pixels is kept instead.
    """
    n = 1
    for s in shape:
        n *= int(s)
    return "flatten" if n <= limit else f"random:{limit}"




def _output_width(model: nn.Module, input_shape: Sequence[int], device) -> int:
    x = torch.zeros((2, *input_shape), device=device,
                    dtype=next((p.dtype for p in model.parameters() if p.is_floating_point()),
                               torch.float32))
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(x)
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError("model output is not a [batch, K] tensor", where="model", got=shape,
                          fix="use a classification model (torchvision inception_v3: aux_logits=False; an hf: "
                              "model: options.task_head = true), or [model] head = \"drop\" to store no outputs")
    return int(out.shape[1])


class BatchExtractor:
    """Forward one batch and return every block's reduced rows, on the device.

    Parameters
    ----------
    model : torch.nn.Module
        Already on ``device`` and in eval mode.
    plan : ExtractionPlan
    device : torch.device
    amp : {"none", "bf16", "fp16"}
        Autocast of the forward pass; reductions run under it too, but the reducers
        return float32.

    Notes
    -----
    Use as a context manager (the hooks live inside it). Calling it returns a dict
    block name -> float32 tensor ``[batch, k]`` with the layers in plan order, then
    ``layout.OUTPUTS``.
    """

    def __init__(self, model: nn.Module, plan: ExtractionPlan, device: torch.device,
                 amp: str = "none") -> None:
        self.model = model
        self.plan = plan
        self.device = device
        self.amp = amp
        self.reducers = {n: build_reducer(plan.reductions[n], device, torch.float32)
                         for n in plan.layers}
        self._input_reducer = self.reducers.get(INPUT_LAYER) if INPUT_LAYER in plan.layers and \
            INPUT_LAYER not in dict(model.named_modules()) else None
        hooked = {n: r for n, r in self.reducers.items() if r is not self._input_reducer}
        self.taps = LayerTaps(model, hooked)

    def __enter__(self) -> BatchExtractor:
        self.taps.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.taps.close()

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), autocast_context(self.device, self.amp):
            feats = {}
            if self._input_reducer is not None:
                feats[INPUT_LAYER] = self._input_reducer(x)
            out = self.model(x)
            feats.update(self.taps.pop())
        result = {n: feats[n] for n in self.plan.layers}
        if self.plan.n_outputs:
            result[layout.OUTPUTS] = out.float()
        return result


def to_host(blocks: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Float32 numpy copies of the blocks: one device-to-host transfer per batch.

    On CPU the tensors are already fresh float32 arrays: no copy is made.
    """
    names = list(blocks)
    tensors = [blocks[n].float() for n in names]
    if tensors[0].device.type == "cpu":
        return {n: t.numpy() for n, t in zip(names, tensors)}
    flat = torch.cat(tensors, dim=1).cpu().numpy()
    out, col = {}, 0
    for n, t in zip(names, tensors):
        out[n] = flat[:, col:col + t.shape[1]]
        col += t.shape[1]
    return out


@dataclass
class CheckpointStats:
    """What one checkpoint's extraction did (for the summary).

    ``seconds`` is the whole checkpoint; ``setup_seconds`` (creating or finding the
    blocks) and ``finish_seconds`` (waiting for the writer to drain, writing the
    tails, completion markers and the page-cache flush) are the fixed costs around the
    loop, ``write_seconds`` the writer thread's time in store writes (overlapped).
    """

    run: str
    checkpoint: str
    rows: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    finish_seconds: float = 0.0
    write_seconds: float = 0.0
    bytes_stored: int = 0
    skipped: bool = False

    @property
    def samples_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def create_blocks(store, run: str, checkpoint: str, plan: ExtractionPlan, *, dtype: str,
                  chunk_rows: int | None = None, compression: str = "fast") -> list:
    """Create (or find, when resuming) the checkpoint's blocks; return their BlockMeta."""
    metas = []
    for name in plan.layers:
        p = plan.reductions[name]
        metas.append(store.create_block(run, checkpoint, name, n_features=p.n_features, dtype=dtype,
                                        source_shape=list(p.source_shape), reduction=p.to_dict(),
                                        chunk_rows=chunk_rows, compression=compression))
    if plan.n_outputs:  # none with head = "drop" (SCHEMA.md §9)
        metas.append(store.create_block(run, checkpoint, layout.OUTPUTS, n_features=plan.n_outputs,
                                        dtype=dtype, source_shape=[plan.n_outputs],
                                        reduction={"kind": "none"}, chunk_rows=chunk_rows,
                                        compression=compression))
    return metas


def extract_checkpoint(store, run: str, checkpoint: str, model: nn.Module, torch_dataset,
                       plan: ExtractionPlan, options: ExtractOptions, *, device: torch.device,
                       progress: bool = True) -> CheckpointStats:
    """Fill (or finish) one registered checkpoint's blocks with one pass over the data.

    Parameters
    ----------
    store : ActivationStore
        Open for appending; the checkpoint is registered (``add_checkpoint``).
    run, checkpoint : str
    model : torch.nn.Module
        Weights loaded; moved to ``device`` and set to eval mode here.
    torch_dataset : torch.utils.data.Dataset
        Yields ``(input tensor, row index)`` in store order
        (:meth:`extract.datasets.ImageDataset.torch_dataset`).
    plan : ExtractionPlan
    options : ExtractOptions
        ``batch_size``, ``num_workers``, ``amp``, ``dtype``, ``chunk_rows``, ``compression``.
    device : torch.device
    progress : bool
        A bar with samples/s and ETA on a terminal, else a timestamped line a minute
        (:class:`probestore.progress.Progress`).

    Returns
    -------
    CheckpointStats

    Raises
    ------
    DataError
        Non-finite features (refused by the store), a dataset of the wrong length.
    """
    n = store.n_samples
    if len(torch_dataset) != n:
        raise DataError("dataset and store differ in length", where=str(store.path),
                        expected=n, got=len(torch_dataset))
    prepare_device(device)
    model.to(device).eval()
    bs = options.batch_size

    def batches(resume_row: int) -> tuple[int, Generator[tuple[int, int, dict[str, torch.Tensor]], None, None]]:
        start = (resume_row // bs) * bs
        loader = batch_loader(torch_dataset, start, bs, device=device, num_workers=options.num_workers)

        def produce() -> Generator[tuple[int, int, dict[str, torch.Tensor]], None, None]:
            with BatchExtractor(model, plan, device, options.amp) as extractor:
                row = start
                for x, idx in loader:
                    k = len(idx)
                    if int(idx[0]) != row or int(idx[-1]) != row + k - 1:
                        raise DataError("the data loader returned rows out of order",
                                        where="extraction loop", expected=f"rows {row}..{row + k - 1}",
                                        got=f"{int(idx[0])}..{int(idx[-1])}")
                    yield row, k, extractor(x.to(device, non_blocking=True))
                    row += k

        return start, produce()

    return fill_checkpoint(store, run, checkpoint, plan, options, unit="sample", progress=progress,
                           batches=batches)


#: ``batches(resume_row)`` of :func:`fill_checkpoint`: the first row it will produce and
#: the batches ``(first row in the store, rows, reduced tensors per block)`` in store order.
BatchSource = Callable[[int], tuple[int, Generator[tuple[int, int, Mapping[str, torch.Tensor]], None, None]]]


def fill_checkpoint(store, run: str, checkpoint: str, plan, options: ExtractOptions, *, unit: str,
                    progress: bool, batches: BatchSource) -> CheckpointStats:
    """The loop every extraction shares: blocks created (or found), resumed, filled, flagged complete.

    Images and text differ only in how a batch is made (:func:`extract_checkpoint`,
    :func:`extract.text_runner.extract_text_checkpoint`); creating the blocks, resuming
    at a batch boundary at or below ``rows_done``, the host copy, the background writer,
    the progress bar and the timings are one piece of code. The batch source is closed
    as soon as the loop ends, normally or not, so its hooks come off at once.
    """
    n = store.n_samples
    metas = create_blocks(store, run, checkpoint, plan, dtype=options.dtype,
                          chunk_rows=options.chunk_rows, compression=options.compression)
    stats = CheckpointStats(run, checkpoint)
    t0 = time.perf_counter()
    with CheckpointWriter(store, run, checkpoint, metas, plan.layers) as writer:
        stats.setup_seconds = time.perf_counter() - t0
        start, produced = batches(writer.resume_row)
        stats.resumed_from = start
        from probestore.progress import Log, Progress

        # A bar on a terminal; elsewhere a line a minute (the pipeline writes one per checkpoint).
        bar = Progress(n, initial=start, unit=unit, log=Log("extract"), desc=f"{run}/{checkpoint}",
                       enabled=progress, each=False)
        try:
            with contextlib.closing(produced):
                for row, k, blocks in produced:
                    writer.put(row, to_host(blocks))
                    bar.update(k)
            t_loop = time.perf_counter()
            writer.finish()
            stats.finish_seconds = time.perf_counter() - t_loop
        finally:
            bar.close()
    stats.rows = n - start
    stats.seconds = time.perf_counter() - t0
    stats.write_seconds = writer.write_seconds
    stats.bytes_stored = sum(store.stored_bytes(run, checkpoint, m.name) for m in metas)
    return stats


def extract_set_features(store, run: str, checkpoint: str, model: nn.Module, set_name: str,
                         torch_dataset, plan: ExtractionPlan, options: ExtractOptions, *,
                         device: torch.device) -> int:
    """Features of an external concept example set at one checkpoint, every layer of the plan.

    The set's images go through the same hooks and reductions as the dataset's samples
    (same batch size and autocast), so a CAV learned on them applies to the samples'
    features. Sets are small: the rows are kept in memory and each layer's block is
    written once, then flagged complete (:mod:`storage_schema.concept_sets`). Layers
    whose block is already complete are not recomputed.

    Returns
    -------
    int
        Layers written (0 when every block was complete).
    """
    from storage_schema.concept_sets import create_concept_block, write_concept_features

    todo = [name for name in plan.layers
            if not create_concept_block(store, run, checkpoint, set_name, name,
                                        n_features=plan.reductions[name].n_features, dtype=options.dtype,
                                        reduction=plan.reductions[name].to_dict())]
    if not todo:
        return 0
    model.to(device).eval()
    parts: dict[str, list[np.ndarray]] = {n: [] for n in todo}
    loader = batch_loader(torch_dataset, 0, options.batch_size, device=device, num_workers=0)
    with BatchExtractor(model, plan, device, options.amp) as extractor:
        for x, _idx in loader:
            host = to_host(extractor(x.to(device)))
            for name in todo:
                parts[name].append(np.array(host[name], copy=True))
    for name in todo:
        write_concept_features(store, run, checkpoint, set_name, name, np.concatenate(parts[name]))
    return len(todo)


def expected_bytes(plan: ExtractionPlan, n_samples: int, dtype: str) -> int:
    """Uncompressed bytes one checkpoint stores (for plans and dry runs)."""
    return plan.n_features() * n_samples * int(np.dtype(dtype).itemsize)


def describe_plan(plan: ExtractionPlan) -> list[str]:
    """One line per block: name, source shape, reduction, stored features."""
    lines = []
    for name in plan.layers:
        p = plan.reductions[name]
        shape = "x".join(map(str, p.source_shape))
        k = f":{p.params['k']}" if "k" in p.params else ""
        lines.append(f"{name:<24} {shape:>14} {p.kind + k:>14} {p.n_features:>8}")
    if plan.n_outputs:
        lines.append(f"{layout.OUTPUTS:<24} {plan.n_outputs:>14} {'none':>14} {plan.n_outputs:>8}")
    else:
        lines.append(f"{layout.OUTPUTS:<24} {'(head dropped: not stored)':>39}")
    return lines

