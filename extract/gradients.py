"""Reduced gradients of the own-class logit: concept sensitivity without the network.

TCAV (Kim et al. 2018) needs, per sample, the directional derivative of a class logit
along a concept direction in a layer's activation space. The analysis stage has no
network, so extraction stores ``R(∂f_y/∂a)``: the gradient of the logit of the sample's
own (true) class ``y`` with respect to the layer output ``a``, reduced by the *same*
linear map ``R`` as the features. For any direction ``v`` in reduced space,

    ⟨R g, v⟩ = ⟨g, Rᵀ v⟩,

so the derivative along a CAV learned on reduced features is the exact derivative
along its lift ``Rᵀ v`` to the full activation space (SCHEMA.md §6). Per reduction:

The derivative a probe direction stands for is the one along the *minimum-norm* full-space
move that shifts the reduced features by exactly ``v``, ``u = R⁺ v = Rᵀ (R Rᵀ)⁻¹ v``.
When ``R Rᵀ = c·I`` that is ``u = Rᵀ v / c`` and ``⟨g, u⟩ = ⟨R g, v⟩ / c``: the array's
attribute ``lift_scale = 1/c`` turns the stored inner product into that derivative, so
sensitivities of layers with different sizes and reductions are in the same units
(logit per unit move of the reduced features). Per reduction:

* ``flatten``: ``R = I``, ``lift_scale = 1``;
* ``random:K``: ``R`` selects K entries, ``Rᵀ v`` scatters ``v`` back (``R Rᵀ = I``),
  ``lift_scale = 1``;
* ``gap``: ``R g`` is the spatial *mean* of ``g``, ``R Rᵀ = I/(H·W)``: the lift is ``v``
  on every position and ``lift_scale = H·W``;
* ``project:K``: ``R g = flatten(g) @ W`` with entries of ``W`` ~ N(0, 1/K), so
  ``R Rᵀ = WᵀW`` with ``E[WᵀW] = (D/K)·I`` (D = flattened size): ``lift_scale = K/D``.
  ``WᵀW`` is only *near* ``(D/K)·I`` (off-diagonal entries of relative size ``1/√D``),
  so the scaled derivative approximates the minimum-norm one to ``O(√(K/D))``;
  signs (TCAV scores) never depend on the scale.

The value comes from :func:`storage_schema.reductions.lift_scale_for`, the one rule the
writer, the validator and ``analyze.tcav`` share.

``gmp`` (max pooling) is not linear: its "reduced gradient" would not satisfy the
identity, so it is refused before any work.

The gradient pass is separate from the feature pass and runs only when
``[extract] gradients = true``: the feature path keeps ``torch.inference_mode``.
Gradients are taken through a zero "probe" tensor added to each tapped layer's output
(``a + δ``, ``∂f/∂δ = ∂f/∂a``): in-place operations that follow the layer (``ReLU(inplace)``)
cannot corrupt the result, as they could with a gradient taken on ``a`` itself.
The model is in eval mode, so samples do not interact and one backward of
``Σ_i f_{y_i}(x_i)`` gives every sample's own gradient.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from extract.loading import batch_loader
from extract.reductions import ReductionPlan, build_reducer
from probestore.errors import ConfigError, DataError
from probestore.experiment import INPUT_LAYER
from storage_schema.concept_sets import extra_attrs, set_extra_attrs
from storage_schema.layout import GRAD_ARRAY
from storage_schema.reductions import LINEAR_REDUCTIONS, lift_scale_for

__all__ = ["check_gradient_plan", "lift_scale", "gradient_attrs",
           "GradientExtractor", "extract_gradients", "gradients_complete"]


def check_gradient_plan(reductions: Mapping[str, ReductionPlan]) -> None:
    """Refuse reductions for which a reduced gradient means nothing (before any work).

    Raises
    ------
    ConfigError
        A layer reduced by ``gmp`` (or any non-linear reduction), naming the layers.
    """
    bad = {n: p.kind for n, p in reductions.items() if p.kind not in LINEAR_REDUCTIONS}
    if bad:
        names = sorted(bad)
        raise ConfigError(
            f"gradients need linear reductions; {len(bad)} layer(s) use {sorted(set(bad.values()))}",
            where="[extract] gradients = true", expected=f"reductions in {LINEAR_REDUCTIONS}",
            got={n: bad[n] for n in names[:5]},
            fix="a max pool is not linear, so no stored gradient gives the derivative along a lifted "
                "concept vector: use 'gap', 'random:K' or 'project:K' for these layers "
                "([extract].reductions), or set gradients = false")


def lift_scale(plan: ReductionPlan) -> float:
    """Factor from ``⟨R g, v⟩`` to the derivative along the lift that moves features by ``v``.

    ``1 / c`` where ``R Rᵀ = c·I`` (module docstring): H·W for ``gap``, K/D for
    ``project:K``, 1 for ``random`` and ``flatten``.
    """
    scale = lift_scale_for(plan.to_dict())
    if scale is None:  # check_gradient_plan refuses non-linear plans before this is asked
        raise ConfigError(f"no lift scale for reduction {plan.kind!r}", where=f"layer {plan.layer!r}",
                          expected=f"one of {LINEAR_REDUCTIONS}", got=plan.kind)
    return scale


def gradient_attrs(plan: ReductionPlan) -> dict:
    """Attributes of a layer's ``grad_own_logit`` array (metadata kind ``gradient``)."""
    return {"kind": "gradient", "of": "own_class_logit", "reduction": plan.to_dict(),
            "lift_scale": lift_scale(plan)}


