"""Reduced own-logit gradients: the lift identity against autograd, refusal of gmp, the store pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from extract.gradients import (
    GRAD_ARRAY,
    GradientExtractor,
    check_gradient_plan,
    extract_gradients,
    gradients_complete,
    lift_scale,
)
from extract.reductions import plan_reduction
from extract.runner import extract_checkpoint, plan_extraction
from probestore.errors import ConfigError
from probestore.experiment import ExtractOptions
from storage_schema.concept_sets import extra_attrs, set_extra_attrs
from storage_schema.store import create_store, open_store
from tests.conftest import DTD_DIR, MNIST_DIR, needs_data
from tests.helpers.torch_data import IndexedDataset

SHAPE = (4, 6, 6)  # conv1 output (C, H, W)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)  # in-place right after the tapped layer
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5 * 6 * 6, 3)

    def forward(self, x):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.flatten(1))


def _model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN().eval()


def _lift(plan, v: np.ndarray) -> torch.Tensor:
    """Rᵀ v in the full (C, H, W) space, built independently of the reducers."""
    C, H, W = plan.source_shape
    if plan.kind == "gap":
        full = np.repeat(v[:, None], H * W, axis=1) / (H * W)
    elif plan.kind == "random":
        full = np.zeros(C * H * W)
        full[plan.indices] = v
    elif plan.kind == "project":
        full = plan.projection_matrix().astype(np.float64) @ v
    else:
        full = v
    return torch.as_tensor(np.asarray(full, np.float32).reshape(C, H, W))


def _directional(model, x, y, layer, direction):
    """d f_y / dt of a(x) + t · direction, per sample, by autograd through t."""
    t = torch.zeros(len(x), 1, 1, 1, requires_grad=True)
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, a, out: out + t * direction)
    try:
        out = model(x)
        (g,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), [t])
    finally:
        handle.remove()
    return g.flatten().double().numpy()


@pytest.mark.parametrize("spec", ["gap", "random:20", "project:12", "flatten"])
def test_reduced_gradient_gives_exact_lifted_directional_derivative(spec):
    model = _model()
    plan = plan_reduction(spec, "conv1", SHAPE, seed=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 6, 6, generator=g)
    y = torch.tensor([0, 1, 2, 1, 0])
    with GradientExtractor(model, {"conv1": plan}, torch.device("cpu")) as ex:
        got = ex(x, y)
    reduced = got["conv1"].double().numpy()
    assert reduced.shape == (5, plan.n_features)
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal(plan.n_features)
        want = _directional(model, x, y, "conv1", _lift(plan, v))
        np.testing.assert_allclose(reduced @ v, want, rtol=1e-4, atol=1e-6)
    # logits returned by the pass are the model's
    torch.testing.assert_close(got["logits"], model(x).detach())


def test_gap_lift_scale_is_the_derivative_along_the_constant_lift():
    """For gap, moving every position by v moves the pooled features by v: H·W · ⟨R g, v⟩."""
    model = _model(1)
    plan = plan_reduction("gap", "conv1", SHAPE)
    assert lift_scale(plan) == 36.0
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([2, 0, 1, 2])
    with GradientExtractor(model, {"conv1": plan}, torch.device("cpu")) as ex:
        reduced = ex(x, y)["conv1"].double().numpy()
    v = np.random.default_rng(5).standard_normal(4)
    const = torch.as_tensor(np.repeat(v[:, None, None], 36, 1).reshape(4, 6, 6), dtype=torch.float32)
    np.testing.assert_allclose(lift_scale(plan) * reduced @ v, _directional(model, x, y, "conv1", const),
                               rtol=1e-4, atol=1e-6)
    # and against finite differences in float64 on the full activation
    model64 = _model(1).double()
    h = 1e-6
    def f(t):
        hk = dict(model64.named_modules())["conv1"].register_forward_hook(
            lambda m, a, out: out + t * const.double())
        with torch.no_grad():
            out = model64(x.double()).gather(1, y[:, None]).flatten()
        hk.remove()
        return out.numpy()
    fd = (f(h) - f(-h)) / (2 * h)
    np.testing.assert_allclose(lift_scale(plan) * reduced @ v, fd, rtol=1e-3, atol=1e-5)


def test_input_pseudo_layer_gradient():
    model = _model(2)
    plan = plan_reduction("flatten", "input", (3, 6, 6))
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 2, 1])
    with GradientExtractor(model, {"input": plan}, torch.device("cpu")) as ex:
        got = ex(x, y)["input"]
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(model(xr).gather(1, y[:, None]).sum(), [xr])
    torch.testing.assert_close(got, want.flatten(1))


def test_gmp_is_refused_with_the_reason():
    plans = {"conv1": plan_reduction("gmp", "conv1", SHAPE), "conv2": plan_reduction("gap", "conv2", (5, 6, 6))}
    with pytest.raises(ConfigError, match="linear") as info:
        check_gradient_plan(plans)
    assert "conv1" in str(info.value) and "max pool is not linear" in str(info.value)
    with pytest.raises(ConfigError):
        GradientExtractor(_model(), plans, torch.device("cpu"))


def _store(tmp_path, n=70, suffix=".zarr"):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    splits = rng.integers(0, 3, n).astype(np.int8)
    store = create_store(tmp_path / f"s{suffix}", dataset_name="toy", sample_ids=[f"s{i}" for i in range(n)],
                         labels=labels, splits=splits, class_names=["a", "b", "c"])
    store.add_run("r", model={"name": "cnn"}, architecture="cnn-0", train_labels=labels,
                  corrupted=np.zeros(n, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("r", "e1", epoch=1)
    return store, labels


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_store_pass_matches_direct_computation_and_resumes(tmp_path, suffix):
    store, labels = _store(tmp_path, suffix=suffix)
    model = _model(3)
    x = torch.randn(len(labels), 3, 6, 6, generator=torch.Generator().manual_seed(7))
    opts = ExtractOptions(layers=("conv1", "conv2"), reductions={"conv2": "random:30"}, batch_size=16,
                          chunk_rows=32, device="cpu")
    plan = plan_extraction(model, (3, 6, 6), opts)
    extract_checkpoint(store, "r", "e1", model, IndexedDataset(x), plan, opts, device=torch.device("cpu"), progress=False)
    assert not gradients_complete(store, "r", "e1", plan.layers)
    extract_gradients(store, "r", "e1", model, IndexedDataset(x), plan.reductions, batch_size=16,
                      device=torch.device("cpu"), progress=False)
    assert gradients_complete(store, "r", "e1", plan.layers)
    with GradientExtractor(model, plan.reductions, torch.device("cpu")) as ex:
        direct = ex(x, torch.as_tensor(labels))
    for layer in plan.layers:
        stored = store.read_extra("r", "e1", layer, GRAD_ARRAY)
        np.testing.assert_allclose(stored, direct[layer].numpy(), rtol=1e-5, atol=1e-7)
        attrs = extra_attrs(store, "r", "e1", layer, GRAD_ARRAY)
        assert attrs["rows_done"] == len(labels) and attrs["lift_scale"] == (36.0 if layer == "conv1" else 1.0)
    # an interrupted pass (progress rolled back, data garbled above it) is redone from rows_done
    garbled = np.full((len(labels) - 32, plan.reductions["conv1"].n_features), 9.0, np.float32)
    store.write_extra("r", "e1", "conv1", GRAD_ARRAY, garbled, 32)
    set_extra_attrs(store, "r", "e1", "conv1", GRAD_ARRAY, {"complete": False, "rows_done": 32})
    store.close()
    store = open_store(tmp_path / f"s{suffix}", "a")
    assert not gradients_complete(store, "r", "e1", plan.layers)
    extract_gradients(store, "r", "e1", model, IndexedDataset(x), plan.reductions, batch_size=16,
                      device=torch.device("cpu"), progress=False)
    np.testing.assert_allclose(store.read_extra("r", "e1", "conv1", GRAD_ARRAY), direct["conv1"].numpy(),
                               rtol=1e-5, atol=1e-7)
    assert extract_gradients(store, "r", "e1", model, IndexedDataset(x), plan.reductions, batch_size=16,
                             device=torch.device("cpu"), progress=False) == 0.0
    from storage_schema.validate import validate_store

    assert validate_store(tmp_path / f"s{suffix}") == []


# --------------------------------------------------------------------------- through the pipeline

DTD = DTD_DIR


@needs_data(DTD)
def test_pipeline_gradients_concept_sets_and_tcav_on_dtd(tmp_path):
    import shutil

    from PIL import Image

    from analyze.tcav import TCAVOptions, run_tcav
    from extract.models import build_model
    from extract.pipeline import load_experiment, run_extraction
    from probestore.experiment import parse_config
    from storage_schema.concept_sets import (
        concept_set_info,
        concept_set_rows,
        read_concept_features,
    )

    def config(runs, concepts=None, reductions=None):
        return parse_config({
            "experiment": {"name": "t", "store": str(tmp_path / "s.zarr"), "seed": 0},
            "dataset": {"kind": "imagefolder", "path": str(DTD), "image_size": 24, "max_samples": 90},
            "splits": {"train": 0.5, "valid": 0.2, "test": 0.3},
            "model": {"name": "shallow_cnn", "options": {"channels": 6, "fc": [10]}},
            "runs": runs,
            "extract": {"layers": ["conv1", "fc1"], "batch_size": 16, "chunk_rows": 64, "gradients": True,
                        "reductions": reductions or {"conv1": "gap"}},
            "concepts": concepts or {}}, source="t.toml")

    probe = config([{"name": "x", "checkpoints": "."}])
    exp = load_experiment(probe)
    (tmp_path / "ck").mkdir()
    torch.save(build_model(exp.spec, seed=1).state_dict(), tmp_path / "ck" / "epoch_001.pt")
    runs = [{"name": "cnn", "checkpoints": str(tmp_path / "ck")}]
    with pytest.raises(ConfigError, match="linear"):  # refused before the store exists
        run_extraction(config(runs, reductions={"conv1": "gmp"}), progress=False)
    assert not (tmp_path / "s.zarr").exists()
    banded = [p for p in exp.dataset.sample_ids if "banded" in p][:6]
    (tmp_path / "banded").mkdir()
    for p in banded:  # copies of dataset images: stored as rows
        shutil.copy(DTD / p if not __import__("os").path.isabs(p) else p, tmp_path / "banded")
    (tmp_path / "stripes").mkdir()  # images from elsewhere: stored as external features
    for i in range(5):
        img = np.zeros((40, 40, 3), np.uint8)
        img[:, (np.arange(40) // (3 + i)) % 2 == 0] = 255
        Image.fromarray(img).save(tmp_path / "stripes" / f"s{i}.png")
    concepts = {"sets": {"banded": str(tmp_path / "banded"), "stripes": str(tmp_path / "stripes"),
                         "banded_cls": {"random": 3, "class": "banded"}},
                "random_sets": {"count": 3, "size": 8}}
    cfg = config(runs, concepts)
    run_extraction(cfg, progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert concept_set_info(store, "banded").kind == "dataset"
    assert list(store.sample_ids()[concept_set_rows(store, "banded")]) == sorted(banded)
    assert concept_set_info(store, "stripes").kind == "external"
    assert concept_set_info(store, "random_2").role == "random"
    train = store.split_indices("train")
    assert np.isin(concept_set_rows(store, "random_0"), train).all()
    cls_rows = concept_set_rows(store, "banded_cls")
    assert np.isin(cls_rows, train).all() and len(cls_rows) == 3
    assert (store.labels()[cls_rows] == store.dataset.class_names.index("banded")).all()
    assert concept_set_info(store, "banded_cls").role == "concept"
    ckpt = store.checkpoints("cnn")[0].name
    assert gradients_complete(store, "cnn", ckpt, ["conv1", "fc1"])
    # stored gradients equal a direct pass on the same inputs
    model = build_model(exp.spec, seed=1).eval()
    tds = exp.dataset.torch_dataset()
    x = torch.stack([tds[i][0] for i in range(20)])
    plan = plan_extraction(model, exp.spec.input_shape, cfg.extract)
    with GradientExtractor(model, plan.reductions, torch.device("cpu")) as ex:
        direct = ex(x, torch.as_tensor(store.labels()[:20]))
    for layer in ("conv1", "fc1"):
        np.testing.assert_allclose(store.read_extra("cnn", ckpt, layer, GRAD_ARRAY)[:20], direct[layer].numpy(),
                                   rtol=1e-4, atol=1e-6)
    # external set features equal the model's features of those images
    ext = read_concept_features(store, "cnn", ckpt, "stripes", "fc1")
    assert ext.shape == (5, plan.reductions["fc1"].n_features) and np.isfinite(ext).all()
    store.close()
    # a rerun finds everything complete; TCAV runs on the result
    assert run_extraction(cfg, progress=False).skipped == [f"cnn/{ckpt}"]
    from storage_schema.validate import validate_store

    assert validate_store(tmp_path / "s.zarr") == []
    rows = run_tcav(tmp_path / "s.zarr", TCAVOptions(repeats=2, random_size=5, rcv=False))
    assert {r["concept"] for r in rows if r["method"] == "tcav"} == {"banded", "banded_cls", "stripes"}
    assert {r["random_source"] for r in rows if r["method"] == "tcav"} == {"stored sets"}


def test_config_gradients_flag_and_concept_sets():
    from probestore.experiment import parse_config

    def cfg(extract=None, concepts=None):
        return parse_config({
            "experiment": {"name": "t", "store": "/tmp/never.zarr"},
            "dataset": {"kind": "idx", "path": str(MNIST_DIR), "subset": "test"},
            "model": {"name": "mlp"}, "runs": [{"name": "g", "checkpoints": "."}],
            "extract": {"layers": ["fc1"], **(extract or {})},
            "concepts": concepts or {}}, source="t.toml")

    base = cfg()
    assert base.extract.gradients is False
    # off (default or explicit) keeps the hash of stores extracted before the option existed
    assert cfg({"gradients": False}).content() == base.content()
    on = cfg({"gradients": True})
    assert on.extract.gradients and on.content()["extract"]["gradients"] is True
    with pytest.raises(ConfigError, match="wrong type"):
        cfg({"gradients": "yes"})
    c = cfg(concepts={"sets": {"banded": "ex/banded", "noise": {"folder": "n", "role": "random"},
                               "b2": {"random": 4, "class": "banded"}, "r": {"random": 3}},
                      "random_sets": {"count": 2, "size": 7, "seed": 9}}).concepts.sets
    assert c["banded"].role == "concept" and c["banded"].folder.endswith("ex/banded")
    assert c["noise"].role == "random" and c["b2"].role == "concept" and c["b2"].of_class == "banded"
    assert c["r"].role == "random" and c["random_1"].random == 7 and c["random_1"].seed == 9
    for bad, msg in [({"x": {"folder": "a", "random": 3}}, "either a folder"),
                     ({"x": {"folder": "a", "class": "c"}}, "only restricts"),
                     ({"x": {"random": 3, "role": "concpt"}}, "concept"),
                     ({"x": {"random": 0}}, "out of range"),
                     ({"x": {"folde": "a"}}, "folder")]:
        with pytest.raises(ConfigError, match=msg):
            cfg(concepts={"sets": bad})
    with pytest.raises(ConfigError, match="defined twice"):
        cfg(concepts={"sets": {"random_0": "a"}, "random_sets": {"count": 1, "size": 2}})


# --------------------------------------------------------------------------- lift_scale


def _reduction_matrix(plan) -> np.ndarray:
    """R as an explicit (K, D) float64 matrix, built independently of the reducers."""
    D = int(np.prod(plan.source_shape))
    if plan.kind == "gap":
        C = plan.source_shape[0]
        return np.kron(np.eye(C), np.ones(D // C)) / (D // C)
    if plan.kind == "random":
        return np.eye(D)[plan.indices]
    if plan.kind == "project":
        return plan.projection_matrix().astype(np.float64).T
    return np.eye(D)


@pytest.mark.parametrize("spec, exact", [("gap", True), ("random:20", True), ("flatten", True),
                                         ("project:12", False)])
def test_lift_scale_makes_the_reduced_gradient_the_minimum_norm_lift_derivative(spec, exact):
    """lift_scale · ⟨R g, v⟩ = ⟨g, R⁺ v⟩: the derivative along the smallest full-space move
    that shifts the reduced features by exactly v (SCHEMA.md §6.1).

    Exact when R Rᵀ = c·I (gap, random, flatten); for project:K (R = Wᵀ, W ~ N(0, 1/K))
    only E[WᵀW] = (D/K)·I holds, so the slope over many directions is 1 up to O(√(K/D)),
    where the superseded value lift_scale = 1 gives a slope of D/K = 12.
    """
    model = _model(3)
    plan = plan_reduction(spec, "conv1", SHAPE, seed=7)
    full_plan = plan_reduction("flatten", "conv1", SHAPE)
    x = torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(8))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with GradientExtractor(model, {"conv1": plan}, torch.device("cpu")) as ex:
        reduced = ex(x, y)["conv1"].double().numpy()                  # R g, per sample
    with GradientExtractor(model, {"conv1": full_plan}, torch.device("cpu")) as ex:
        g = ex(x, y)["conv1"].double().numpy()                        # g itself
    R = _reduction_matrix(plan)
    np.testing.assert_allclose(reduced, g @ R.T, rtol=1e-4, atol=1e-7)
    R_pinv = np.linalg.pinv(R)
    V = np.random.default_rng(9).standard_normal((plan.n_features, 200))
    scaled = lift_scale(plan) * reduced @ V                           # (6, 200)
    min_norm = g @ (R_pinv @ V)
    if exact:
        np.testing.assert_allclose(scaled, min_norm, rtol=1e-4, atol=1e-6)
        # and the scaled lift Rᵀv·lift_scale moves the reduced features by exactly v
        np.testing.assert_allclose(lift_scale(plan) * R @ R.T, np.eye(plan.n_features), atol=1e-12)
    else:
        assert lift_scale(plan) == 12 / 144
        slope = float((scaled * min_norm).sum() / (min_norm**2).sum())
        assert abs(slope - 1) < 0.15, slope
        assert np.corrcoef(scaled.ravel(), min_norm.ravel())[0, 1] > 0.8
        np.testing.assert_allclose(np.mean(np.diag(lift_scale(plan) * R @ R.T)), 1.0, atol=0.1)


def test_validator_checks_the_project_lift_scale(tmp_path):
    """K/D is required; 1 (the pre-1.2 value) only in stores older than schema 1.2."""
    from storage_schema.reductions import lift_scale_for
    from storage_schema.validate import _validate_gradient

    plan = plan_reduction("project:12", "conv1", SHAPE)
    red = plan.to_dict()
    assert lift_scale_for(red) == 12 / 144 == lift_scale(plan)
    from extract.gradients import gradient_attrs

    assert gradient_attrs(plan)["lift_scale"] == 12 / 144   # what the writer records
    assert lift_scale_for({"kind": "gap", "source_shape": [4, 6, 6]}) == 36.0
    assert lift_scale_for({"kind": "random", "params": {"k": 3}}) == 1.0
    assert lift_scale_for({"kind": "gmp", "source_shape": [4, 6, 6]}) is None

    class Backend:
        def __init__(self, attrs):
            self.attrs = attrs

        def get_attrs(self, node):
            return self.attrs

    def problems(scale, version):
        attrs = {"kind": "gradient", "of": "own_class_logit", "reduction": red, "lift_scale": scale,
                 "complete": False, "rows_done": 0}
        return [p for p in _validate_gradient(Backend(attrs), "g", {"n_features": 12, "reduction": red},
                                              (5, 12), np.dtype("float32"), 5, False, version)
                if "lift_scale" in p]
    assert problems(12 / 144, (1, 2)) == []
    assert problems(1.0, (1, 1)) == []
    assert problems(1.0, (1, 2)) and "expected 0.0833333 (K / prod(source_shape))" in problems(1.0, (1, 2))[0]
