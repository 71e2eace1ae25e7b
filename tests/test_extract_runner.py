"""The extraction loop on real data: stored features equal a manual forward + reduction."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from extract.models import ModelSpec, build_model
from extract.pipeline import architecture_id, load_experiment, run_extraction
from extract.reductions import plan_reduction
from extract.runner import plan_extraction
from extract.writer import CheckpointWriter
from probestore.errors import ConfigError, DataError
from probestore.experiment import parse_config
from storage_schema import layout
from storage_schema.store import create_store, open_store
from tests.conftest import DTD_DIR, MNIST_DIR, needs_data

MNIST = MNIST_DIR
DTD = DTD_DIR
pytestmark = needs_data(MNIST, DTD)


def _config(tmp_path, dataset, model, layers, *, reductions=None, runs=None, extra=None, concepts=None):
    data = {
        "experiment": {"name": "t", "store": str(tmp_path / "store.zarr"), "seed": 0},
        "dataset": dataset,
        "splits": {"train": 0.6, "valid": 0.2, "test": 0.2},
        "model": model,
        "runs": runs,
        "extract": {"layers": layers, "batch_size": 32, "chunk_rows": 64,
                    "reductions": reductions or {}, **(extra or {})},
        "concepts": concepts or {},
    }
    return parse_config(data, source="test.toml")


def _save_seeded(tmp_path, cfg, name, seeds):
    """torch.save state dicts of seeded random models as the run's checkpoints."""
    exp = load_experiment(cfg)
    folder = tmp_path / name
    folder.mkdir()
    for epoch, seed in enumerate(seeds, start=1):
        torch.save(build_model(exp.spec, seed=seed).state_dict(), folder / f"epoch_{epoch:03d}.pt")
    return str(folder)


def _manual(model, x, layer_names):
    """Full activations of ``layer_names`` and the logits, by plain forward hooks."""
    got = {}
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, a, o, n=n: got.__setitem__(n, o.clone()))
               for n in layer_names]
    with torch.inference_mode():
        out = model(x)
    for h in handles:
        h.remove()
    return got, out


@pytest.fixture(scope="module")
def mlp_store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mlp")
    dataset = {"kind": "idx", "path": str(MNIST), "subset": "test", "max_samples": 300}
    model = {"name": "mlp", "options": {"depth": 2, "width": 24}}
    probe = _config(tmp_path, dataset, model, ["input"], runs=[{"name": "x", "checkpoints": "."}])
    runs = [{"name": "a", "checkpoints": _save_seeded(tmp_path, probe, "a", [1, 2])},
            {"name": "b", "checkpoints": _save_seeded(tmp_path, probe, "b", [3, 4]),
             "corruption": 0.5}]
    cfg = _config(tmp_path, dataset, model, ["input", "fc1", "relu*"],
                  reductions={"relu1": "random:10", "relu2": "project:6"}, runs=runs,
                  concepts={"families": ["shape"]})
    summary = run_extraction(cfg, progress=False)
    return cfg, summary


