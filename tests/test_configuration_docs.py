"""docs/configuration.md is the experiment parser's own key registry, and cannot drift from it.

Four guarantees: the committed reference equals the generator's output; every key
list a parser of probestore/experiment checks against is a registry (so an accepted
key is a documented key); the registries of dataclass-backed tables name exactly the
dataclass's fields; and every key's documented example is accepted by the parser
inside a minimal valid experiment file (and an unknown key beside it is refused).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from probestore.errors import ConfigError, DataError
from probestore.experiment import DatasetSpec, ExtractOptions, TrainConfig, load_config
from probestore.experiment.document import TABLES
from probestore.experiment.keys import Key, KeyTable, all_tables
from probestore.experiment.reference import render

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "configuration.md"
PARSERS = REPO / "probestore" / "experiment"

#: A minimal valid experiment (digits: bundled with scikit-learn, no data path).
BASE = {
    "experiment": {"name": "t", "store": "out/t.zarr"},
    "dataset": {"kind": "digits"},
    "model": {"name": "mlp"},
    "training": {"epochs": 1},
    "runs": [{"name": "r"}],
    "extract": {"layers": ["input"]},
}


def _tables() -> dict[str, KeyTable]:
    return {t.header: t for t in all_tables()}


def test_committed_reference_is_the_generated_one():
    assert REFERENCE.exists(), "docs/configuration.md missing: run `make docs`"
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run `make docs` "
        "(python -m probestore.experiment.reference > docs/configuration.md)")


def test_every_registered_key_is_in_the_reference():
    text = REFERENCE.read_text(encoding="utf-8")
    for table in all_tables():
        section = text.split(f"## `{table.header}`", 1)
        assert len(section) == 2, f"no section for {table.header}"
        body = section[1].split("\n## ", 1)[0]
        for name in table:
            assert f"| `{name}` |" in body, f"{table.header} {name} not documented"


def _key_lists_of_check_keys() -> list[tuple[str, int, str]]:
    """(file, line, argument source) of every ``check_keys(table, ALLOWED, ...)`` in the parsers."""
    out = []
    for path in sorted(PARSERS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_keys" and len(node.args) >= 2:
                out.append((path.name, node.lineno, ast.unparse(node.args[1])))
    return out


def test_every_parser_key_list_is_a_registry():
    """An accepted key is a documented key: the parsers check keys against registries only."""
    import importlib

    calls = _key_lists_of_check_keys()
    assert len(calls) >= 8, calls
    for filename, line, arg in calls:
        if arg == "TABLES":  # the top-level table names: each has a registry (next test)
            continue
        module = importlib.import_module(f"probestore.experiment.{filename[:-3]}")
        value = getattr(module, arg, None)
        assert isinstance(value, KeyTable), (
            f"{filename}:{line} checks keys against {arg}, not a KeyTable: make the key list a "
            "registry (probestore/experiment/keys.py) so that docs/configuration.md documents it")


def test_every_top_level_table_is_documented():
    headers = {h.strip("[]") for h in _tables()}
    assert set(TABLES) <= headers, set(TABLES) - headers


@pytest.mark.parametrize("table, cls", [("[dataset]", DatasetSpec), ("[training]", TrainConfig),
                                        ("[extract]", ExtractOptions)])
def test_dataclass_registries_name_every_field(table, cls):
    """DatasetSpec.from_dict / TrainConfig.from_dict check against the fields: the same set."""
    assert list(_tables()[table]) == [f.name for f in dataclasses.fields(cls)]


def test_analysis_registry_names_every_setting():
    from analyze.config import _NOT_SETTINGS, AnalysisConfig

    fields = [f.name for f in dataclasses.fields(AnalysisConfig) if f.name not in _NOT_SETTINGS]
    assert sorted(_tables()["[analysis]"]) == sorted(fields)


def test_every_key_has_type_meaning_and_example():
    for table in all_tables():
        for name, key in table.items():
            assert key.type and key.meaning and key.example, f"{table.header} {name}"
            assert "\n" not in key.meaning, f"{table.header} {name}: one line"


def _cases() -> list[tuple[str, str, Key]]:
    return [(t.header, name, key) for t in all_tables() for name, key in t.items()]


def _snippet(name: str, key: Key) -> dict:
    lines = [p.strip() for p in key.example_with.split(";") if p.strip()] + [f"{name} = {key.example}"]
    return tomllib.loads("\n".join(lines))


def _with_data_path(dataset: dict, folder: Path) -> dict:
    """A dataset table whose path exists (the parser checks existence, nothing more)."""
    kind = dataset.get("kind", "digits")
    if kind == "digits" or "path" in dataset:
        return dataset
    target = folder / {"npz": "data.npz", "text": "data.jsonl"}.get(kind, "data")
    if target.suffix:
        target.touch()
    else:
        target.mkdir(exist_ok=True)
    return {**dataset, "path": target.name}


def _experiment_with(header: str, snippet: dict, folder: Path) -> dict:
    doc = {k: (dict(v) if isinstance(v, dict) else [dict(r) for r in v]) for k, v in BASE.items()}
    table = header.strip("[]")
    if table == "runs":
        doc["runs"][0].update(snippet)
        if "checkpoints" in snippet:
            doc["runs"][0].pop("training", None)
    elif table == "concepts.sets":
        doc["concepts"] = {"sets": {"s": snippet}}
    elif table == "concepts.random_sets":
        doc["concepts"] = {"random_sets": snippet}
    else:
        doc.setdefault(table, {}).update(snippet)
    doc["dataset"] = _with_data_path(doc["dataset"], folder)
    return doc


def _toml(doc: dict) -> str:
    """TOML text of a nested dict (enough for the experiment file's shapes)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for table, body in doc.items():
        for entry in body if isinstance(body, list) else [body]:
            lines.append(f"[[{table}]]" if isinstance(body, list) else f"[{table}]")
            lines += [f'"{k}" = {value(v)}' for k, v in entry.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("header, name, key", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_example_is_accepted_and_a_typo_beside_it_refused(tmp_path, monkeypatch, header, name, key):
    monkeypatch.setenv("PROBESTORE_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    snippet = _snippet(name, key)
    if header == "[analysis]":
        from analyze.config import AnalysisConfig

        AnalysisConfig.from_dict(snippet)
        with pytest.raises(ConfigError, match="unknown key"):
            AnalysisConfig.from_dict({**snippet, name + "x": 1})
        return
    doc = _experiment_with(header, snippet, tmp_path)
    path = tmp_path / "exp.toml"
    path.write_text(_toml(doc))
    load_config(path)
    bad = _experiment_with(header, {**snippet, name + "_typo": 1}, tmp_path)
    path.write_text(_toml(bad))
    with pytest.raises(ConfigError, match=f"unknown key '{name}_typo'"):
        load_config(path)


# --------------------------------------------------------------------------- relative paths

_PATHS_FILE = """
[experiment]
name = "paths"
store = "out/x{suffix}"
[dataset]
kind = "idx"
path = ["$PROBESTORE_TEST_UNSET_ROOT/mnist", "data/mnist"]
[model]
name = "mlp"
[[runs]]
name = "imported"
checkpoints = "ckpts/manifest.json"
[extract]
layers = ["input"]
[concepts]
csv = ["concepts.csv"]
folders = {{ striped = "examples/striped" }}
sets = {{ banded = "examples/banded" }}
[analysis]
results = "results/r.parquet"
scheduler = "none"
"""


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_relative_paths_are_relative_to_the_file_not_the_current_directory(tmp_path, monkeypatch, suffix):
    from analyze.config import load_config as load_analysis_config
    from probestore.experiment import read_analysis
    from probestore.experiment.document import read_experiment_table

    folder = tmp_path / "project" / "configs"
    (folder / "data" / "mnist").mkdir(parents=True)
    path = folder / "exp.toml"
    path.write_text(_PATHS_FILE.format(suffix=suffix))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("PROBESTORE_TEST_UNSET_ROOT", raising=False)
    for given in (path, Path("..") / "project" / "configs" / "exp.toml"):  # absolute, and relative to the cwd
        cfg = load_config(given)
        here = Path(given).parent
        assert cfg.store == here / f"out/x{suffix}"
        assert cfg.store.resolve() == folder / f"out/x{suffix}"
        assert cfg.checkpoints_dir.resolve() == folder / "out/x-checkpoints"
        assert Path(cfg.dataset.path).resolve() == folder / "data" / "mnist"
        assert Path(cfg.runs[0].checkpoints).resolve() == folder / "ckpts" / "manifest.json"
        assert [Path(c).resolve() for c in cfg.concepts.csv] == [folder / "concepts.csv"]
        assert Path(cfg.concepts.folders["striped"]).resolve() == folder / "examples" / "striped"
        assert Path(cfg.concepts.sets["banded"].folder).resolve() == folder / "examples" / "banded"
        assert read_experiment_table(given).store == cfg.store
        table, store = read_analysis(given)
        assert store == cfg.store and Path(table["results"]).resolve() == folder / "results" / "r.parquet"
        analysis, store_text = load_analysis_config(given)
        assert Path(analysis.results).resolve() == folder / "results" / "r.parquet"
        assert Path(store_text) == cfg.store
    # the hashed content keeps every path as written: the same experiment wherever it lives
    assert cfg.raw["dataset"]["path"] == ["$PROBESTORE_TEST_UNSET_ROOT/mnist", "data/mnist"]
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert load_config(moved / "exp.toml").content_hash() == cfg.content_hash()


def test_command_line_store_stays_relative_to_the_current_directory(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    (folder / "data" / "mnist").mkdir(parents=True)
    (folder / "exp.toml").write_text(_PATHS_FILE.format(suffix=".zarr"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "exp.toml", overrides={"store": "cli/x.zarr"})
    assert cfg.store == tmp_path / "cli" / "x.zarr"
    assert cfg.checkpoints_dir == tmp_path / "cli" / "x-checkpoints"


def test_a_missing_relative_dataset_path_names_where_it_was_looked_for(tmp_path, monkeypatch):
    """The error shows the path resolved against the file's folder, so the user sees the rule."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "exp.toml").write_text(_PATHS_FILE.format(suffix=".zarr"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROBESTORE_TEST_UNSET_ROOT", raising=False)
    with pytest.raises(DataError, match=re.escape(str(folder / "data" / "mnist"))):
        load_config(folder / "exp.toml")
