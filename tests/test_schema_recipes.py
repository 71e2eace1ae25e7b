"""SCHEMA.md §8's recipes, run as written: reading a store with zarr, xarray and h5py alone.

The code blocks are taken from SCHEMA.md itself (the ones that open the demo's store,
``demo-output/fashion_mlp.*``) and executed in a folder holding a real store of the
demo's names at that path, so a recipe that stops working, or a store layout that
changes under it, fails here. Each recipe's ``X``, ``y`` and ``ids`` must equal what the
store API reads.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from storage_schema.store import open_store
from tests.helpers.stores import make_store

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "storage_schema" / "SCHEMA.md"
DEMO_STORE = "demo-output/fashion_mlp"  # the store every §8 recipe reads (experiments/fashion_mlp_memorization.toml)


def section_8_recipes() -> dict[str, str]:
    """The Python blocks of §8 that read the demo store, by the library they import."""
    text = SCHEMA.read_text(encoding="utf-8")
    section = text[text.index("## 8. Reading a store without probestore"):text.index("## 9. ")]
    out: dict[str, str] = {}
    for code in re.findall(r"```python\n(.*?)```", section, flags=re.S):
        if DEMO_STORE not in code:
            continue  # recipes for other stores (token rows) are tested with their stores
        library = next(lib for lib in ("xarray", "h5py", "zarr") if re.search(rf"^import {lib}\b", code, re.M))
        assert library not in out, f"two §8 recipes for {library}"
        out[library] = code
    return out


def test_section_8_has_the_three_recipes_and_names_of_the_demo():
    recipes = section_8_recipes()
    assert sorted(recipes) == ["h5py", "xarray", "zarr"]
    assert ".asstr()" in recipes["h5py"]  # text arrays come back as bytes without it
    experiment = tomllib.loads((REPO / "experiments" / "fashion_mlp_memorization.toml").read_text())
    assert experiment["experiment"]["store"].endswith(f"{DEMO_STORE}.zarr")  # the store the demo writes
    assert "generalizing" in [run["name"] for run in experiment["runs"]]
    assert 10 in experiment["training"]["save_epochs"]  # epoch_0010
    assert "relu*" in experiment["extract"]["layers"] and experiment["model"]["options"]["depth"] >= 2  # relu2


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder with ``demo-output/fashion_mlp.{zarr,h5}``: the demo's run, checkpoint and layer names."""
    root = tmp_path_factory.mktemp("recipes")
    for suffix in (".zarr", ".h5"):
        make_store(root / f"{DEMO_STORE}{suffix}", n=60, runs=(("generalizing", 0.0), ("memorizing-0.5", 0.5)),
                   layers=(("relu1", 5), ("relu2", 7)), epochs=(0, 10))
    return root


def _run(recipe: str, folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(recipe, "SCHEMA.md §8", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("library", ["zarr", "xarray", "h5py"])
def test_recipe_reads_what_the_store_api_reads(library, demo_folder, monkeypatch):
    recipe = section_8_recipes()[library]
    got = _run(recipe, demo_folder, monkeypatch)
    suffix = ".h5" if library == "h5py" else ".zarr"
    with open_store(demo_folder / f"{DEMO_STORE}{suffix}") as store:
        np.testing.assert_array_equal(got["X"], store.read_layer("generalizing", "epoch_0010", "relu2"))
        np.testing.assert_array_equal(got["y"], store.labels())
        assert all(isinstance(i, str) for i in got["ids"])  # text, not bytes
        np.testing.assert_array_equal(got["ids"], store.sample_ids())
        if "split" in got:
            np.testing.assert_array_equal(got["split"], store.splits())
        if library == "zarr":
            assert got["class_names"] == store.dataset.class_names
        if library == "h5py":
            assert got["dataset"]["split_names"] == store.dataset.split_names
