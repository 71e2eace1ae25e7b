"""Reductions (Alain & Bengio 2016, sec. 3.4): shapes, values and reproducibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from extract.reductions import (
    ReductionPlan,
    build_reducer,
    plan_reduction,
    stable_hash,
)
from probestore.errors import ConfigError, DataError
from storage_schema.reductions import parse_reduction

pytestmark = pytest.mark.torch


def _x(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("gap", ("gap", None)), (" GMP ", ("gmp", None)), ("flatten", ("flatten", None)),
    ("auto", ("auto", None)), ("random:1000", ("random", 1000)), ("project:7", ("project", 7)),
])
def test_parse_valid(spec, expected):
    assert parse_reduction(spec) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("gapp", "did you mean 'gap'"), ("random", "positive integer"), ("random:0", "positive integer"),
    ("project:x", "positive integer"), ("gap:3", "takes no"), ("", "unknown reduction"),
])
def test_parse_invalid(spec, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_reduction(spec)


# --- plans and shapes ------------------------------------------------------------------

@pytest.mark.parametrize("spec, shape, kind, n", [
    ("gap", (8, 5, 5), "gap", 8), ("gmp", (8, 5, 5), "gmp", 8), ("gap", (6, 11), "gap", 6),
    ("auto", (8, 5, 5), "gap", 8), ("auto", (30,), "flatten", 30), ("flatten", (3, 4, 5), "flatten", 60),
    ("random:17", (3, 4, 5), "random", 17), ("project:9", (3, 4, 5), "project", 9),
])
def test_plan_and_reducer_shapes(spec, shape, kind, n):
    plan = plan_reduction(spec, "layer", shape)
    assert (plan.kind, plan.n_features, plan.source_shape) == (kind, n, shape)
    out = build_reducer(plan)(_x(4, *shape))
    assert out.shape == (4, n) and out.dtype == torch.float32


@pytest.mark.parametrize("spec, shape, fragment", [
    ("gap", (30,), "3-D"), ("gmp", (2, 3, 4, 5), "3-D"), ("auto", (4, 6), "explicit"),
    ("random:61", (3, 4, 5), "K <= 60"), ("project:61", (60,), "K <= 60"),
])
def test_plan_refusals(spec, shape, fragment):
    with pytest.raises(ConfigError, match=fragment):
        plan_reduction(spec, "layer", shape)


def test_flatten_refused_above_limit_with_suggestion():
    with pytest.raises(ConfigError) as info:
        plan_reduction("flatten", "conv1", (64, 32, 32), max_flatten_features=65535)
    msg = str(info.value)
    assert "65536" in msg and "'gap' (64 features)" in msg and "random:K" in msg
    assert plan_reduction("flatten", "conv1", (64, 32, 32)).n_features == 65536  # at the limit
    with pytest.raises(ConfigError, match="auto|flatten"):
        plan_reduction("auto", "fc", (70000,))


# --- values ----------------------------------------------------------------------------

def test_gap_gmp_equal_torch_pooling():
    x = _x(3, 5, 6, 7)
    gap = build_reducer(plan_reduction("gap", "l", (5, 6, 7)))(x)
    torch.testing.assert_close(gap, x.mean(dim=(2, 3)), rtol=0, atol=0)
    gmp = build_reducer(plan_reduction("gmp", "l", (5, 6, 7)))(x)
    torch.testing.assert_close(gmp, torch.nn.functional.adaptive_max_pool2d(x, 1).flatten(1))
    x3 = _x(3, 5, 9)
    gap3 = build_reducer(plan_reduction("gap", "l", (5, 9)))(x3)
    torch.testing.assert_close(gap3, x3.mean(dim=2), rtol=0, atol=0)


def test_gap_of_half_input_is_computed_in_float32():
    x = (_x(2, 4, 16, 16) * 100).half()
    out = build_reducer(plan_reduction("gap", "l", (4, 16, 16)))(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float().mean(dim=(2, 3)), rtol=0, atol=0)


def test_random_subset_selects_the_planned_units():
    plan = plan_reduction("random:25", "block3", (4, 5, 6), seed=3)
    idx = plan.indices
    assert idx.dtype == np.int64 and len(np.unique(idx)) == 25
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 120
    x = _x(5, 4, 5, 6)
    out = build_reducer(plan)(x)
    expected = x.numpy().reshape(5, -1)[:, idx]
    np.testing.assert_array_equal(out.numpy(), expected)


def test_random_depends_on_seed_and_name_not_on_order():
    a = plan_reduction("random:50", "layer1", (1000,), seed=0).indices
    b = plan_reduction("random:50", "layer2", (1000,), seed=0).indices
    c = plan_reduction("random:50", "layer1", (1000,), seed=1).indices
    # planning layer2 first must not change layer1's draw
    b2 = plan_reduction("random:50", "layer2", (1000,), seed=0).indices
    a2 = plan_reduction("random:50", "layer1", (1000,), seed=0).indices
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


_CHILD = """
import json
from extract.reductions import plan_reduction, stable_hash
out = {}
for name in NAMES:
    out[name] = plan_reduction("random:40", name, (7, 9, 9), seed=11).indices.tolist()
