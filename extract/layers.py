"""Naming, choosing and tapping the layers that probes are fitted on.

Layers are addressed by their dotted ``named_modules()`` name (``layer3.1.relu``,
``fc2``), the one name that is stable across processes and shown by ``print(model)``.
Selection is checked against the model before any data is read, so a typo fails in a
second with the closest names, not after an hour of extraction.

:class:`LayerTaps` collects the probe inputs during an ordinary forward pass with
forward hooks. Each hook reduces its layer's output right away (see
:mod:`extract.reductions`): full activations of early layers would not fit anywhere,
and a later in-place op (``ReLU(inplace=True)``, ``out += identity`` in a ResNet block)
would overwrite the tensor the hook saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from probestore.errors import ConfigError, DataError, did_you_mean
from probestore.selectors import select

_HINT = "`probestore layers --model ...` lists them"
#: ``<module>#<k>`` selects the k-th call (0-based) of a module that runs several times
#: per forward pass, e.g. ``layer4.1.relu#1``: the second ReLU of a torchvision
#: BasicBlock, after the residual add (torchvision's feature extractor calls it
#: ``layer4.1.relu_1``). A bare name of such a module is refused (see
#: :func:`check_calls`): storing one call silently would mislabel the features.
CALL_SEPARATOR = "#"


def split_call(name: str) -> tuple[str, int | None]:
    """``"layer4.1.relu#1"`` -> ``("layer4.1.relu", 1)``; a plain name -> ``(name, None)``."""
    module, sep, call = name.rpartition(CALL_SEPARATOR)
    if not sep:
        return name, None
    if not call.isdigit() or not module:
        raise ConfigError(f"bad call index in layer {name!r}", where="layers",
                          expected="MODULE#K with K a call number counted from 0 (layer4.1.relu#1)",
                          got=repr(name))
    return module, int(call)


@dataclass(frozen=True)
class LayerDescription:
    """One named module as seen in a dry forward pass.

    Attributes
    ----------
    name : str
        Dotted module name.
    module_type : str
        Class name, e.g. ``"Conv2d"``.
    output_shape : tuple of int
        Output shape without the batch dimension (of its last call).
    n_features : int
        ``prod(output_shape)``: what ``flatten`` would store per sample.
    n_calls : int
        Forward calls per model forward. More than 1 means a shared module, such as the
        ``relu`` of a torchvision ``BasicBlock`` (after ``bn1`` and again after the
        residual add): it can only be stored one call at a time, as ``name#k``.
    call_shapes : tuple of tuple of int
        Output shape of each call, in call order.
    """

    name: str
    module_type: str
    output_shape: tuple[int, ...]
    n_features: int
    n_calls: int = 1
    call_shapes: tuple[tuple[int, ...], ...] = ()


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def list_layers(model: nn.Module, input_shape: Sequence[int],
                device: str | torch.device = "cpu") -> list[LayerDescription]:
    """Every named module with a tensor output, from one dry forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        Already on ``device``. Left as it was: the pass runs in eval mode under
        ``torch.inference_mode`` (no batch-norm statistics updated) and the
        train / eval flags are restored afterwards.
    input_shape : sequence of int
        One sample's shape, e.g. ``(C, H, W)``; a seeded batch of 2 is fed.
    device : str or torch.device, default "cpu"

    Returns
    -------
    list of LayerDescription
        In order of first execution. Containers appear too (their output is the
        output of their last child, e.g. ``layer1`` of a ResNet); the root module,
        modules that never run and modules with non-tensor outputs are left out.
    """
    shape = tuple(int(s) for s in input_shape)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *shape), generator=gen).to(device=device, dtype=_param_dtype(model))
    seen: dict[str, list] = {}  # name -> [module_type, [shape of each call]]
    names = {m: n for n, m in model.named_modules() if n}
    handles = []

    def make_hook(name: str, module: nn.Module):
        def hook(_mod, _args, out):
            if isinstance(out, torch.Tensor) and out.dim() >= 1:
                seen.setdefault(name, [type(module).__name__, []])[1].append(tuple(out.shape[1:]))
        return hook

    training = {m: m.training for m in model.modules()}
    try:
        for module, name in names.items():
            handles.append(module.register_forward_hook(make_hook(name, module)))
        model.eval()
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
    return [LayerDescription(n, t, calls[-1], math.prod(calls[-1]), len(calls), tuple(calls))
            for n, (t, calls) in seen.items()]


def check_calls(chosen: Sequence[str], layers: Sequence[LayerDescription]) -> dict[str, tuple[int, ...]]:
    """Output shape of each chosen layer; refuse ambiguous or impossible call choices.

    A module that runs several times per forward pass must be chosen as ``name#k``
    (before any data is read): a bare name would have stored one of its calls and
    silently dropped the others.

    Raises
    ------
    ConfigError
        A bare name of a module called several times (the message lists its calls and
        their shapes); ``name#k`` with ``k`` not below the number of calls.
    """
    by_name = {d.name: d for d in layers}
    shapes: dict[str, tuple[int, ...]] = {}
    shared = []
    for name in chosen:
        module, call = split_call(name)
        d = by_name.get(module)
        if d is None:
            continue  # did not run: the caller reports it
        if call is None and d.n_calls > 1:
            shared.append(d)
        elif call is not None and call >= d.n_calls:
            raise ConfigError(f"layer {name!r} asks for call {call} of {module!r}", where="layers",
                              expected=f"#0 .. #{d.n_calls - 1} (0-based: the module runs "
                                       f"{d.n_calls} time(s) per forward pass)",
                              got=repr(name), fix=_calls_fix(d))
        else:
            shapes[name] = d.call_shapes[call] if call is not None else d.output_shape
    if shared:
        d = shared[0]
        listing = ", ".join(f"{d.name}{CALL_SEPARATOR}{k} ({'x'.join(map(str, s))})"
                            for k, s in enumerate(d.call_shapes))
        more = f" (and {len(shared) - 1} more shared module(s): " + ", ".join(
            x.name for x in shared[1:4]) + ")" if len(shared) > 1 else ""
        raise ConfigError(
            f"layer {d.name!r} runs {d.n_calls} times per forward pass: calls {listing}{more}",
            where="layers", expected="one call per stored layer",
            got=f"the bare name {d.name!r}", fix=_calls_fix(d))
    return shapes


def _calls_fix(d: LayerDescription) -> str:
    names = " and/or ".join(repr(f"{d.name}{CALL_SEPARATOR}{k}") for k in range(d.n_calls))
    return f"select {names} (calls counted from 0) instead"


def select_layers(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Resolve exact names and globs (:func:`probestore.selectors.select`) to module names, in model order.

    Parameters
    ----------
    model : torch.nn.Module
    patterns : sequence of str
        Exact dotted names (``"layer4.1.relu"``) or globs (``"layer*.relu"``,
        ``"features.*"``; ``*`` also crosses dots). Overlaps are deduplicated.

    Returns
    -------
    list of str
        In ``named_modules()`` order, so the stored order follows the network's depth.

    Raises
    ------
    ConfigError
        No patterns, or a pattern that matches nothing (with the closest names).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ConfigError("no layers selected", where="layers", expected="at least one name or glob",
                          got="[]", fix=_HINT)
    names = [n for n, _ in model.named_modules() if n]
    chosen: set[str] = set()
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise ConfigError("layer pattern must be a non-empty string", where="layers",
                              got=repr(pat))
        module, call = split_call(pat)
        if call is not None and pat not in names:
            if module not in names:
                close = did_you_mean(module, names, n=5)
                raise ConfigError(f"layer {pat!r}: no module {module!r}", where="layers",
                                  expected=f"a dotted module name of {type(model).__name__}, then #K",
                                  got=repr(pat), fix=(close + " " if close else "") + _HINT)
            chosen.add(pat)
            continue
        chosen.update(select(names, pat, what="layer", where=f"layers (modules of {type(model).__name__})",
                             hint=_HINT))  # exact names and globs, as every --layers
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=lambda n: (order[split_call(n)[0]], split_call(n)[1] or 0))


class LayerTaps:
    """Forward hooks that keep only the reduced output of the chosen layers.

    Parameters
    ----------
    model : torch.nn.Module
    reducers : mapping of str to torch.nn.Module
        Layer name -> module mapping the layer output to ``[batch, k]`` (from
        :func:`extract.reductions.build_reducer`); the mapping's order is the order of
        :meth:`pop`'s result.

    Examples
    --------
    >>> with LayerTaps(model, {"fc1": reducer}) as taps:   # doctest: +SKIP
    ...     model(x)
    ...     feats = taps.pop()                             # {"fc1": tensor [N, k]}

    Notes
    -----
    The reducer runs inside the hook, hence under the caller's device, autocast and
    inference-mode settings, before any later in-place op can change the output.
    A reduced tensor that still shares memory with the output (a view) is cloned.
    Each forward of ``model`` starts afresh (a pre-hook on the root clears what was not
    popped). A module run several times in one forward (shared) is tapped per call as
    ``name#k`` (0-based); tapping it by its bare name raises at its second call instead
    of keeping one call silently.
    """

    def __init__(self, model: nn.Module, reducers: Mapping[str, nn.Module]) -> None:
        modules = dict(model.named_modules())
        self._taps: dict[str, dict[int | None, str]] = {}  # module -> call (None: bare) -> name
        for name in reducers:
            module, call = split_call(name)
            if module not in modules or not module:
                raise ConfigError(f"unknown layer {name!r}", where="LayerTaps",
                                  got=repr(name),
                                  fix=(did_you_mean(module, [n for n in modules if n]) + " " + _HINT).strip())
            self._taps.setdefault(module, {})[call] = name
        self.model = model
        self.reducers = dict(reducers)
        self._modules = {m: modules[m] for m in self._taps}
        self._handles: list = []
        self._out: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}

    def _hook(self, module_name: str):
        taps = self._taps[module_name]

        def hook(_mod, _args, out):
            call = self._calls.get(module_name, 0)
            self._calls[module_name] = call + 1
            if None in taps and call > 0:
                raise ConfigError(f"layer {module_name!r} runs more than once per forward pass",
                                  where="LayerTaps", expected="one call per tapped name",
                                  got=f"call {call}",
                                  fix=f"tap {module_name + CALL_SEPARATOR}0 .. "
                                      f"{module_name + CALL_SEPARATOR}{call} (calls counted from 0)")
            name = taps.get(None, taps.get(call))
            if name is None:
                return
            reducer = self.reducers[name]
            if not isinstance(out, torch.Tensor):
                raise ConfigError(f"layer {name!r} does not output a tensor", where="LayerTaps",
                                  got=type(out).__name__, fix="tap a submodule with a tensor output")
            red = reducer(out)
            if red.dim() != 2 or red.shape[0] != out.shape[0]:
                raise DataError(f"reducer of layer {name!r} returned a wrong shape",
                                where="LayerTaps", expected=f"[{out.shape[0]}, k]",
                                got=tuple(red.shape))
            if red.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
                red = red.clone()
            self._out[name] = red.detach()
        return hook

    def _start_forward(self, _mod, _args) -> None:
        self._out.clear()
        self._calls.clear()

    def __enter__(self) -> LayerTaps:
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._start_forward))
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and drop any collected output."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._out.clear()

    def pop(self) -> dict[str, torch.Tensor]:
        """Reduced outputs of the last ``model`` forward, in the reducers' order; then forget them.

        Raises
        ------
        ConfigError
            A tapped layer did not run (a branch not taken, or no forward since the last
            ``pop``).
        """
        missing = [n for n in self.reducers if n not in self._out]
        if missing:
            self._out.clear()
            raise ConfigError(f"{len(missing)} tapped layer(s) did not run in the forward pass",
                              where="LayerTaps", got=missing[:5],
                              fix="run model(x) inside the `with` block before pop(); tap layers "
                                  "that the forward pass actually uses")
        out = {n: self._out[n] for n in self.reducers}
        self._out.clear()
        return out
