"""Model architectures by name, so that a store can record how to rebuild its model.

A checkpoint holds weights, not code. To load one (or to draw the "epoch 0" random
network of Graziani et al. 2019) probestore needs the architecture as data: a
:class:`ModelSpec` (name, number of classes, input shape, options) that is stored as
JSON beside the activations and turned back into a ``torch.nn.Module`` by
:func:`build_model`.

Names:

``"mlp"``
    Graziani et al.'s MNIST MLP, ``fc(4096)-fc(4096)-fc(#classes)`` with ReLU
    (footnote 2); ``depth`` + ``width`` gives the six-hidden-layer variant of their Fig. 4.
``"shallow_cnn"``
    Their ImageNet10 network after Arpit et al. 2017 (footnote 3):
    ``conv(200,5x5)-mp(3x3)-conv(200,5x5)-mp(3x3)-gap-fc(384)-fc(192)-fc(#classes)`` with
    batch-norm and ReLU.
``"ab_mnist_convnet"``
    Alain & Bengio's (2016, §3.5, Fig. 2) MNIST convnet, the model of
    tensorflow/models ``image/mnist/convolutional.py``:
    ``conv(32,5x5)-relu-mp(2x2)-conv(64,5x5)-relu-mp(2x2)-fc(512)-relu-dropout-fc(#classes)``
    with that file's initialization; its modules are named after the paper's probes
    (``conv1_preact``, ``conv1_postact``, ``conv1_postpool``, ..., ``fc1_postact``,
    ``logits``).
``"torchvision:<arch>"``
    Any torchvision classification model, randomly initialised (no downloads).
``"timm:<name>"``
    Any ``timm`` model (``timm.create_model(name, num_classes=..., pretrained=False,
    **options)``), randomly initialised: weights come from checkpoints, never from the
    hub (:mod:`extract.timm_models`).
``"hf:<folder>"``
    The architecture of a Hugging Face ``save_pretrained`` folder, read offline, at a
    seeded random initialization; the folder's weights are a checkpoint
    (:mod:`extract.hf_models`).
``"factory:package.module:function"``
    A user's own factory. This imports and runs user code *by design*: a model spec is
    trusted configuration, like a Python file, unlike a checkpoint (which is never
    unpickled as code, see :mod:`extract.checkpoints`).

Module names are chosen to read well as probe names (``fc1``, ``relu1``, ...,
``classifier``), since :mod:`extract.layers` addresses layers by dotted name.

*The head* of any model is the last ``nn.Linear`` its forward pass reaches
(:func:`find_head`): ``fc`` of a torchvision ResNet, ``classifier.6`` of VGG,
``classifier`` of ``mlp`` / ``shallow_cnn``, ``logits`` of ``ab_mnist_convnet``. Its
width is ``num_classes``, which for a pretrained network is its own label set (1,000
for ImageNet), not the dataset's; ``head = "drop"`` leaves it out of loading and of
the stored outputs (:mod:`probestore.experiment.model`).
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probestore.errors import ConfigError, did_you_mean
from probestore.fields import check_keys, check_type

BUILTIN = ("mlp", "shallow_cnn", "ab_mnist_convnet")
HEAD_MODES = ("keep", "drop")
_PREFIXES = ("torchvision:", "factory:", "timm:", "hf:")
_MLP_OPTIONS = ("hidden", "depth", "width")
_CNN_OPTIONS = ("channels", "fc")
_AB_OPTIONS = ("channels", "fc", "dropout", "init")
_AB_INITS = ("tensorflow", "torch")
_FACTORY_RE = re.compile(r"^factory:([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")


@dataclass(frozen=True)
class ModelSpec:
    """An architecture as data: enough to rebuild the model that a checkpoint fits.

    Attributes
    ----------
    name : str
        ``"mlp"``, ``"shallow_cnn"``, ``"torchvision:<arch>"`` or
        ``"factory:package.module:function"``.
    num_classes : int
        Size of the classifier output.
    input_shape : tuple of int
        ``(C, H, W)`` of one input sample; ``(T,)``, the tokens, for a text model (``hf:``).
    options : dict
        Architecture options (JSON-able); see :func:`build_model`.
    head : {"keep", "drop"}
        ``"drop"``: only the hidden layers are probed; the head (:func:`find_head`) is
        not loaded from checkpoints and its outputs are not stored.
    class_names : tuple of str, optional
        The model's own class names (``num_classes`` of them), e.g. ImageNet's.
    class_map : dict of str to int, optional
        Dataset class name -> model class index: the logits the model-output analyses
        use when the head's classes are not the dataset's.

    ``head``, ``class_names`` and ``class_map`` are recorded (:meth:`to_dict`) only when
    not default, so the spec of a model without them is what it always was.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    head: str = "keep"
    class_names: tuple[str, ...] | None = None
    class_map: dict[str, int] | None = None

    def __post_init__(self) -> None:
        where = "model spec"
        check_type(self.name, str, where=f"{where}.name")
        check_type(self.num_classes, int, where=f"{where}.num_classes")
        if self.num_classes < 1:
            raise ConfigError("num_classes must be positive", where=f"{where}.num_classes",
                              expected=">= 1", got=self.num_classes)
        shape = self.input_shape
        # token ids: (T,); a user factory may be a text model too (a text dataset gives (max_length,))
        text = isinstance(self.name, str) and self.name.startswith(("hf:", "factory:"))
        if (not isinstance(shape, (tuple, list)) or len(shape) not in ((1, 3) if text else (3,))
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)):
            raise ConfigError("bad input_shape", where=f"{where}.input_shape",
                              expected="3 positive integers (C, H, W)" + (", or 1, the tokens (T,) of a text model"
                                                                           if text else ""), got=repr(shape))
        object.__setattr__(self, "input_shape", tuple(shape))
        if not isinstance(self.options, Mapping) or not all(isinstance(k, str) for k in self.options):
            raise ConfigError("options must be a table with string keys", where=f"{where}.options",
                              got=repr(self.options))
        object.__setattr__(self, "options", dict(self.options))
        try:
            json.dumps(self.options, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError("options are not JSON-able, so the store could not record them",
                              where=f"{where}.options", got=str(exc),
                              fix="use numbers, strings, booleans, lists and tables only") from None
        _check_name(self.name)
        self._check_head()
        if self.name == "mlp":
            _mlp_widths(self.options)
        elif self.name == "shallow_cnn":
            _cnn_options(self.options)
        elif self.name == "ab_mnist_convnet":
            _ab_options(self.options)
        elif self.name.startswith("hf:"):
            from extract.hf_models import check_options

            check_options(self.options, f"{where}.options")

    def _check_head(self) -> None:
        where = "model spec"
        if self.head not in HEAD_MODES:
            raise ConfigError(f"unknown head mode {self.head!r}", where=f"{where}.head",
                              expected="'keep' or 'drop'", got=repr(self.head))
        if self.class_names is not None:
            names = tuple(check_type(self.class_names, (list, tuple), where=f"{where}.class_names"))
            if len(names) != self.num_classes or not all(isinstance(n, str) for n in names):
                raise ConfigError("class_names must name every output", where=f"{where}.class_names",
                                  expected=f"{self.num_classes} strings (num_classes)", got=f"{len(names)} entries")
            object.__setattr__(self, "class_names", names)
        if self.class_map is not None:
            table = check_type(self.class_map, dict, where=f"{where}.class_map")
            for key, index in table.items():
                check_type(index, int, where=f"{where}.class_map.{key}")
                if not 0 <= index < self.num_classes:
                    raise ConfigError("model class index outside the head", where=f"{where}.class_map.{key}",
                                      expected=f"0 <= index < {self.num_classes}", got=index)
            if self.head == "drop":
                raise ConfigError("class_map with head = 'drop'", where=f"{where}.class_map",
                                  fix="remove class_map, or keep the head")
            object.__setattr__(self, "class_map", dict(table))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, the inverse of :meth:`from_dict` (defaults of the head keys left out)."""
        out: dict[str, Any] = {"name": self.name, "num_classes": self.num_classes,
                               "input_shape": list(self.input_shape), "options": dict(self.options)}
        if self.head != "keep":
            out["head"] = self.head
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        if self.class_map is not None:
            out["class_map"] = dict(self.class_map)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Validate and build from a JSON / TOML table (unknown keys refused)."""
        check_keys(d, ("name", "num_classes", "input_shape", "options", "head", "class_names", "class_map"),
                   where="model spec", required=("name", "num_classes", "input_shape"))
        shape = check_type(d["input_shape"], (list, tuple), where="model spec.input_shape")
        names = d.get("class_names")
        return cls(name=d["name"], num_classes=d["num_classes"], input_shape=tuple(shape),
                   options=check_type(d.get("options", {}), dict, where="model spec.options"),
                   head=check_type(d.get("head", "keep"), str, where="model spec.head"),
                   class_names=None if names is None else tuple(check_type(names, list, where="model spec.class_names")),
                   class_map=d.get("class_map"))

    def network_dict(self) -> dict[str, Any]:
        """What determines the network's units (no head mode, class names or map): the
        input of the architecture id, so runs that differ only in those share random indices."""
        d = self.to_dict()
        d.pop("head", None)
        d.pop("class_names", None)
        d.pop("class_map", None)
        return d


def _check_name(name: str) -> None:
    if name in BUILTIN or name.startswith("torchvision:"):
        return
    if name.startswith(("timm:", "hf:")):
        if not name.split(":", 1)[1]:
            raise ConfigError("model name without its part after the prefix", where="model spec.name",
                              expected="'timm:<model name>' or 'hf:<folder>'", got=repr(name))
        return
    if name.startswith("factory:"):
        if not _FACTORY_RE.match(name):
            raise ConfigError("bad factory path", where="model spec.name",
                              expected="'factory:package.module:function'", got=repr(name))
        return
    fix = did_you_mean(name, [*BUILTIN, "torchvision:", "factory:"])
    if re.fullmatch(r"[a-z0-9_]+", name):
        fix = (fix + " " if fix else "") + f"for a torchvision model write 'torchvision:{name}'"
    raise ConfigError(f"unknown model {name!r}", where="model spec.name",
                      expected="'mlp', 'shallow_cnn', 'ab_mnist_convnet', 'torchvision:<arch>', "
                               "'timm:<name>', 'hf:<folder>' or 'factory:package.module:function'",
                      got=repr(name), fix=fix or None)


def _positive_int(value: Any, where: str) -> int:
    check_type(value, int, where=where)
    if value < 1:
        raise ConfigError("must be a positive integer", where=where, expected=">= 1", got=value)
    return value


def _int_list(value: Any, where: str) -> list[int]:
    check_type(value, (list, tuple), where=where)
    return [_positive_int(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _mlp_widths(options: Mapping[str, Any]) -> list[int]:
    check_keys(options, _MLP_OPTIONS, where="model spec.options (mlp)")
    if "hidden" in options:
        if "depth" in options or "width" in options:
            raise ConfigError("give either hidden or depth + width, not both",
                              where="model spec.options (mlp)", got=sorted(options))
        return _int_list(options["hidden"], "model spec.options.hidden")
    if "depth" in options or "width" in options:
        check_keys(options, _MLP_OPTIONS, where="model spec.options (mlp)",
                   required=("depth", "width"))
        depth = _positive_int(options["depth"], "model spec.options.depth")
        return [_positive_int(options["width"], "model spec.options.width")] * depth
    return [4096, 4096]


def _cnn_options(options: Mapping[str, Any]) -> tuple[int, list[int]]:
    check_keys(options, _CNN_OPTIONS, where="model spec.options (shallow_cnn)")
    channels = _positive_int(options.get("channels", 200), "model spec.options.channels")
    fc = _int_list(options.get("fc", [384, 192]), "model spec.options.fc")
    return channels, fc


def _ab_options(options: Mapping[str, Any]) -> tuple[list[int], int, float, str]:
    """Options of ``ab_mnist_convnet``; the defaults are the paper's model."""
    where = "model spec.options (ab_mnist_convnet)"
    check_keys(options, _AB_OPTIONS, where=where)
    channels = _int_list(options.get("channels", [32, 64]), "model spec.options.channels")
    if len(channels) != 2:
        raise ConfigError("the convnet has exactly two convolutions", where="model spec.options.channels",
                          expected="2 positive integers, e.g. [32, 64] (the paper's)", got=channels)
    fc = _positive_int(options.get("fc", 512), "model spec.options.fc")
    dropout = check_type(options.get("dropout", 0.5), (int, float), where="model spec.options.dropout")
    if isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ConfigError("dropout must be a probability", where="model spec.options.dropout",
                          expected="0 <= dropout < 1 (the paper's model: 0.5)", got=dropout)
    init = check_type(options.get("init", "tensorflow"), str, where="model spec.options.init")
    if init not in _AB_INITS:
        raise ConfigError("unknown init", where="model spec.options.init",
                          expected="'tensorflow' (the paper's model) or 'torch' (PyTorch defaults)",
                          got=repr(init), fix=did_you_mean(init, _AB_INITS) or "use 'tensorflow'")
    return channels, fc, float(dropout), init


class GlobalAvgPool(nn.Module):
    """Mean over (H, W) returning ``[N, C]``: one named layer instead of pool + flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def make_mlp(in_shape: tuple[int, int, int], num_classes: int, widths: list[int]) -> nn.Sequential:
    """``flatten, fc1, relu1, ..., fcN, reluN, classifier`` as direct children."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    n_in = math.prod(in_shape)
    for i, w in enumerate(widths, start=1):
        layers += [(f"fc{i}", nn.Linear(n_in, w)), (f"relu{i}", nn.ReLU())]
        n_in = w
    layers.append(("classifier", nn.Linear(n_in, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def make_shallow_cnn(in_channels: int, num_classes: int, channels: int = 200,
                     fc: list[int] | None = None) -> nn.Sequential:
    """Graziani et al.'s shallow CNN; layer names are the probe names.

    ``conv1, bn1, relu1, pool1, conv2, bn2, relu2, pool2, gap, fc1, relu3, fc2, relu4,
    classifier`` (one ``fcI, relu(I+2)`` pair per entry of ``fc``). Convolutions use
    padding 2 ("same") and the 3x3 max-pools stride 2 with padding 1, as in the
    TensorFlow CIFAR-10 model that Arpit et al.'s fc(384)-fc(192) setup comes from; so
    any input of at least 1x1 works and 28x28 maps to 7x7, 64x64 to 16x16 before ``gap``.
    Batch-norm follows each convolution (the fc layers have none), ReLU is not in-place
    so that every named output is the tensor a probe should see.
    """
    fc = [384, 192] if fc is None else list(fc)
    layers: list[tuple[str, nn.Module]] = []
    c_in = in_channels
    for i in (1, 2):
        layers += [
            (f"conv{i}", nn.Conv2d(c_in, channels, kernel_size=5, padding=2)),
            (f"bn{i}", nn.BatchNorm2d(channels)),
            (f"relu{i}", nn.ReLU()),
            (f"pool{i}", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
        c_in = channels
    layers.append(("gap", GlobalAvgPool()))
    n_in = channels
    for i, w in enumerate(fc, start=1):
        layers += [(f"fc{i}", nn.Linear(n_in, w)), (f"relu{i + 2}", nn.ReLU())]
        n_in = w
    layers.append(("classifier", nn.Linear(n_in, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def make_ab_mnist_convnet(in_shape: tuple[int, int, int], num_classes: int, channels: list[int] | None = None,
                          fc: int = 512, dropout: float = 0.5, init: str = "tensorflow") -> nn.Sequential:
    """Alain & Bengio's MNIST convnet (§3.5, Fig. 2), one named module per probe.

    The paper probes "the MNIST convolutional model provided by the tensorflow/models
    github repository (image/mnist/convolutional.py)", on each side of each
    convolution, activation and pooling (Fig. 2). That model is rebuilt here with the
    paper's probe names as module names::

        conv1_preact   conv 5x5, 32 filters, stride 1, "SAME" padding   [32, 28, 28]
        conv1_postact  ReLU                                              [32, 28, 28]
        conv1_postpool max-pool 2x2, stride 2                            [32, 14, 14]
        conv2_preact   conv 5x5, 64 filters, "SAME"                      [64, 14, 14]
        conv2_postact  ReLU                                              [64, 14, 14]
        conv2_postpool max-pool 2x2, stride 2                            [64, 7, 7]
        flatten
        fc1_preact     fully connected, 512 units                        [512]
        fc1_postact    ReLU                                              [512]
        fc1_dropout    dropout 0.5 (training only, as in the TensorFlow model)
        logits         fully connected, #classes                         [10]

    (shapes for a 1x28x28 input). ``init="tensorflow"`` copies that file's
    initialization, which matters here because the paper probes the *random* network
    (Fig. 3, left): every weight ~ truncated normal (std 0.1, cut at 2 std), biases 0
    for conv1 and 0.1 for the others. ``init="torch"`` keeps PyTorch's defaults.
    The TensorFlow file's input scaling, (pixel - 127.5) / 255, is the dataset's
    ``normalize = "explicit"``, ``mean = [0.5]``, ``std = [1.0]``.
    """
    c1, c2 = [32, 64] if channels is None else list(channels)
    c_in, h, w = in_shape
    h4, w4 = _pool_out(_pool_out(h)), _pool_out(_pool_out(w))
    layers: list[tuple[str, nn.Module]] = [
        ("conv1_preact", nn.Conv2d(c_in, c1, kernel_size=5, padding=2)),
        ("conv1_postact", nn.ReLU()),
        ("conv1_postpool", nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)),
        ("conv2_preact", nn.Conv2d(c1, c2, kernel_size=5, padding=2)),
        ("conv2_postact", nn.ReLU()),
        ("conv2_postpool", nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)),
        ("flatten", nn.Flatten()),
        ("fc1_preact", nn.Linear(c2 * h4 * w4, fc)),
        ("fc1_postact", nn.ReLU()),
        ("fc1_dropout", nn.Dropout(dropout)),
        ("logits", nn.Linear(fc, num_classes)),
    ]
    model = nn.Sequential(OrderedDict(layers))
    if init == "tensorflow":
        with torch.no_grad():
            for name, module in model.named_children():
                if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                    nn.init.trunc_normal_(module.weight, std=0.1, a=-0.2, b=0.2)
                    nn.init.constant_(module.bias, 0.0 if name == "conv1_preact" else 0.1)
    return model


def _pool_out(n: int) -> int:
    """Output size of a 2x2, stride-2 max-pool with TensorFlow's "SAME" padding."""
    return -(-n // 2)


def _torchvision_model(arch: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    import torchvision
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if arch not in known:
        raise ConfigError(f"unknown torchvision classification model {arch!r}",
                          where="model spec.name",
                          expected=f"one of torchvision.models.list_models() ({len(known)} names)",
                          got=repr(arch), fix=did_you_mean(arch, known) or "check the spelling")
    kwargs = dict(options)
    if arch in ("inception_v3", "googlenet"):
        # Their auxiliary heads change the output type in train mode; their init warns
        # unless asked explicitly. Without pretrained weights both are free choices.
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    for banned in ("weights", "num_classes", "pretrained"):
        if banned in kwargs:
            raise ConfigError(f"option {banned!r} is set by probestore", where="model spec.options",
                              got=repr(kwargs[banned]),
                              fix="remove it (weights come from checkpoints, classes from num_classes)")
    try:
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torchvision {torchvision.__version__} refused the options of {arch!r}",
                          where="model spec.options", got=str(exc),
                          fix="use keyword arguments of torchvision.models." + arch) from None


def _factory_model(name: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    m = _FACTORY_RE.match(name)
    assert m is not None  # checked by ModelSpec
    module_path, func_name = m.groups()
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ConfigError(f"cannot import factory module {module_path!r}", where=f"model {name!r}",
                          got=f"{type(exc).__name__}: {exc}",
                          fix="check the module path and that it is on PYTHONPATH") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(f"module {module_path!r} has no function {func_name!r}",
                          where=f"model {name!r}", got=repr(func_name),
                          fix=did_you_mean(func_name, public) or "check the function name")
    model = func(num_classes=num_classes, **options)
    if not isinstance(model, nn.Module):
        raise ConfigError("factory did not return a torch.nn.Module", where=f"model {name!r}",
                          expected="torch.nn.Module", got=type(model).__name__)
    return model


@dataclass(frozen=True)
class HeadInfo:
    """Where a network's head is: the module whose outputs are the logits.

    Attributes
    ----------
    name : str
        Dotted module name (``fc`` for a torchvision ResNet, ``classifier.6`` for VGG,
        ``classifier`` for the built-in ``mlp`` / ``shallow_cnn``, ``logits`` for
        ``ab_mnist_convnet``).
    out_features : int
        Its width (the model's number of classes).
    after : tuple of str
        Modules whose output is produced after the head's (its parent containers and
        whatever follows it): with ``head = "drop"`` they carry the unloaded head's
        values, so they cannot be probed.
    """

    name: str
    out_features: int
    after: tuple[str, ...] = ()

    def owns(self, key: str) -> bool:
        """Whether a state-dict key belongs to the head (``fc.weight``, ``fc.bias``)."""
        return key.startswith(self.name + ".")


def find_head(model: nn.Module, input_shape: tuple[int, ...] | list[int], *,
              device: str | torch.device = "cpu") -> HeadInfo | None:
    """The head of ``model``: the last ``nn.Linear`` reached by a forward pass.

    The rule is general (no per-architecture table): a classification network ends in
    a linear layer whose outputs are the logits, possibly followed by reshapes or
    pooling in no other linear layer. One dry forward of a 2-sample zero batch (eval
    mode) records the order in which modules finish; None when no ``nn.Linear`` runs
    (SqueezeNet's head is a convolution: it cannot drop its head).
    """
    order: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=name: order.append(n))
               for name, m in model.named_modules()]
    from extract.hf_models import dummy_text_inputs, is_text_model

    text = is_text_model(model)  # token ids, not a float tensor of input_shape
    x = dummy_text_inputs(model, device=device) if text else torch.zeros(
        (2, *input_shape), device=device,
        dtype=next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32))
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(**x) if text else model(x)  # type: ignore[arg-type, operator]
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    linear = [i for i, n in enumerate(order) if isinstance(modules[n], nn.Linear)]
    if not linear:
        return None
    last = linear[-1]
    name = order[last]
    after = tuple(dict.fromkeys(n for n in order[last + 1:] if n and n != name))
    return HeadInfo(name, int(modules[name].out_features), after)  # type: ignore[arg-type]


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """Instantiate ``spec`` with random weights, on CPU, in train mode.

    Parameters
    ----------
    spec : ModelSpec
    seed : int, optional
        Seed for the initial weights. Given, the build is reproducible and the global
        torch RNG is left untouched; None draws from the global RNG (seed it with
        ``torch.manual_seed``).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ConfigError
        Unknown architecture (with did-you-mean), bad options, unimportable factory.
    """
    if not isinstance(spec, ModelSpec):
        raise ConfigError("build_model needs a ModelSpec", expected="ModelSpec",
                          got=type(spec).__name__, fix="use ModelSpec.from_dict(...)")
    if seed is None:
        return _build(spec)
    check_type(seed, int, where="build_model(seed=...)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(spec)


def _image_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """``(C, H, W)`` of a built-in's spec (ModelSpec allows one number only for ``hf:`` text models)."""
    c, h, w = spec.input_shape
    return c, h, w


def _build(spec: ModelSpec) -> nn.Module:
    if spec.name == "mlp":
        return make_mlp(_image_shape(spec), spec.num_classes, _mlp_widths(spec.options))
    if spec.name == "shallow_cnn":
        channels, fc = _cnn_options(spec.options)
        return make_shallow_cnn(spec.input_shape[0], spec.num_classes, channels, fc)
    if spec.name == "ab_mnist_convnet":
        ab_channels, ab_fc, dropout, init = _ab_options(spec.options)
        return make_ab_mnist_convnet(_image_shape(spec), spec.num_classes, ab_channels, ab_fc, dropout, init)
    if spec.name.startswith("torchvision:"):
        return _torchvision_model(spec.name.split(":", 1)[1], spec.num_classes, spec.options)
    if spec.name.startswith("timm:"):
        from extract.timm_models import build_timm_model

        return build_timm_model(spec.name.split(":", 1)[1], spec.num_classes, spec.input_shape, spec.options)
    if spec.name.startswith("hf:"):
        from extract.hf_models import build_hf_model

        return build_hf_model(spec.name.split(":", 1)[1], spec.num_classes, spec.options)
    return _factory_model(spec.name, spec.num_classes, spec.options)


def describe_model(spec: ModelSpec) -> str:
    """One line for logs and ``probestore info``, e.g. ``mlp(hidden=[4096, 4096]) 1x28x28 -> 10``."""
    opts = ", ".join(f"{k}={v!r}" for k, v in sorted(spec.options.items()))
    shape = "x".join(map(str, spec.input_shape))
    return f"{spec.name}({opts}) {shape} -> {spec.num_classes} classes"
