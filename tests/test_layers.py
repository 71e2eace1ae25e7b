"""Layer listing, selection and taps, checked against a manual forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from extract.layers import LayerTaps, list_layers, select_layers
from extract.models import ModelSpec, build_model
from extract.reductions import build_reducer, plan_reduction
from probestore.errors import ConfigError

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def mlp():
    return build_model(ModelSpec("mlp", 10, (1, 28, 28), {"depth": 3, "width": 16}), seed=0).eval()


@pytest.fixture(scope="module")
def cnn():
    spec = ModelSpec("shallow_cnn", 5, (3, 64, 64), {"channels": 8, "fc": [12, 6]})
    return build_model(spec, seed=0)


@pytest.fixture(scope="module")
def resnet():
    return build_model(ModelSpec("torchvision:resnet18", 10, (3, 32, 32)), seed=0).eval()


def _x(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_list_layers_mlp(mlp):
    got = {d.name: (d.module_type, d.output_shape, d.n_features) for d in list_layers(mlp, (1, 28, 28))}
    assert list(got) == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3", "relu3", "classifier"]
    assert got["flatten"] == ("Flatten", (784,), 784)
    assert got["fc2"] == ("Linear", (16,), 16)
    assert got["classifier"] == ("Linear", (10,), 10)


def test_list_layers_cnn_shapes(cnn):
    got = {d.name: d.output_shape for d in list_layers(cnn, (3, 64, 64))}
    assert got["conv1"] == (8, 64, 64) and got["relu1"] == (8, 64, 64)
    assert got["pool1"] == (8, 32, 32) and got["pool2"] == (8, 16, 16)
    assert got["gap"] == (8,) and got["fc1"] == (12,) and got["relu4"] == (6,)
    assert got["classifier"] == (5,)


def test_list_layers_leaves_model_untouched(cnn):
    cnn.train()
    cnn.fc1.eval()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    list_layers(cnn, (3, 64, 64))
    assert cnn.training and cnn.conv1.training and not cnn.fc1.training
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())  # BN stats too
    cnn.fc1.train()


def test_list_layers_resnet_containers_and_shared_modules(resnet):
    got = {d.name: d for d in list_layers(resnet, (3, 32, 32))}
    assert got["layer1"].output_shape == (64, 8, 8) and got["layer1"].module_type == "Sequential"
    assert got["layer4.1"].output_shape == (512, 1, 1)
    assert got["layer1.0.relu"].n_calls == 2 and got["conv1"].n_calls == 1
    assert got["fc"].output_shape == (10,)


def test_select_globs_in_model_order(mlp, resnet):
    assert select_layers(mlp, ["relu*"]) == ["relu1", "relu2", "relu3"]
    assert select_layers(mlp, ["classifier", "fc*", "fc2"]) == ["fc1", "fc2", "fc3", "classifier"]
    assert select_layers(resnet, ["layer*.relu", "layer4"]) == [
        "layer1.0.relu", "layer1.1.relu", "layer2.0.relu", "layer2.1.relu", "layer3.0.relu",
        "layer3.1.relu", "layer4", "layer4.0.relu", "layer4.1.relu"]
    assert select_layers(resnet, ["layer2.*"])[:3] == ["layer2.0", "layer2.0.conv1", "layer2.0.bn1"]


def test_unknown_layer_names_closest(resnet, mlp):
    with pytest.raises(ConfigError) as info:
        select_layers(resnet, ["layer4.1.relu", "layer5"])
    msg = str(info.value)
    assert "'layer5'" in msg and "did you mean 'layer4'" in msg
    assert "`probestore layers --model ...` lists them" in msg
    with pytest.raises(ConfigError, match="did you mean 'fc1'"):
        select_layers(mlp, ["fc1*x"])
    with pytest.raises(ConfigError, match="no layers selected"):
        select_layers(mlp, [])


def _manual_cnn_outputs(model, x):
    outs = {}
    h = x
    for name, module in model.named_children():
        h = module(h)
        outs[name] = h
    return outs


def test_taps_equal_manual_forward_and_reduction(cnn):
    cnn.eval()
    shape = (3, 64, 64)
    descs = {d.name: d for d in list_layers(cnn, shape)}
    specs = {"conv1": "gap", "relu2": "random:20", "fc1": "flatten", "classifier": "project:4",
             "pool1": "gmp"}
    names = select_layers(cnn, list(specs))
    plans = {n: plan_reduction(specs[n], n, descs[n].output_shape, seed=1) for n in names}
    reducers = {n: build_reducer(plans[n]) for n in names}
    x = _x(4, *shape)
    with torch.inference_mode(), LayerTaps(cnn, reducers) as taps:
        logits = cnn(x)
        got = taps.pop()
    assert list(got) == ["conv1", "pool1", "relu2", "fc1", "classifier"]
    with torch.inference_mode():
        manual = _manual_cnn_outputs(cnn, x)
    torch.testing.assert_close(logits, manual["classifier"], rtol=0, atol=0)
    torch.testing.assert_close(got["conv1"], manual["conv1"].mean(dim=(2, 3)), rtol=0, atol=0)
    torch.testing.assert_close(got["pool1"], manual["pool1"].amax(dim=(2, 3)), rtol=0, atol=0)
    idx = torch.as_tensor(plans["relu2"].indices)
    torch.testing.assert_close(got["relu2"], manual["relu2"].flatten(1)[:, idx], rtol=0, atol=0)
    torch.testing.assert_close(got["fc1"], manual["fc1"], rtol=0, atol=0)
    w = torch.from_numpy(plans["classifier"].projection_matrix())
    torch.testing.assert_close(got["classifier"], manual["classifier"] @ w, rtol=1e-6, atol=1e-6)
    assert all(v.shape == (4, plans[n].n_features) for n, v in got.items())


def test_inplace_relu_does_not_corrupt_tapped_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(inplace=True), nn.Linear(32, 3)).eval()
    x = _x(5, 6)
    expected = model[0](x).detach()
    assert (expected < 0).any()  # the later in-place ReLU would zero these
    plans = {"0": plan_reduction("flatten", "0", (32,)), "1": plan_reduction("random:8", "1", (32,))}
    # nn.Flatten returns a view of the output: LayerTaps must copy it before the ReLU runs
    reducers = {"0": nn.Flatten(), "1": build_reducer(plans["1"])}
    with torch.no_grad(), LayerTaps(model, reducers) as taps:
        model(x)
        got = taps.pop()
    torch.testing.assert_close(got["0"], expected, rtol=0, atol=0)
    idx = torch.as_tensor(plans["1"].indices)
    torch.testing.assert_close(got["1"], expected.relu()[:, idx], rtol=0, atol=0)


def test_shared_module_is_tapped_per_call_never_by_its_bare_name(resnet):
    # BasicBlock applies its relu after bn1 (call #0) and after the residual add (#1).
    names = ("layer1.0.bn1", "layer1.0.relu#0", "layer1.0.relu#1", "layer1.0")
    plans = {n: plan_reduction("gap", n, (64, 8, 8)) for n in names}
    with torch.inference_mode(), LayerTaps(resnet, {n: build_reducer(p) for n, p in plans.items()}) as taps:
        resnet(_x(2, 3, 32, 32))
        got = taps.pop()
    torch.testing.assert_close(got["layer1.0.relu#1"], got["layer1.0"], rtol=0, atol=0)
    assert not torch.equal(got["layer1.0.relu#0"], got["layer1.0.relu#1"])
    bare = {"layer1.0.relu": build_reducer(plan_reduction("gap", "layer1.0.relu", (64, 8, 8)))}
    with torch.inference_mode(), LayerTaps(resnet, bare), \
            pytest.raises(ConfigError, match=r"runs more than once.*layer1\.0\.relu#0"):
        resnet(_x(2, 3, 32, 32))


def test_each_forward_starts_afresh_and_pop_needs_a_forward(mlp):
    red = {"fc1": build_reducer(plan_reduction("flatten", "fc1", (16,)))}
    x1, x2 = _x(2, 1, 28, 28, seed=1), _x(2, 1, 28, 28, seed=2)
    with torch.no_grad(), LayerTaps(mlp, red) as taps:
        with pytest.raises(ConfigError, match="did not run"):
            taps.pop()
        mlp(x1)
        mlp(x2)
        got = taps.pop()["fc1"]
        with pytest.raises(ConfigError, match="did not run"):
            taps.pop()
    torch.testing.assert_close(got, mlp.fc1(x2.flatten(1)), rtol=0, atol=0)


def test_taps_under_autocast_store_float32(cnn):
    cnn.eval()
    red = {"conv2": build_reducer(plan_reduction("gap", "conv2", (8, 32, 32)))}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), LayerTaps(cnn, red) as taps:
        cnn(_x(2, 3, 64, 64))
        got = taps.pop()["conv2"]
    assert got.dtype == torch.float32 and got.shape == (2, 8)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_on_exit_and_on_error(mlp):
    red = {"fc1": build_reducer(plan_reduction("flatten", "fc1", (16,)))}
    assert _hook_count(mlp) == 0
    with LayerTaps(mlp, red):
        assert _hook_count(mlp) == 2  # the layer's hook and the root's pre-hook
    assert _hook_count(mlp) == 0
    with pytest.raises(RuntimeError), LayerTaps(mlp, red):
        mlp(torch.zeros(2, 3))  # wrong input size
    assert _hook_count(mlp) == 0
    list_layers(mlp, (1, 28, 28))
    assert _hook_count(mlp) == 0


def test_taps_unknown_layer(mlp):
    with pytest.raises(ConfigError, match="did you mean 'fc1'"):
        LayerTaps(mlp, {"fc_1": nn.Flatten()})