def test_mlp_features_equal_manual_forward_and_reduction(mlp_store):
    cfg, summary = mlp_store
    assert len(summary.done) == 4 and summary.bytes_stored > 0
    exp = load_experiment(cfg)
    store = open_store(cfg.store)
    assert store.n_samples == 300
    np.testing.assert_array_equal(store.sample_ids(), exp.dataset.sample_ids)
    np.testing.assert_array_equal(store.labels(), exp.dataset.labels)
    tds = exp.dataset.torch_dataset()
    x = torch.stack([tds[i][0] for i in range(32)])  # the first batch, as the loop sees it
    plans = {n: plan_reduction(s, n, shape, seed=0) for n, s, shape in
             [("relu1", "random:10", (24,)), ("relu2", "project:6", (24,))]}
    for run in ("a", "b"):
        ckpts = store.checkpoints(run)
        assert [c.name for c in ckpts] == ["epoch_0001", "epoch_0002"]
        assert all(c.complete and c.sha256 for c in ckpts)
        for c in ckpts:
            model = build_model(exp.spec)
            model.load_state_dict(torch.load(c.source, weights_only=True))
            model.eval()
            acts, out = _manual(model, x, ["fc1", "relu1", "relu2"])
            blocks = store.blocks(run, c.name)
            assert [b.name for b in blocks] == ["input", "fc1", "relu1", "relu2", layout.OUTPUTS]
            assert all(b.complete and b.rows_done == 300 for b in blocks)
            rows = slice(0, 32)
            np.testing.assert_array_equal(store.read_layer(run, c.name, "input", rows),
                                          x.reshape(32, -1).numpy())
            np.testing.assert_array_equal(store.read_layer(run, c.name, "fc1", rows), acts["fc1"].numpy())
            idx = plans["relu1"].indices
            np.testing.assert_array_equal(store.read_layer(run, c.name, "relu1", rows),
                                          acts["relu1"].numpy()[:, idx])
            proj = acts["relu2"].numpy() @ plans["relu2"].projection_matrix()
            np.testing.assert_allclose(store.read_layer(run, c.name, "relu2", rows), proj,
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(store.read_logits(run, c.name, rows), out.numpy())
            # every row, not only the first batch: logits of the whole dataset
            full = torch.stack([tds[i][0] for i in range(300)])
            with torch.inference_mode():
                np.testing.assert_allclose(store.read_logits(run, c.name), model(full).numpy(),
                                           rtol=1e-5, atol=1e-5)


def test_random_indices_shared_by_architecture_and_runs(mlp_store):
    cfg, _ = mlp_store
    exp = load_experiment(cfg)
    store = open_store(cfg.store)
    arch = exp.architecture
    assert store.run_info("a").architecture == store.run_info("b").architecture == arch
    assert arch == architecture_id(exp.spec.to_dict()) and arch.startswith("mlp-")
    assert store.architectures() == {arch: ["relu1"]}
    np.testing.assert_array_equal(store.load_reduction_indices(arch, "relu1"),
                                  plan_reduction("random:10", "relu1", (24,), seed=0).indices)
    ra = store.block_info("a", "epoch_0001", "relu1").reduction
    rb = store.block_info("b", "epoch_0002", "relu1").reduction
    assert ra == rb and ra["kind"] == "random"


def test_store_records_config_runs_and_targets(mlp_store):
    cfg, _ = mlp_store
    exp = load_experiment(cfg)
    store = open_store(cfg.store)
    assert store.config == cfg.content()
    assert store.run_info("a").corruption_fraction == 0.0
    info = store.run_info("b")
    assert info.corruption_fraction == 0.5 and info.corruption_mode == "shuffle"
    train_labels, corrupted = exp.run_labels(cfg.run("b"))
    np.testing.assert_array_equal(store.train_labels("b"), train_labels)
    np.testing.assert_array_equal(store.corrupted_mask("b"), corrupted)
    assert corrupted.any() and not store.corrupted_mask("a").any()
    assert set(store.target_names()) == {"label", "area", "eccentricity", "perimeter"}
    assert store.target_info("area").family == "shape"
    assert store.target_info("label").kind == "class"
    area = store.read_target("area")
    assert np.isfinite(area).all() and 20 < np.median(area) < 400  # MNIST digits, 28x28


def test_rerun_skips_complete_checkpoints(mlp_store):
    cfg, _ = mlp_store
    before = open_store(cfg.store).read_layer("a", "epoch_0001", "fc1")
    summary = run_extraction(cfg, progress=False)
    assert summary.done == [] and len(summary.skipped) == 4
    np.testing.assert_array_equal(open_store(cfg.store).read_layer("a", "epoch_0001", "fc1"), before)


def test_shallow_cnn_on_dtd_every_reduction(tmp_path):
    dataset = {"kind": "imagefolder", "path": str(DTD), "image_size": 32, "max_samples": 100}
    model = {"name": "shallow_cnn", "options": {"channels": 6, "fc": [12, 8]}}
    probe = _config(tmp_path, dataset, model, ["input"], runs=[{"name": "x", "checkpoints": "."}])
    runs = [{"name": "cnn", "checkpoints": _save_seeded(tmp_path, probe, "cnn", [5, 6])}]
    cfg = _config(tmp_path, dataset, model, ["input", "conv1", "relu1", "pool2", "fc1"],
                  reductions={"conv1": "random:50", "relu1": "gmp", "input": "gap"}, runs=runs,
                  extra={"dtype": "float16", "num_workers": 1})  # a DataLoader worker process
    run_extraction(cfg, progress=False)
    exp = load_experiment(cfg)
    store = open_store(cfg.store)
    tds = exp.dataset.torch_dataset()
    x = torch.stack([tds[i][0] for i in range(32, 64)])  # the second batch
    c = store.checkpoints("cnn")[1]
    model = build_model(exp.spec)
    model.load_state_dict(torch.load(c.source, weights_only=True))
    model.eval()
    acts, out = _manual(model, x, ["conv1", "relu1", "pool2", "fc1"])
    rows = slice(32, 64)
    idx = plan_reduction("random:50", "conv1", (6, 32, 32), seed=0).indices
    expected = {
        "input": x.mean(dim=(2, 3)),
        "conv1": acts["conv1"].reshape(32, -1)[:, idx],
        "relu1": acts["relu1"].amax(dim=(2, 3)),
        "pool2": acts["pool2"].mean(dim=(2, 3)),  # auto = gap for a 4-D output
        "fc1": acts["fc1"],
    }
    for name, want in expected.items():
        got = store.read_layer("cnn", c.name, name, rows)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, want.numpy().astype(np.float16))
    np.testing.assert_array_equal(store.read_logits("cnn", c.name, rows), out.numpy().astype(np.float16))
    assert store.block_info("cnn", c.name, "pool2").reduction["kind"] == "gap"
    assert store.block_info("cnn", c.name, "input").n_features == 3


