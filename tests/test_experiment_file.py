"""One parser of the experiment file for every command (issue 13): torch-free, same paths, same hashes.

``probestore.experiment`` is the only reader of an experiment TOML: ``train`` /
``extract`` parse the whole file with it, ``analyze --config`` reads its ``[analysis]``
table and ``[experiment].store`` with it. These tests pin the promises that follow:
parsing never imports torch (nor either stage), ``store = "$VAR/x.zarr"`` means the same
to ``analyze --config`` as to ``extract``, and the hash a store records for the
repository's experiments is the one the parser of earlier releases gave.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from analyze.config import load_config as load_analysis_config
from probestore.cli import main
from probestore.errors import ConfigError
from probestore.experiment import load_config, parse_config, read_analysis
from probestore.experiment.document import read_experiment_table
from storage_schema.reductions import LINEAR_REDUCTIONS, lift_scale_for, parse_reduction
from tests.conftest import BACKEND_SUFFIXES, REPO
from tests.helpers.stores import make_store

#: ``config_hash`` of the repository's experiments as computed by the parser since
#: issue 13 (extract/config.py at 238bddc). Stores extracted from these files record it;
#: a different hash would make every existing store refuse to resume ("different
#: experiment"). Change these only together with a note in the release notes.
#: Issue 14 changed two (README "Changes"): the dtd and convnet files' data candidate
#: "../shared/data/..." became "../../shared/data/...", since relative paths are now
#: relative to the file's folder (the hash records the candidates as written).
PINNED_HASHES = {
    "dtd_cnn_concepts.toml": "sha256:f38d836716484e49f056a3aab9634b1917c985fe31b4b189243f6c16c7efabb8",
    "fashion_mlp_memorization.toml": "sha256:20eab9da3c660d6667d4dddbc7658a8e97c38d3437deccc3b26245ef93ed8a17",
    "mnist_convnet_probes.toml": "sha256:a0cb83085de0982d8261f494634a1f029a0142266eb56fcb2228f48afa1e43b9",
}

#: Parses every experiment of the repository with torch made unimportable; prints the
#: hashes and the project / torch modules that parsing loaded.
_PARSE_WITHOUT_TORCH = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.modules["torch"] = None  # `import torch` now raises ImportError
    from probestore.experiment import load_config, read_analysis
    hashes = {}
    for path in sorted(Path("experiments").glob("*.toml")):
        hashes[path.name] = load_config(path).content_hash()
        read_analysis(path)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "extract", "analyze")
                    and sys.modules[m] is not None)
    print(json.dumps({"hashes": hashes, "loaded": loaded}))
""")


#: The tables after ``[experiment]`` / ``[analysis]`` of a complete, data-free experiment file.
_REST = textwrap.dedent("""
    [dataset]
    kind = "digits"
    [model]
    name = "mlp"
    [[runs]]
    name = "imported"
    checkpoints = "c.json"
    [extract]
    layers = ["fc1"]
""")


def _fake_data_root(root: Path) -> Path:
    """Folders where the experiments' ``$PROBESTORE_DATA/...`` candidates point.

    Parsing checks that a dataset path exists, not what it holds, and the hash records
    the candidates as written: so the hashes are checked on any machine, with or
    without the real data.
    """
    for name in ("fashion-mnist", "mnist-t10k", "dtd10"):
        (root / name).mkdir(parents=True)
    return root


def _checkout_with_demo_inputs(root: Path) -> Path:
    """The experiment files copied under ``root`` beside stand-ins for what ``make demo`` makes.

    The language-model experiment names files that `make demo-lm-data` writes into
    demo-output/ (the WordNet sentences, the MiniLM folder); a fresh clone has neither,
    and this test must not write into the checkout. Paths resolve against each file's
    folder and are hashed as written, so the copies parse to the same hashes.
    """
    shutil.copytree(REPO / "experiments", root / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "demo-output" / "data").mkdir(parents=True)
    (root / "demo-output" / "data" / "wordnet_pos.jsonl").write_text("")
    (root / "demo-output" / "models" / "minilm").mkdir(parents=True)
    (root / "demo-output" / "models" / "minilm" / "config.json").write_text("{}")
    return root