class GradientExtractor:
    """Forward + backward of one batch: every layer's reduced own-logit gradient.

    Parameters
    ----------
    model : torch.nn.Module
        On ``device``, eval mode.
    reductions : mapping layer -> ReductionPlan
        Linear plans (:func:`check_gradient_plan`); ``"input"`` is the network input
        unless the model has a module of that name.
    device : torch.device

    Notes
    -----
    Use as a context manager (hooks). Calling it with ``(x, y)`` returns a dict layer
    -> float32 tensor ``[batch, k]`` plus ``"logits"``, the float32 model output.
    """

    def __init__(self, model: nn.Module, reductions: Mapping[str, ReductionPlan],
                 device: torch.device) -> None:
        check_gradient_plan(reductions)
        self.model = model
        self.layers = list(reductions)
        self.reducers = {n: build_reducer(reductions[n], device, torch.float32) for n in self.layers}
        modules = dict(model.named_modules())
        self._pseudo_input = INPUT_LAYER in reductions and INPUT_LAYER not in modules
        self._modules = {n: modules[n] for n in self.layers if not (self._pseudo_input and n == INPUT_LAYER)}
        self._probes: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_mod, _args, out):
            if not isinstance(out, torch.Tensor):
                raise ConfigError(f"layer {name!r} does not output a tensor", where="gradients",
                                  got=type(out).__name__, fix="select modules with a tensor output")
            probe = torch.zeros_like(out, requires_grad=True)
            self._probes[name] = probe
            return out + probe
        return hook

    def __enter__(self) -> GradientExtractor:
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._probes.clear()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self._probes.clear()
        with torch.enable_grad():
            if self._pseudo_input:
                probe = torch.zeros_like(x, requires_grad=True)
                self._probes[INPUT_LAYER] = probe
                x = x + probe
            out = self.model(x)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise ConfigError("model output is not a [batch, K] tensor", where="gradients")
            missing = [n for n in self.layers if n not in self._probes]
            if missing:
                raise ConfigError(f"{len(missing)} layer(s) did not run in the forward pass",
                                  where="gradients", got=missing[:5])
            own = out.gather(1, y.view(-1, 1).to(out.device)).sum()
            grads = torch.autograd.grad(own, [self._probes[n] for n in self.layers], allow_unused=True)
        result = {}
        with torch.no_grad():
            for name, g in zip(self.layers, grads):
                if g is None:  # the logit does not depend on this layer (a dead branch)
                    g = torch.zeros_like(self._probes[name])
                result[name] = self.reducers[name](g).float()
            result["logits"] = out.detach().float()
        self._probes.clear()
        return result


def gradients_complete(store, run: str, checkpoint: str, layers: Sequence[str]) -> bool:
    """Whether every layer of the checkpoint has a complete ``grad_own_logit`` array."""
    for layer in layers:
        attrs = extra_attrs(store, run, checkpoint, layer, GRAD_ARRAY)
        if not attrs or attrs.get("complete") is not True:
            return False
    return True