def test_unknown_layer_and_bad_override_fail_before_any_data(tmp_path):
    spec = ModelSpec("mlp", 10, (1, 28, 28), {"depth": 2, "width": 8})
    model = build_model(spec, seed=0)
    dataset = {"kind": "digits"}
    runs = [{"name": "x", "checkpoints": "."}]
    cfg = _config(tmp_path, dataset, {"name": "mlp"}, ["relu3"], runs=runs)
    with pytest.raises(ConfigError) as err:
        plan_extraction(model, (1, 28, 28), cfg.extract)
    assert "did you mean" in str(err.value) and "'relu1'" in str(err.value)
    assert "probestore layers" in str(err.value)
    cfg = _config(tmp_path, dataset, {"name": "mlp"}, ["relu1"], runs=runs, reductions={"rleu1": "gap"})
    with pytest.raises(ConfigError, match="matches no selected layer.*did you mean 'relu1'"):
        plan_extraction(model, (1, 28, 28), cfg.extract)
    cfg = _config(tmp_path, dataset, {"name": "mlp"}, ["relu1"], runs=runs, reductions={"relu1": "gap"})
    with pytest.raises(ConfigError, match="gap"):
        plan_extraction(model, (1, 28, 28), cfg.extract)  # gap on a 2-D output
    plan = plan_extraction(model, (1, 28, 28), _config(tmp_path, dataset, {"name": "mlp"}, ["input"],
                                                       runs=runs).extract)
    assert plan.reductions["input"].kind == "flatten" and plan.n_outputs == 10


# --------------------------------------------------------------------------- writer


