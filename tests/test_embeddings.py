"""Feature embeddings (PCA / t-SNE) and the report's CKA, MDL and embedding figures."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.decomposition import PCA

from analyze.config import AnalysisConfig
from analyze.embeddings import embed_block, embed_store_block, subsample
from analyze.engine import run_analysis
from analyze.report import build_report, make_view, read_results
from analyze.report.extras import cka_layers_data, mdl_layers_data
from analyze.similarity import run_similarity
from probestore.cli import main
from probestore.errors import ConfigError, DataError
from storage_schema.store import open_store
from tests.helpers.stores import make_store


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return rng.normal(size=(3, 8))[y] * 4 + rng.normal(size=(n, 8)), y


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_deterministic_with_the_seed(method):
    X, _ = blobs()
    a, rows_a = embed_block(X, method, n_samples=50, seed=3, max_iter=250)
    b, rows_b = embed_block(X, method, n_samples=50, seed=3, max_iter=250)
    np.testing.assert_array_equal(rows_a, rows_b)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (50, 2) and rows_a.size == 50 and np.all(np.diff(rows_a) > 0)
    np.testing.assert_array_equal(rows_a, subsample(300, 50, 3))
    assert not np.array_equal(rows_a, subsample(300, 50, 4))


def test_pca_is_sklearn_pca_up_to_sign():
    X, _ = blobs(100)
    got, rows = embed_block(X, "pca", n_samples=None)
    np.testing.assert_array_equal(rows, np.arange(100))
    ref = PCA(n_components=2).fit_transform(X)
    for k in range(2):
        assert np.allclose(got[:, k], ref[:, k]) or np.allclose(got[:, k], -ref[:, k])
    flipped, _ = embed_block(-X, "pca", n_samples=None)  # sign convention: same picture
    np.testing.assert_allclose(flipped, got, atol=1e-9)


def test_tsne_separates_classes():
    X, y = blobs(60)
    Z, rows = embed_block(X, "tsne", n_samples=None, seed=0, max_iter=250)
    centroids = np.stack([Z[y[rows] == k].mean(0) for k in range(3)])
    spread = max(np.linalg.norm(Z[y[rows] == k] - centroids[k], axis=1).mean() for k in range(3))
    gaps = min(np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i + 1, 3))
    assert gaps > 2 * spread


def test_bad_inputs():
    X, _ = blobs(20)
    with pytest.raises(ConfigError, match="did you mean 'tsne'"):
        embed_block(X, "tnse")
    with pytest.raises(DataError, match="at least 3 rows"):
        embed_block(X[:2])
    X[4, 1] = np.inf
    with pytest.raises(DataError, match="NaN or Inf"):
        embed_block(X, n_samples=None)
    assert subsample(10, 50, 0).size == 10


# ---------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    store = make_store(tmp / "s.zarr", n=160, epochs=(0, 2, 4))
    cfg = AnalysisConfig(scheduler="none", Cs=(0.1, 1.0), alphas=(1.0, 100.0), probes=("classifier", "mdl"),
                         results=str(tmp / "r.parquet"))
    results = run_analysis(store, cfg, progress=False, log=lambda m: None).results
    cka = tmp / "cka.parquet"
    run_similarity(store, cka, config=AnalysisConfig(scheduler="none"), log=lambda m: None)
    return store, results, cka


NEW_FIGURES = ("mdl_layers", "mdl_epochs", "cka_layers", "cka_checkpoints", "cka_runs", "embeddings")


def test_embed_store_block_marks_corrupted_samples(analysed):
    store, _, _ = analysed
    with open_store(store) as s:
        e = embed_store_block(s, "noisy", "epoch_0004", "l3", split="all", n_samples=100, seed=1)
        assert e.rows.size == 100 and e.coords.shape == (100, 2)
        np.testing.assert_array_equal(e.corrupted, s.corrupted_mask("noisy")[e.rows])
        np.testing.assert_array_equal(e.labels, s.labels()[e.rows])
        assert e.corrupted.any() and e.epoch == 4
        t = embed_store_block(s, "noisy", "epoch_0004", "l3", split="test", n_samples=None)
        np.testing.assert_array_equal(t.rows, s.split_indices("test"))


def test_report_has_cka_mdl_and_embedding_images(analysed, tmp_path):
    store, results, cka = analysed
    out = tmp_path / "rep"
    assert main(["report", str(results), "--store", str(store), "--similarity", str(cka), "-o", str(out)]) == 0
    html = (out / "index.html").read_text()
    sources = set(re.findall(r"<img src='([^']+)'", html))
    for key in NEW_FIGURES:
        assert f"figures/{key}.png" in sources, key
        assert (out / "figures" / f"{key}.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "figures/cka_layers.png" in md and "figures/embeddings.png" in md


def test_without_store_or_cka_the_figures_are_notes(analysed, tmp_path):
    _, results, _ = analysed
    index = build_report(results, None, tmp_path / "rep")
    html = index.read_text()
    assert "figures/mdl_layers.png" in html
    assert "not drawn: needs the store the table came from (--store)" in html
    assert "not drawn: no CKA table" in html
    assert "<p class='optional'>not drawn: no CKA table" in html  # not counted as a skipped figure
    assert not (tmp_path / "rep" / "figures" / "embeddings.png").exists()
    with pytest.raises(ConfigError, match="embedding method"):
        build_report(results, None, tmp_path / "x", embedding_method="umap")


def test_figure_data_are_the_table_values(analysed):
    store, results, cka_path = analysed
    import pandas as pd

    view = make_view(read_results(results), store)
    cka = pd.read_parquet(cka_path)
    panels = cka_layers_data(view, cka)
    assert [(p["run"], p["role"]) for p in panels] == [("clean", "first"), ("clean", "last"),
                                                       ("noisy", "first"), ("noisy", "last")]
    p = panels[1]
    assert p["labels"] == ["l1", "l2", "l3"] and p["checkpoint"] == "epoch_0004"
    row = cka[(cka.run_a == "clean") & (cka.checkpoint_a == "epoch_0004") & (cka.run_b == "clean")
              & (cka.checkpoint_b == "epoch_0004") & (cka.layer_a.isin(["l1", "l3"])) & (cka.layer_b.isin(["l1", "l3"]))]
    assert p["matrix"][0, 2] == p["matrix"][2, 0] == row["cka"].iloc[0]
    assert np.all(np.diag(p["matrix"]) == 1.0)
    mdl = mdl_layers_data(view)
    df = read_results(results)
    want = df[(df.probe == "mdl") & (df.checkpoint == "epoch_0004")]
    assert len(mdl) == len(want) == 2 * 3 + 3
    merged = mdl.merge(want, on=["run", "layer", "target"])
    np.testing.assert_array_equal(merged["compression"], merged["mdl_compression"])
