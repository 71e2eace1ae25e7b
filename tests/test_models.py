"""Model specs and builders: shapes, names, validation, user factories."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from extract.models import ModelSpec, build_model, describe_model
from probestore.errors import ConfigError

pytestmark = pytest.mark.torch


def _out(model, shape, n=2):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(n, *shape))


def test_mlp_depth6_shapes_and_names():
    spec = ModelSpec("mlp", 10, (1, 28, 28), {"depth": 6, "width": 32})
    model = build_model(spec, seed=0)
    assert _out(model, spec.input_shape).shape == (2, 10)
    names = [n for n, _ in model.named_children()]
    expected = ["flatten"] + [f"{k}{i}" for i in range(1, 7) for k in ("fc", "relu")] + ["classifier"]
    assert names == expected
    assert model.fc1.in_features == 784 and all(getattr(model, f"fc{i}").out_features == 32
                                                 for i in range(1, 7))


def test_mlp_default_is_graziani_4096x2():
    model = build_model(ModelSpec("mlp", 10, (1, 28, 28)), seed=0)
    widths = [m.out_features for m in model if isinstance(m, torch.nn.Linear)]
    assert widths == [4096, 4096, 10]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64), (3, 20, 23)])
def test_shallow_cnn_shapes(shape):
    spec = ModelSpec("shallow_cnn", 7, shape, {"channels": 8, "fc": [16, 12]})
    model = build_model(spec, seed=0)
    assert _out(model, shape).shape == (2, 7)
    assert [n for n, _ in model.named_children()] == [
        "conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2", "gap",
        "fc1", "relu3", "fc2", "relu4", "classifier"]
    assert model.conv1.out_channels == 8 and model.fc2.out_features == 12


def test_shallow_cnn_defaults_follow_the_paper():
    model = build_model(ModelSpec("shallow_cnn", 10, (3, 32, 32)), seed=0)
    assert model.conv1.out_channels == 200 and model.conv1.kernel_size == (5, 5)
    assert model.pool1.kernel_size == 3
    assert (model.fc1.out_features, model.fc2.out_features) == (384, 192)
    assert isinstance(model.bn2, torch.nn.BatchNorm2d)


def test_torchvision_resnet18():
    spec = ModelSpec("torchvision:resnet18", 10, (3, 64, 64))
    model = build_model(spec, seed=0)
    assert _out(model, spec.input_shape).shape == (2, 10)
    assert model.fc.out_features == 10


def test_unknown_torchvision_arch_suggests():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_model(ModelSpec("torchvision:resnet19", 10, (3, 64, 64)))


def test_unknown_name_suggests_prefix():
    with pytest.raises(ConfigError, match="torchvision:resnet18"):
        ModelSpec("resnet18", 10, (3, 64, 64))
    with pytest.raises(ConfigError, match="did you mean 'mlp'"):
        ModelSpec("mpl", 10, (1, 28, 28))


def test_bad_torchvision_option_is_a_config_error():
    with pytest.raises(ConfigError, match="refused the options"):
        build_model(ModelSpec("torchvision:resnet18", 10, (3, 64, 64), {"widht": 3}))
    with pytest.raises(ConfigError, match="set by probestore"):
        build_model(ModelSpec("torchvision:resnet18", 10, (3, 64, 64), {"weights": "DEFAULT"}))


def test_seed_makes_init_reproducible_and_leaves_global_rng_alone():
    spec = ModelSpec("mlp", 3, (1, 4, 4), {"hidden": [5]})
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(spec, seed=7).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = build_model(spec, seed=7).state_dict()
    c = build_model(spec, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


@pytest.mark.parametrize("d, fragment", [
    ({"name": "mlp", "num_classes": 10, "input_shape": [1, 28, 28], "optons": {}},
     "did you mean 'options'"),
    ({"name": "mlp", "input_shape": [1, 28, 28]}, "missing required key 'num_classes'"),
    ({"name": "mlp", "num_classes": "10", "input_shape": [1, 28, 28]}, "expected int"),
    ({"name": "mlp", "num_classes": True, "input_shape": [1, 28, 28]}, "expected int"),
    ({"name": "mlp", "num_classes": 10, "input_shape": [28, 28]}, "3 positive integers"),
    ({"name": "mlp", "num_classes": 10, "input_shape": [1, 28, 28], "options": {"hiden": [3]}},
     "did you mean 'hidden'"),
    ({"name": "mlp", "num_classes": 10, "input_shape": [1, 28, 28], "options": {"depth": 3}},
     "missing required key 'width'"),
    ({"name": "mlp", "num_classes": 10, "input_shape": [1, 28, 28],
      "options": {"hidden": [3], "depth": 2, "width": 4}}, "not both"),
    ({"name": "shallow_cnn", "num_classes": 10, "input_shape": [1, 28, 28],
      "options": {"fc": [384, 0]}}, r"options.fc\[1\]"),
])
def test_from_dict_validation(d, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ModelSpec.from_dict(d)


def test_spec_json_round_trip():
    spec = ModelSpec("shallow_cnn", 10, (3, 64, 64), {"channels": 16, "fc": [32, 16]})
    back = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.input_shape == (3, 64, 64)
    assert "shallow_cnn" in describe_model(spec) and "3x64x64" in describe_model(spec)


def test_non_json_options_refused():
    with pytest.raises(ConfigError, match="JSON"):
        ModelSpec("torchvision:resnet18", 10, (3, 64, 64), {"norm_layer": torch.nn.Identity})


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    pkg = tmp_path / "myzoo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch\n"
        "def tiny(num_classes, hidden=4):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, hidden),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))\n"
        "def not_a_model(num_classes):\n"
        "    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "myzoo.nets"
    for name in ("myzoo.nets", "myzoo"):
        sys.modules.pop(name, None)


def test_factory_builds_user_model(factory_module):
    spec = ModelSpec(f"factory:{factory_module}:tiny", 5, (3, 2, 2), {"hidden": 7})
    model = build_model(spec, seed=0)
    assert _out(model, spec.input_shape).shape == (2, 5)
    assert model[1].out_features == 7


@pytest.mark.parametrize("name, fragment", [
    ("factory:nosuchpkg_xyz.mod:f", "cannot import factory module 'nosuchpkg_xyz.mod'"),
    ("factory:myzoo.nets:tiyn", "did you mean 'tiny'"),
    ("factory:myzoo.nets:not_a_model", "did not return a torch.nn.Module"),
])
def test_factory_failures(factory_module, name, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_model(ModelSpec(name, 5, (3, 2, 2)))


def test_bad_factory_path_syntax():
    with pytest.raises(ConfigError, match="factory:package.module:function"):
        ModelSpec("factory:just_a_module", 5, (3, 2, 2))