def extract_gradients(store, run: str, checkpoint: str, model: nn.Module, torch_dataset,
                      reductions: Mapping[str, ReductionPlan], *, batch_size: int,
                      device: torch.device, num_workers: int = 0, progress: bool = True) -> float:
    """Store every layer's reduced own-class gradient of one (complete) checkpoint.

    Rows are written in whole chunks (the layer's ``chunk_rows``) and ``rows_done`` is
    raised after each write, so a killed pass resumes at the last chunk written, and
    the array is marked ``complete`` last.

    Parameters
    ----------
    store : ActivationStore
        Open for appending; the checkpoint's feature blocks exist.
    run, checkpoint : str
    model : torch.nn.Module
        Weights loaded.
    torch_dataset : torch.utils.data.Dataset
        ``(input, row)`` in store order.
    reductions : mapping layer -> ReductionPlan
        The plans the features were reduced with.
    batch_size, device, num_workers, progress

    Returns
    -------
    float
        Seconds spent.

    Raises
    ------
    ConfigError
        A non-linear reduction.
    DataError
        Non-finite gradients, a dataset of the wrong length.
    """
    check_gradient_plan(reductions)
    t0 = time.perf_counter()
    n = store.n_samples
    if len(torch_dataset) != n:
        raise DataError("dataset and store differ in length", where=str(store.path), expected=n,
                        got=len(torch_dataset))
    layers = list(reductions)
    labels = torch.as_tensor(store.labels(), dtype=torch.long)
    chunk = {m: store.block_info(run, checkpoint, m).chunk_rows for m in layers}
    done = {}
    for m in layers:
        attrs = extra_attrs(store, run, checkpoint, m, GRAD_ARRAY)
        done[m] = int(attrs.get("rows_done", 0)) if attrs and attrs.get("kind") == "gradient" else 0
    if all(d >= n for d in done.values()) and gradients_complete(store, run, checkpoint, layers):
        return 0.0
    model.to(device).eval()
    model.requires_grad_(False)  # only the probes need gradients, not the weights
    start = (min(done.values()) // batch_size) * batch_size
    pending: dict[str, list[np.ndarray]] = {m: [] for m in layers}
    pos = dict(done)  # next row not on disk, per layer
    buffered_end = {m: done[m] for m in layers}

    def flush(m: str, final: bool) -> None:
        if not pending[m]:
            return
        rows = np.concatenate(pending[m])
        end = buffered_end[m]
        target = end if final else (end // chunk[m]) * chunk[m]
        if target <= pos[m]:
            return
        out, rest = rows[: target - pos[m]], rows[target - pos[m]:]
        if not np.isfinite(out).all():
            raise DataError("non-finite gradients (NaN/Inf)", where=f"{run}/{checkpoint}/{m}",
                            fix="check the checkpoint (diverged training?)")
        store.write_extra(run, checkpoint, m, GRAD_ARRAY, out, pos[m])
        pos[m] = target
        set_extra_attrs(store, run, checkpoint, m, GRAD_ARRAY,
                        {**gradient_attrs(reductions[m]), "complete": False, "rows_done": target})
        pending[m] = [rest] if len(rest) else []

    from probestore.progress import Log, Progress

    bar = Progress(n, initial=start, unit="sample", log=Log("extract"), desc=f"{run}/{checkpoint} gradients",
                   enabled=progress, each=False)
    loader = batch_loader(torch_dataset, start, batch_size, device=device, num_workers=num_workers)
    try:
        with GradientExtractor(model, reductions, device) as extractor:
            row = start
            for x, idx in loader:
                k = len(idx)
                if int(idx[0]) != row:
                    raise DataError("the data loader returned rows out of order", where="gradient pass",
                                    expected=row, got=int(idx[0]))
                grads = extractor(x.to(device), labels[row:row + k].to(device))
                for m in layers:
                    if row + k <= buffered_end[m]:
                        continue
                    g = grads[m].cpu().numpy()
                    pending[m].append(g[buffered_end[m] - row:])
                    buffered_end[m] = row + k
                    flush(m, final=False)
                row += k
                bar.update(k)
    finally:
        bar.close()
    for m in layers:
        flush(m, final=True)
        set_extra_attrs(store, run, checkpoint, m, GRAD_ARRAY,
                        {**gradient_attrs(reductions[m]), "complete": True, "rows_done": n})
    return time.perf_counter() - t0