out["hash"] = stable_hash("layer3.1.relu")
p = plan_reduction("project:4", "fc2", (30,), seed=11)
out["checksum"] = p.params["checksum"]
print(json.dumps(out))
"""


def test_random_indices_identical_across_fresh_processes():
    names = ["layer3.1.relu", "conv1"]
    procs = []
    for hashseed, order in (("1", names), ("2", names[::-1])):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        procs.append(subprocess.Popen([sys.executable, "-c", _CHILD.replace("NAMES", repr(order))],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                      text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert results[0] == results[1]
    assert results[0]["hash"] == stable_hash("layer3.1.relu")
    for name in names:
        here = plan_reduction("random:40", name, (7, 9, 9), seed=11).indices.tolist()
        assert results[0][name] == here
    assert results[0]["layer3.1.relu"] != results[0]["conv1"]
    assert results[0]["checksum"] == plan_reduction("project:4", "fc2", (30,), seed=11).params["checksum"]


def test_stored_indices_reused_and_mismatch_refused():
    plan = plan_reduction("random:10", "fc1", (100,), seed=5)
    again = plan_reduction("random:10", "fc1", (100,), seed=5, indices=plan.indices.copy())
    assert again == plan
    wrong = plan.indices.copy()
    wrong[0] = (set(range(100)) - set(wrong.tolist())).pop()
    with pytest.raises(ConfigError, match="stored random indices differ"):
        plan_reduction("random:10", "fc1", (100,), seed=5, indices=wrong)
    with pytest.raises(ConfigError, match="stored random indices differ"):
        plan_reduction("random:10", "fc1", (100,), seed=6, indices=plan.indices)
    with pytest.raises(ConfigError, match="non-random"):
        plan_reduction("gap", "fc1", (4, 5, 5), indices=plan.indices)


def test_project_is_deterministic_and_a_matmul():
    shape = (3, 4, 4)
    p1 = plan_reduction("project:16", "conv2", shape, seed=2)
    p2 = plan_reduction("project:16", "conv2", shape, seed=2)
    m = p1.projection_matrix()
    assert m.shape == (48, 16) and m.dtype == np.float32
    np.testing.assert_array_equal(m, p2.projection_matrix())
    assert p1.params["checksum"] == p2.params["checksum"]
    assert p1.params["checksum"] != plan_reduction("project:16", "conv3", shape, seed=2).params["checksum"]
    x = _x(6, *shape)
    r1, r2 = build_reducer(p1), build_reducer(p2)
    out = r1(x)
    assert torch.equal(out, r1(x)) and torch.equal(out, r2(x))
    expected = x.double().reshape(6, -1).numpy() @ m.astype(np.float64)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = r1(x)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, out)


def test_project_preserves_squared_norm_on_average():
    # entries N(0, 1/K): E||xW||^2 = ||x||^2 (Johnson-Lindenstrauss scaling)
    plan = plan_reduction("project:256", "l", (400,), seed=0)
    x = _x(64, 400)
    ratio = (build_reducer(plan)(x).pow(2).sum(1) / x.pow(2).sum(1)).mean().item()
    assert 0.9 < ratio < 1.1


def test_flatten_copies_so_later_inplace_ops_do_not_leak():
    x = _x(2, 3, 4)
    out = build_reducer(plan_reduction("flatten", "l", (3, 4)))(x)
    before = out.clone()
    x.relu_()
    assert torch.equal(out, before)


def test_reducer_rejects_other_shapes():
    red = build_reducer(plan_reduction("gap", "conv1", (4, 8, 8)))
    with pytest.raises(DataError, match="conv1"):
        red(_x(2, 4, 9, 9))


def test_plan_dict_round_trip_through_json():
    for spec, shape in (("random:7", (3, 5)), ("project:3", (10,)), ("gap", (2, 3, 3)),
                        ("flatten", (6,))):
        plan = plan_reduction(spec, "layer2.0", shape, seed=4)
        d = json.loads(json.dumps(plan.to_dict()))
        back = ReductionPlan.from_dict(d, indices=plan.indices)
        assert back == plan


def test_from_dict_detects_a_changed_projection():
    d = plan_reduction("project:3", "fc", (10,), seed=4).to_dict()
    d["params"]["checksum"] = "0" * 64
    with pytest.raises(ConfigError, match="projection matrix"):
        ReductionPlan.from_dict(d)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 2**32), st.data())
def test_random_indices_property(shape, seed, data):
    n = int(np.prod(shape))
    k = data.draw(st.integers(1, n))
    idx = plan_reduction(f"random:{k}", "x", tuple(shape), seed=seed).indices
    assert len(idx) == k and len(set(idx.tolist())) == k
    assert np.all(np.diff(idx) > 0) and 0 <= idx.min() and idx.max() < n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("spec", ["gap", "gmp", "random:30", "project:8", "flatten"])
def test_cuda_reducers_match_cpu(spec):
    plan = plan_reduction(spec, "layer2.1", (4, 6, 6), seed=9)
    x = _x(3, 4, 6, 6)
    cpu = build_reducer(plan)(x)
    gpu = build_reducer(plan, device="cuda")(x.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
