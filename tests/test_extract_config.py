"""The experiment TOML: parsing, defaults, validation messages, data path candidates, hashing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from probestore.errors import ConfigError, DataError, InvalidNameError
from probestore.experiment import load_config, parse_config, resolve_data_path
from storage_schema.store import config_hash
from tests.conftest import DTD_DIR, MNIST_DIR
from tests.helpers.experiments import EXAMPLE

MNIST = MNIST_DIR

def _parse(text: str, **overrides):
    import tomllib

    return parse_config(tomllib.loads(text), overrides=overrides or None, source="exp.toml")


def _edit(old: str, new: str) -> str:
    assert old in EXAMPLE, old
    return EXAMPLE.replace(old, new, 1)


def test_example_parses_with_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.toml"
    path.write_text(EXAMPLE)
    cfg = load_config(path)
    assert cfg.name == "mnist-mlp-memorization" and cfg.seed == 3
    assert cfg.store == tmp_path / "demo-output/mnist_mlp.zarr"  # relative to the file's folder
    assert cfg.dataset.path == str(MNIST)  # first candidate's variable is unset: second wins
    assert cfg.dataset.seed == 3  # defaults to the experiment seed
    assert cfg.dataset.name == "mnist-test"  # named after the first candidate, not the one found
    assert [r.name for r in cfg.runs] == ["generalizing", "memorizing-0.5", "imported"]
    gen, mem, imp = cfg.runs
    assert gen.mode == "shuffle" and gen.seed == 3 and gen.trained
    assert mem.corruption == 0.5 and mem.mode == "uniform"
    assert not imp.trained and imp.checkpoints == str(tmp_path / "some/dir")
    assert cfg.train_config(gen).epochs == 2 and cfg.train_config(mem).epochs == 3
    assert cfg.train_config(gen).seed == 3
    ex = cfg.extract
    assert ex.layers == ("input", "relu*") and ex.batch_size == 64 and ex.dtype == "float16"
    assert ex.reduction == "auto" and ex.reduction_seed == 3 and ex.chunk_rows is None
    assert ex.reduction_for("relu1") == "random:8" and ex.reduction_for("relu2") == "auto"
    assert cfg.concepts.families == ("shape",)
    assert cfg.splits == {"train": 0.6, "valid": 0.2, "test": 0.2, "predefined": False}


def test_glob_reduction_override_exact_name_wins():
    cfg = _parse(_edit('reductions = { relu1 = "random:8" }',
                       'reductions = { "relu*" = "gap", relu2 = "random:4" }'))
    assert cfg.extract.reduction_for("relu1") == "gap"
    assert cfg.extract.reduction_for("relu2") == "random:4"
    assert cfg.extract.reduction_for("fc1") == "auto"


def test_content_hash_ignores_where_and_how_fast_but_not_what():
    base = _parse(EXAMPLE)
    moved = _parse(EXAMPLE, store="elsewhere/x.h5", device="cpu", num_workers=3, compression="none")
    # --store is relative to the current directory (made absolute), not to the file's folder
    assert moved.store == Path.cwd() / "elsewhere/x.h5" and moved.extract.device == "cpu"
    assert base.extract.compression == "fast" and moved.extract.compression == "none"
    assert moved.training["device"] == "cpu"  # --device applies to training too
    assert config_hash(base.content()) == config_hash(moved.content())
    rebatched = _parse(EXAMPLE, batch_size=32)
    assert rebatched.extract.batch_size == 32
    assert config_hash(base.content()) != config_hash(rebatched.content())
    relayered = _parse(EXAMPLE, layers=["relu1"])
    assert relayered.extract.layers == ("relu1",)
    assert config_hash(base.content()) != config_hash(relayered.content())
    # the data path is recorded as written (candidates), not as resolved on this machine
    assert base.content()["dataset"]["path"][1] == str(MNIST)
    assert "store" not in base.content()["experiment"]
    # [analysis] belongs to `probestore analyze`: kept, not hashed
    assert base.analysis == {"probes": ["classifier"]} and "analysis" not in base.content()
    reanalysed = _parse(EXAMPLE.replace('probes = ["classifier"]', 'probes = ["rcv"]'))
    assert config_hash(base.content()) == config_hash(reanalysed.content())


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("batch_size = 64", "batchsize = 64", "did you mean 'batch_size'"),
        ("[concepts]", "[concept]", "did you mean 'concepts'"),
        ('mode = "uniform"', 'mode = "unifrom"', "did you mean 'uniform'"),
        ('families = ["shape"]', 'families = ["colours"]', "did you mean 'colour'"),
        ("max_samples = 300", "max_sample = 300", "did you mean 'max_samples'"),
        ('name = "generalizing"', 'nme = "generalizing"', "did you mean 'name'"),
        ('dtype = "float16"', 'dtype = "float61"', "did you mean 'float16'"),
        ('dtype = "float16"', 'dtype = "float16"\ncompression = "smal"', "did you mean 'small'"),
    ],
)
def test_unknown_keys_and_values_suggest_the_closest(old, new, message):
    with pytest.raises(ConfigError) as err:
        _parse(_edit(old, new))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("batch_size = 64", 'batch_size = "64"', "[extract].batch_size"),
        ("batch_size = 64", "batch_size = 0", "[extract].batch_size"),
        ("corruption = 0.5", "corruption = 1.5", "corruption"),
        ("corruption = 0.5", "corruption = true", "corruption"),
        ('layers = ["input", "relu*"]', "layers = []", "[extract].layers"),
        ("seed = 3", "seed = -1", "[experiment].seed"),
        ("train = 0.6", "train = 0.7", "[splits]"),
        ('store = "demo-output/mnist_mlp.zarr"', 'store = "out/store.npz"', "[experiment].store"),
        ('reductions = { relu1 = "random:8" }', 'reductions = { relu1 = "random:x" }', "reduction"),
        ("[training]\nepochs = 2", "[training]\nepochs = 2.5", "training"),
    ],
)
def test_wrong_types_and_values_name_the_field(old, new, where):
    with pytest.raises(ConfigError) as err:
        _parse(_edit(old, new))
    assert where in str(err.value)


def test_run_level_errors():
    with pytest.raises(ConfigError, match="two runs are called"):
        _parse(_edit('name = "memorizing-0.5"', 'name = "generalizing"'))
    with pytest.raises(InvalidNameError):
        _parse(_edit('name = "imported"', 'name = "../escape"'))
    with pytest.raises(ConfigError, match="is not trained"):
        _parse(_edit('checkpoints = "some/dir"', 'checkpoints = "some/dir"\ntraining = { epochs = 1 }'))
    no_epochs = _edit("[training]\nepochs = 2\nsave_epochs = [0, 1, 2]\n", "")
    with pytest.raises(ConfigError, match="no epochs"):
        _parse(no_epochs)
    with pytest.raises(ConfigError, match="no run matches 'generalising'.*did you mean 'generalizing'"):
        _parse(EXAMPLE).select_runs(["generalising"])


def test_missing_required_tables_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'extract'"):
        _parse(EXAMPLE[: EXAMPLE.index("[extract]")])
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiment\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_data_path_candidates_first_existing_wins(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    assert resolve_data_path([str(a), str(b)], where="w") == str(b)
    a.mkdir()
    assert resolve_data_path([str(a), str(b)], where="w") == str(a)
    monkeypatch.setenv("PROBESTORE_DATA", str(tmp_path))
    assert resolve_data_path(["$PROBESTORE_DATA/b"], where="w") == str(b)
    assert resolve_data_path("${PROBESTORE_DATA}/a", where="w") == str(a)


def test_no_candidate_lists_every_path_tried_and_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv("PROBESTORE_DATA", raising=False)
    missing = tmp_path / "nowhere" / "fashion-mnist"
    with pytest.raises(DataError) as err:
        resolve_data_path(["$PROBESTORE_DATA/fashion-mnist", str(missing)], where="[dataset].path")
    msg = str(err.value)
    assert "$PROBESTORE_DATA/fashion-mnist (PROBESTORE_DATA not set)" in msg
    assert f"{missing} (does not exist)" in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "[dataset].path" in msg


def test_config_with_missing_data_fails_before_anything_else(tmp_path):
    text = _edit(f'"{MNIST}"', f'"{tmp_path / "gone"}"')
    with pytest.raises(DataError, match="dataset not found at any candidate path"):
        _parse(text)
    # a typo elsewhere in [dataset] is reported before the missing data
    with pytest.raises(ConfigError, match="did you mean 'subset'"):
        _parse(text.replace('subset = "test"', 'subst = "test"'))


def test_relative_paths_are_relative_to_cwd(tmp_path, monkeypatch):
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = _parse(_edit(f'path = ["$PROBESTORE_TEST_NOT_SET/mnist", "{MNIST}"]', 'path = "data/mnist"'))
    assert Path(cfg.dataset.path).resolve() == data.resolve()


def test_docstring_example_is_valid(tmp_path, monkeypatch):
    """The module docstring documents the file format; its example must parse."""
    import probestore.experiment as mod

    doc = mod.__doc__
    block = textwrap.dedent(doc[doc.index("    [experiment]"): doc.index("Paths (")])
    block = block.replace('["$PROBESTORE_DATA/fashion-mnist", "/usr/share/datasets/fashion-mnist"]',
                          f'"{MNIST}"').replace('csv = ["my_concepts.csv"]', "csv = []")
    block = block.replace('checkpoints = "path/to/manifest.json"', 'checkpoints = "x.json"')
    cfg = _parse(block)
    assert [r.name for r in cfg.runs] == ["memorizing-0.5", "imported"]
    assert cfg.concepts.folders == {"striped": "examples/striped"}


@pytest.mark.parametrize("name", ["fashion_mlp_memorization.toml", "dtd_cnn_concepts.toml"])
def test_repository_experiments_parse(name, monkeypatch):
    """The demo's experiment files follow this format (data paths aside)."""
    import tomllib

    path = Path(__file__).resolve().parents[1] / "experiments" / name
    if not path.is_file():
        pytest.skip(f"{name} not in this checkout")
    data = tomllib.loads(path.read_text())
    data["dataset"]["path"] = str(MNIST) if data["dataset"]["kind"] == "idx" else str(DTD_DIR)
    cfg = parse_config(data, source=name)
    assert cfg.runs and cfg.extract.layers
