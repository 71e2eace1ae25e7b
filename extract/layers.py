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

Transformer modules often return a tuple (``(hidden, attention weights)``) or a
``transformers`` ``ModelOutput``. A hook takes one tensor of such an output, by one rule
(:func:`hidden_state`), and ``probestore layers`` says which ("output: tuple, tensor 0
taken"); a module whose output holds no tensor is refused when selected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from probestore.errors import ConfigError, DataError, did_you_mean
from probestore.experiment.extraction import VIEW_SEPARATOR, split_view
from probestore.selectors import select

_HINT = "`probestore layers --model ...` lists them"
#: ``<module>#<k>`` selects the k-th call (0-based) of a module that runs several times
#: per forward pass, e.g. ``layer4.1.relu#1``: the second ReLU of a torchvision
#: BasicBlock, after the residual add (torchvision's feature extractor calls it
#: ``layer4.1.relu_1``). A bare name of such a module is refused (see
#: :func:`check_calls`): storing one call silently would mislabel the features.
CALL_SEPARATOR = "#"
#: Default length of the dummy token sequence fed to a text model when only shapes matter.
DUMMY_TOKENS = 8


def hidden_state(out: Any) -> tuple[torch.Tensor | None, str]:
    """The tensor a probe sees of a module's output, and how it was taken.

    The rule, the same for listing, planning and extraction:

    - a tensor is itself (the note is ``""``);
    - a mapping (a ``transformers`` ``ModelOutput``, or a dict): its ``last_hidden_state``
      when that is a tensor, else its first tensor-valued field in order (``ModelOutput``
      leaves unset fields out): ``"BaseModelOutput, last_hidden_state taken"``;
    - a tuple or list (``(hidden, attention weights)``, the convention of
      ``transformers`` layers): its first element that is a tensor,
      ``"tuple, tensor 0 taken"``;
    - anything else, or a container without a tensor at its top level: ``None``, with
      the output's type as the note (such a module cannot be probed).
    """
    if isinstance(out, torch.Tensor):
        return out, ""
    kind = type(out).__name__
    if isinstance(out, Mapping):
        value = out.get("last_hidden_state")
        if isinstance(value, torch.Tensor):
            return value, f"{kind}, last_hidden_state taken"
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                return value, f"{kind}, {key} taken"
    elif isinstance(out, (tuple, list)):
        for i, value in enumerate(out):
            if isinstance(value, torch.Tensor):
                return value, f"{kind}, tensor {i} taken"
        inner = ", ".join(type(v).__name__ for v in out[:4])
        kind = f"{kind} of ({inner}{', ...' if len(out) > 4 else ''})"
    return None, kind


def no_tensor_error(name: str, note: str, where: str) -> ConfigError:
    """The refusal of a selected module whose output holds no tensor."""
    return ConfigError(f"layer {name!r} outputs no tensor, so it cannot be probed", where=where,
                       expected="a tensor, or a tuple / ModelOutput holding one", got=note,
                       fix=f"select a submodule with a tensor output instead ({_HINT})")


def example_inputs(model: nn.Module, input_shape: Sequence[int],
                   device: str | torch.device = "cpu") -> torch.Tensor | dict[str, torch.Tensor]:
    """A seeded batch of 2 for dry passes, where only shapes matter.

    Images (and any tensor input): ``randn(2, *input_shape)`` in the model's dtype.
    A ``transformers`` text model (fed token ids): token ids and an attention mask of
    ``input_shape[-1]`` tokens for a 1-D shape, else :data:`DUMMY_TOKENS`
    (:func:`extract.hf_models.dummy_text_inputs`). Feed with :func:`call_model`.
    """
    from extract.hf_models import dummy_text_inputs, is_text_model

    shape = tuple(int(s) for s in input_shape)
    if is_text_model(model):
        return dummy_text_inputs(model, length=shape[-1] if len(shape) == 1 else DUMMY_TOKENS, device=device)
    gen = torch.Generator().manual_seed(0)
    return torch.randn((2, *shape), generator=gen).to(device=device, dtype=_param_dtype(model))


def call_model(model: nn.Module, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> Any:
    """``model(**inputs)`` for keyword inputs (token ids, attention mask), else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def split_call(name: str) -> tuple[str, int | None]:
    """``"layer4.1.relu#1"`` -> ``("layer4.1.relu", 1)``; a plain name -> ``(name, None)``.

    A view suffix (``"blocks.3=cls"``, :data:`VIEW_SEPARATOR`) is left out: the module
    and call are those of the layer it views.
    """
    name = split_view(name)[0]
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
    output_note : str
        How the probed tensor was taken from a tuple / ``ModelOutput`` output
        (:func:`hidden_state`, e.g. ``"tuple, tensor 0 taken"``); ``""`` for a tensor.
    """

    name: str
    module_type: str
    output_shape: tuple[int, ...]
    n_features: int
    n_calls: int = 1
    call_shapes: tuple[tuple[int, ...], ...] = ()
    output_note: str = ""


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def list_layers(model: nn.Module, input_shape: Sequence[int],
                device: str | torch.device = "cpu", *,
                inputs: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
                no_tensor: dict[str, str] | None = None) -> list[LayerDescription]:
    """Every named module with a tensor output, from one dry forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        Already on ``device``. Left as it was: the pass runs in eval mode under
        ``torch.inference_mode`` (no batch-norm statistics updated) and the
        train / eval flags are restored afterwards.
    input_shape : sequence of int
        One sample's shape, e.g. ``(C, H, W)``; a seeded batch of 2 is fed
        (:func:`example_inputs`).
    device : str or torch.device, default "cpu"
    inputs : tensor or mapping of str to tensor, optional
        The batch to feed instead (a text model's token ids and attention mask).
    no_tensor : dict, optional
        Filled with ``name -> output type`` for modules that ran but whose output
        holds no tensor (so a caller can say why such a module cannot be selected).

    Returns
    -------
    list of LayerDescription
        In order of first execution. Containers appear too (their output is the
        output of their last child, e.g. ``layer1`` of a ResNet); a tuple or
        ``ModelOutput`` output is described by the tensor :func:`hidden_state` takes
        (``output_note`` says which); the root module, modules that never run and
        modules whose output holds no tensor are left out.
    """
    x = example_inputs(model, input_shape, device) if inputs is None else inputs
    seen: dict[str, list] = {}  # name -> [module_type, [shape of each call], note]
    names = {m: n for n, m in model.named_modules() if n}
    handles = []

    def make_hook(name: str, module: nn.Module):
        def hook(_mod, _args, out):
            tensor, note = hidden_state(out)
            if tensor is not None and tensor.dim() >= 1:
                entry = seen.setdefault(name, [type(module).__name__, [], note])
                entry[1].append(tuple(tensor.shape[1:]))
            elif tensor is None and no_tensor is not None:
                no_tensor.setdefault(name, note)
        return hook

    training = {m: m.training for m in model.modules()}
    try:
        for module, name in names.items():
            handles.append(module.register_forward_hook(make_hook(name, module)))
        model.eval()
        with torch.inference_mode():
            try:
                call_model(model, x)
            except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
                # a shape the model cannot take, or inputs it needs more of: one line, not a traceback
                raise ConfigError(f"a dry forward pass of {type(model).__name__} failed", where="model",
                                  expected=f"a model that takes a batch of inputs of shape {tuple(input_shape)}",
                                  got=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
                                  fix="check the input shape ([dataset] image_size / --input-shape) and the model "
                                      "options; encoder-decoder models (T5, BART) need decoder inputs: probe "
                                      "their encoder's folder instead") from None
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
    return [LayerDescription(n, t, calls[-1], math.prod(calls[-1]), len(calls), tuple(calls), note)
            for n, (t, calls, note) in seen.items()]


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
    views: dict[str | None, int] = {None: -1}  # view -> order of first appearance
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("layer pattern must be a non-empty string", where="layers",
                              got=repr(pattern))
        pat, view = split_view(pattern) if pattern not in names else (pattern, None)
        views.setdefault(view, len(views))
        suffix = "" if view is None else VIEW_SEPARATOR + view
        module, call = split_call(pat)
        if call is not None and pat not in names:
            if module not in names:
                close = did_you_mean(module, names, n=5)
                raise ConfigError(f"layer {pat!r}: no module {module!r}", where="layers",
                                  expected=f"a dotted module name of {type(model).__name__}, then #K",
                                  got=repr(pat), fix=(close + " " if close else "") + _HINT)
            chosen.add(pat + suffix)
            continue
        found = select(names, pat, what="layer", where=f"layers (modules of {type(model).__name__})",
                       hint=_HINT)  # exact names and globs, as every --layers
        chosen.update(n + suffix for n in found)
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=lambda n: (order[split_call(n)[0]], split_call(n)[1] or 0,
                                         views[split_view(n)[1] if n not in names else None]))


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
    of keeping one call silently. A tuple or ``ModelOutput`` output is reduced through
    the tensor :func:`hidden_state` takes; an output without a tensor is refused.
    """

    def __init__(self, model: nn.Module, reducers: Mapping[str, nn.Module]) -> None:
        modules = dict(model.named_modules())
        # module -> call (None: bare) -> tapped names (several views of one output: blocks.3=cls, =mean)
        self._taps: dict[str, dict[int | None, list[str]]] = {}
        for name in reducers:
            module, call = split_call(name)
            if module not in modules or not module:
                raise ConfigError(f"unknown layer {name!r}", where="LayerTaps",
                                  got=repr(name),
                                  fix=(did_you_mean(module, [n for n in modules if n]) + " " + _HINT).strip())
            self._taps.setdefault(module, {}).setdefault(call, []).append(name)
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
            names = taps.get(None, taps.get(call))
            if not names:
                return
            out, note = hidden_state(out)
            if out is None:
                raise no_tensor_error(names[0], note, "LayerTaps")
            for name in names:
                self._out[name] = self._reduce(name, out)
        return hook

    def _reduce(self, name: str, out: torch.Tensor) -> torch.Tensor:
        reducer = self.reducers[name]
        red = reducer(out)
        # Token reducers (extract.token_reductions) return this batch's rows, not one per input.
        rows = cast(Any, reducer).expected_rows() if getattr(reducer, "token_rows", False) else out.shape[0]
        if red.dim() != 2 or red.shape[0] != rows:
            raise DataError(f"reducer of layer {name!r} returned a wrong shape",
                            where="LayerTaps", expected=f"[{rows}, k]",
                            got=tuple(red.shape))
        if red.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
            red = red.clone()
        return red.detach()

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