def _tiny_store(tmp_path, n=100, chunk_rows=16):
    store = create_store(tmp_path / "w.zarr", dataset_name="w", sample_ids=[str(i) for i in range(n)],
                         labels=np.zeros(n, int), splits=np.zeros(n, np.int8), class_names=["a"])
    store.add_run("r", model={"name": "m"}, architecture="m", train_labels=np.zeros(n, int),
                  corrupted=np.zeros(n, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("r", "c", epoch=1)
    metas = [store.create_block("r", "c", "l1", n_features=3, chunk_rows=chunk_rows),
             store.create_block("r", "c", layout.OUTPUTS, n_features=2, chunk_rows=chunk_rows)]
    return store, metas


def test_writer_writes_whole_chunks_then_completes(tmp_path):
    store, metas = _tiny_store(tmp_path)
    rng = np.random.default_rng(0)
    full = {"l1": rng.standard_normal((100, 3)).astype(np.float32),
            layout.OUTPUTS: rng.standard_normal((100, 2)).astype(np.float32)}
    seen = []
    with CheckpointWriter(store, "r", "c", metas, ["l1"]) as w:
        for start in range(0, 100, 10):
            w.put(start, {k: v[start:start + 10] for k, v in full.items()})
            time.sleep(0.01)
            seen.append(store.block_info("r", "c", "l1").rows_done)
        w.finish()
    assert all(r % 16 == 0 for r in seen) and max(seen) > 0  # chunk-aligned progress only
    assert store.checkpoint_info("r", "c").complete
    np.testing.assert_array_equal(store.read_layer("r", "c", "l1"), full["l1"])
    np.testing.assert_array_equal(store.read_logits("r", "c"), full[layout.OUTPUTS])


@pytest.mark.parametrize("write_threads", [1, 3])
def test_parallel_block_writes_store_the_same_arrays_as_one_thread(tmp_path, write_threads):
    store = create_store(tmp_path / "p.zarr", dataset_name="w", sample_ids=[str(i) for i in range(100)],
                         labels=np.zeros(100, int), splits=np.zeros(100, np.int8), class_names=["a"])
    store.add_run("r", model={"name": "m"}, architecture="m", train_labels=np.zeros(100, int),
                  corrupted=np.zeros(100, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("r", "c", epoch=1)
    rng = np.random.default_rng(1)
    full = {f"l{i}": rng.standard_normal((100, 5 + i)).astype(np.float32) for i in range(3)}
    full[layout.OUTPUTS] = rng.standard_normal((100, 2)).astype(np.float32)
    metas = [store.create_block("r", "c", name, n_features=v.shape[1], chunk_rows=16) for name, v in full.items()]
    with CheckpointWriter(store, "r", "c", metas, ["l0", "l1", "l2"], write_threads=write_threads) as w:
        assert (w._pool is None) == (write_threads == 1)
        for start in range(0, 100, 10):
            w.put(start, {k: v[start:start + 10] for k, v in full.items()})
        w.finish()
    assert w.rows_written == 400
    for name, values in full.items():
        np.testing.assert_array_equal(store.read_block("r", "c", name), values)
    assert [b.name for b in store.layers("r", "c")] == ["l0", "l1", "l2"]


def test_writer_resumes_and_drops_rows_already_written(tmp_path):
    store, metas = _tiny_store(tmp_path)
    data = np.arange(300, dtype=np.float32).reshape(100, 3)
    store.write_rows("r", "c", "l1", 0, data[:48])
    store.set_rows_done("r", "c", "l1", 48)
    metas = [store.block_info("r", "c", m.name) for m in metas]
    with CheckpointWriter(store, "r", "c", metas, ["l1"]) as w:
        assert w.resume_row == 0  # outputs has nothing yet
        for start in range(0, 100, 20):
            w.put(start, {"l1": data[start:start + 20] + 0, layout.OUTPUTS: np.ones((20, 2), np.float32)})
        w.finish()
    np.testing.assert_array_equal(store.read_layer("r", "c", "l1"), data)


def test_writer_error_reaches_the_loop_promptly(tmp_path):
    store, metas = _tiny_store(tmp_path, chunk_rows=4)
    bad = np.full((4, 3), np.nan, np.float32)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="non-finite"):
        with CheckpointWriter(store, "r", "c", metas, ["l1"], max_queue=1) as w:
            for start in range(0, 100, 4):
                w.put(start, {"l1": bad, layout.OUTPUTS: np.zeros((4, 2), np.float32)})
            w.finish()
    assert time.perf_counter() - t0 < 10
    assert not store.checkpoint_info("r", "c").complete
    assert not any(t.name.startswith("writer-") for t in threading.enumerate())


def test_writer_refuses_a_gap_in_rows(tmp_path):
    store, metas = _tiny_store(tmp_path)
    ones = {"l1": np.ones((10, 3), np.float32), layout.OUTPUTS: np.ones((10, 2), np.float32)}
    with pytest.raises(RuntimeError, match="rows would be missing"):
        with CheckpointWriter(store, "r", "c", metas, ["l1"]) as w:
            w.put(0, ones)
            w.put(20, ones)
            w.finish()