def test_experiment_files_parse_without_torch_and_keep_their_hashes(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PROBESTORE_DATA": str(_fake_data_root(tmp_path / "data")),
           "HOME": str(tmp_path)}
    checkout = _checkout_with_demo_inputs(tmp_path / "checkout")
    out = subprocess.run([sys.executable, "-c", _PARSE_WITHOUT_TORCH], cwd=checkout, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["loaded"] == []  # neither torch nor a stage: the parser sits below both
    files = sorted(p.name for p in (REPO / "experiments").glob("*.toml"))
    assert sorted(result["hashes"]) == files and files
    for name, digest in PINNED_HASHES.items():
        assert result["hashes"][name] == digest, f"{name}: the stored config hash changed"


def test_torch_is_really_unimportable_in_the_check():
    """The check above would pass vacuously if ``sys.modules["torch"] = None`` did not bite."""
    code = 'import sys; sys.modules["torch"] = None\ntry:\n    import extract.train\nexcept ImportError:\n    print("refused")'
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "refused", out.stderr


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
def test_analyze_config_expands_store_variables_like_extract(tmp_path, monkeypatch, capsys, suffix):
    """``store = "$VAR/x.zarr"``: found by ``probestore analyze --config`` (it used not to be)."""
    data = tmp_path / "somewhere"
    make_store(data / f"x{suffix}", n=80)
    monkeypatch.setenv("PROBESTORE_B13_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "exp.toml"
    toml.write_text(f'[experiment]\nname = "x"\nstore = "$PROBESTORE_B13_DATA/x{suffix}"\n\n'
                    '[analysis]\nlayers = ["l1"]\nprobes = ["classifier"]\nscheduler = "none"\n')
    assert main(["analyze", "--config", str(toml), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "clean/epoch_0000/l1" in out and "/l2" not in out
    config, store = load_analysis_config(toml)
    assert store == str(data / f"x{suffix}") and config.layers == ("l1",)
    # the extraction side reads the very same path out of the same table
    assert read_analysis(toml)[1] == data / f"x{suffix}"


def test_analyze_config_names_an_unset_store_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PROBESTORE_B13_UNSET", raising=False)
    toml = tmp_path / "exp.toml"
    toml.write_text('[experiment]\nname = "x"\nstore = "$PROBESTORE_B13_UNSET/x.zarr"\n\n[analysis]\n' + _REST)
    assert main(["analyze", "--config", str(toml), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "$PROBESTORE_B13_UNSET not set" in err and "[experiment].store" in err
    # the same file, the same message from the extraction side's parser
    with pytest.raises(ConfigError, match=r"\$PROBESTORE_B13_UNSET not set"):
        load_config(toml)


def test_analyze_config_refuses_a_bad_experiment_table_like_extract(tmp_path):
    """An ``[experiment]`` table that ``extract`` refuses is refused by ``analyze --config`` too."""
    toml = tmp_path / "exp.toml"
    toml.write_text('[experiment]\nname = "x"\nstore = "out/x.parquet"\n\n[analysis]\n')
    with pytest.raises(ConfigError, match="unknown store format.*use out/x.parquet.zarr"):
        load_analysis_config(toml)
    toml.write_text('[experiment]\nname = "x"\nstore = "out/x.zarr"\nstroe = 1\n[analysis]\n')
    with pytest.raises(ConfigError, match="did you mean 'store'"):
        load_analysis_config(toml)


def test_an_analysis_only_file_needs_no_experiment_table(tmp_path):
    toml = tmp_path / "analysis.toml"
    toml.write_text("[analysis]\nCs = [1.0, 0.1]\n")
    table, store = read_analysis(toml)
    assert store is None and table == {"Cs": [1.0, 0.1]}
    with pytest.raises(ConfigError, match="missing required key 'experiment'"):
        read_experiment_table(toml)  # what experiments/demo.py asks: where the store goes
    with pytest.raises(ConfigError, match="not valid TOML"):
        toml.write_text("[analysis\n")
        read_analysis(toml)


def test_reduction_grammar_is_schema_data():
    """Parsing a spec and the lift scale need no torch; the linear set excludes the max."""
    assert parse_reduction("Random: 12") == ("random", 12)
    assert "gmp" not in LINEAR_REDUCTIONS and {"gap", "random", "project", "flatten"} <= set(LINEAR_REDUCTIONS)
    assert lift_scale_for({"kind": "project", "params": {"k": 6}, "source_shape": [2, 3, 4]}) == 6 / 24
    base = {"experiment": {"name": "x", "store": "x.zarr"}, "dataset": {"kind": "digits"},
            "model": {"name": "mlp"}, "runs": [{"name": "r", "checkpoints": "c.json"}],
            "extract": {"layers": ["fc1"], "reductions": {"fc*": "random:1k"}}}
    with pytest.raises(ConfigError, match=r"\[extract\]|reduction 'random' needs a positive integer K"):
        parse_config(base, source="t.toml")
