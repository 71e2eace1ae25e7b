"""``ab_mnist_convnet``: Alain & Bengio's MNIST convnet (§3.5, Fig. 2) as a built-in model.

The paper probes "the MNIST convolutional model provided by the tensorflow/models github
repository (image/mnist/convolutional.py)" at the ten points of its Fig. 2. These tests
pin the probe names and shapes to that model (conv 5x5 x32, SAME -> 2x2 max-pool -> conv
5x5 x64 -> pool -> fc 512 -> logits), its initialization (the random network is what
Fig. 3 left probes) and the option errors.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch

from extract.layers import list_layers
from extract.models import ModelSpec, build_model
from probestore.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

#: Fig. 2's probes (input first) and their shapes for a 1x28x28 MNIST digit in the
#: TensorFlow model: SAME convolutions keep 28x28, each 2x2 stride-2 pool halves it.
PAPER_SHAPES = {
    "conv1_preact": (32, 28, 28),
    "conv1_postact": (32, 28, 28),
    "conv1_postpool": (32, 14, 14),
    "conv2_preact": (64, 14, 14),
    "conv2_postact": (64, 14, 14),
    "conv2_postpool": (64, 7, 7),
    "fc1_preact": (512,),
    "fc1_postact": (512,),
    "logits": (10,),
}


def spec(**options) -> ModelSpec:
    return ModelSpec("ab_mnist_convnet", 10, (1, 28, 28), options)


def test_probe_points_and_shapes_match_the_paper():
    layers = {d.name: d for d in list_layers(build_model(spec(), seed=0), (1, 28, 28))}
    probed = [name for name in layers if name in PAPER_SHAPES]
    assert probed == list(PAPER_SHAPES)  # the paper's order, input to output
    assert {name: layers[name].output_shape for name in probed} == PAPER_SHAPES
    assert layers["conv1_preact"].n_features == 25088 and layers["conv2_postpool"].n_features == 3136
    assert all(layers[name].n_calls == 1 for name in probed)
    # The only other modules are the flatten and the (training-only) dropout.
    assert set(layers) - set(PAPER_SHAPES) == {"flatten", "fc1_dropout"}


def test_parameters_are_the_tensorflow_models():
    model = build_model(spec(), seed=0)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "conv1_preact.weight": (32, 1, 5, 5), "conv1_preact.bias": (32,),
        "conv2_preact.weight": (64, 32, 5, 5), "conv2_preact.bias": (64,),
        "fc1_preact.weight": (512, 3136), "fc1_preact.bias": (512,),
        "logits.weight": (10, 512), "logits.bias": (10,),
    }  # fmt: skip
    assert sum(p.numel() for p in model.parameters()) == 1_663_370  # the TensorFlow model's count


def test_tensorflow_initialization():
    model = build_model(spec(), seed=0)
    # tf.truncated_normal(stddev=0.1): cut at 2 std, so the std is 0.1 * 0.8796.
    trunc_std = 0.1 * math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
    w = model.fc1_preact.weight
    assert w.abs().max() <= 0.2 and w.std().item() == pytest.approx(trunc_std, rel=0.01)
    assert abs(w.mean().item()) < 1e-3
    assert torch.all(model.conv1_preact.bias == 0)
    for name in ("conv2_preact", "fc1_preact", "logits"):
        assert torch.all(getattr(model, name).bias == 0.1), name
    torch_init = build_model(spec(init="torch"), seed=0)
    assert torch_init.fc1_preact.weight.abs().max() < 0.02  # PyTorch's kaiming-uniform bound 1/sqrt(3136)


def test_dropout_only_in_training_and_same_pooling_on_odd_sizes():
    model = build_model(spec(), seed=0)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        assert not torch.equal(model(x), model(x))
    # TensorFlow's "SAME" 2x2 pooling rounds up: 27 -> 14 -> 7, as 28 does.
    odd = {d.name: d.output_shape for d in list_layers(build_model(
        ModelSpec("ab_mnist_convnet", 10, (1, 27, 27)), seed=0), (1, 27, 27))}
    assert odd["conv1_postpool"] == (32, 14, 14) and odd["conv2_postpool"] == (64, 7, 7)


def test_options_scale_the_widths():
    model = build_model(ModelSpec("ab_mnist_convnet", 3, (3, 32, 32), {"channels": [8, 16], "fc": 20}), seed=0)
    layers = {d.name: d.output_shape for d in list_layers(model, (3, 32, 32))}
    assert layers["conv2_postpool"] == (16, 8, 8) and layers["fc1_postact"] == (20,) and layers["logits"] == (3,)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"channels": [32]}, "exactly two convolutions"),
        ({"channels": [32, 0]}, "positive integer"),
        ({"dropout": 1.0}, "dropout must be a probability"),
        ({"init": "tf"}, "unknown init"),
        ({"widht": 3}, "widht"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, fragment):
    with pytest.raises(ConfigError) as info:
        spec(**options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_the_demo_experiment_uses_the_paper_model_and_every_probe():
    cfg = tomllib.loads((REPO / "experiments" / "mnist_convnet_probes.toml").read_text())
    assert cfg["model"]["name"] == "ab_mnist_convnet"
    # Its options are the defaults, which are the paper's model: same parameters, same init.
    a, b = build_model(spec(**cfg["model"]["options"]), seed=0), build_model(spec(), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert str(a) == str(b)
    assert cfg["extract"]["layers"] == ["input", *PAPER_SHAPES]
    assert 0 in cfg["training"]["save_epochs"] and len(cfg["training"]["save_epochs"]) >= 4
    # Data are found through the candidates, never through an absolute /work path.
    assert cfg["dataset"]["path"][0].startswith("$PROBESTORE_DATA/") and not any(
        p.startswith("/work") for p in cfg["dataset"]["path"])


@pytest.mark.needs_data(REPO.parent / "shared" / "data" / "mnist-t10k")
def test_the_demo_experiment_finds_the_shared_mnist_beside_the_repository(monkeypatch):
    """`make demo` runs in the repository root: the relative candidate finds ../shared/data."""
    from probestore.experiment import load_config

    monkeypatch.delenv("PROBESTORE_DATA", raising=False)
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "experiments" / "mnist_convnet_probes.toml")
    assert Path(cfg.dataset.path).resolve() == (REPO.parent / "shared" / "data" / "mnist-t10k").resolve()
    assert cfg.dataset.subset == "test" and cfg.dataset.max_samples is None  # all 10,000 t10k images
