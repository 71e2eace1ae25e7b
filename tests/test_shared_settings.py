"""Facts defined once (issue 13): execution settings, default grids, schema names, the loader.

Each test checks the one definition is the one every user gets, so a second copy that
drifts (the linear reductions once differed between two files) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from analyze.cluster import InProcessExecutor, _is_large, open_executor
from analyze.config import AnalysisConfig, ExecutionSettings
from analyze.solvers.grids import (
    DEFAULT_ALPHAS,
    DEFAULT_ALPHAS_TEXT,
    DEFAULT_CS,
    DEFAULT_CS_TEXT,
    check_alphas,
    check_Cs,
)
from probestore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_execution_settings_are_validated_and_shared_by_the_analysis_config():
    with pytest.raises(ConfigError, match="unknown scheduler"):
        ExecutionSettings(scheduler="lokal")
    with pytest.raises(ConfigError, match="unknown key 'Cs'"):
        ExecutionSettings().replace(Cs=[1.0])  # probe settings are not execution settings
    settings = ExecutionSettings().replace(n_workers=0)
    assert type(settings) is ExecutionSettings and settings.synchronous
    config = AnalysisConfig(scheduler="none", Cs=(1.0,))
    assert isinstance(config, ExecutionSettings)
    assert type(config.replace(threads_per_worker=2)) is AnalysisConfig  # replace keeps the class


@pytest.mark.parametrize("settings", [ExecutionSettings(scheduler="none"), AnalysisConfig(scheduler="none")])
def test_open_executor_takes_either_and_gives_back_the_same_kind(settings):
    lines: list[str] = []
    with open_executor(settings, 3, log=lines.append) as (executor, resolved):
        assert isinstance(executor, InProcessExecutor)
        assert type(resolved) is type(settings) and resolved.threads_per_worker >= 1
    assert lines and "in-process" in lines[0]


def test_only_data_that_declares_it_is_broadcast_to_workers():
    from analyze.block_task import SampleData

    sample = SampleData("fp", 2, 2, {}, np.zeros(2), None, {}, {}, (), np.zeros((2, 0)))
    assert _is_large(sample)

    class SampleDataLookalike:  # same class name elsewhere: not recognised by its name any more
        pass

    SampleDataLookalike.__name__ = "SampleData"
    assert not _is_large(SampleDataLookalike()) and not _is_large(np.zeros(3))


def test_the_default_grids_are_one_definition_and_the_fix_text_builds_them():
    import analyze.config
    import analyze.estimators

    assert analyze.config.DEFAULT_CS is DEFAULT_CS and analyze.estimators.DEFAULT_CS is DEFAULT_CS
    assert analyze.config.DEFAULT_ALPHAS is DEFAULT_ALPHAS and analyze.estimators.DEFAULT_ALPHAS is DEFAULT_ALPHAS
    assert AnalysisConfig().Cs == DEFAULT_CS and AnalysisConfig().alphas == DEFAULT_ALPHAS
    # The fix a bad grid suggests is a working grid: the default one.
    for text, check, default in ((DEFAULT_CS_TEXT, check_Cs, DEFAULT_CS), (DEFAULT_ALPHAS_TEXT, check_alphas,
                                                                           DEFAULT_ALPHAS)):
        np.testing.assert_array_equal(check(eval(text, {"np": np})), np.asarray(default))
    with pytest.raises(ConfigError) as err:
        check_Cs([0.1, -1.0])
    assert DEFAULT_CS_TEXT in str(err.value)
    with pytest.raises(ConfigError) as err:
        check_alphas([])
    assert DEFAULT_ALPHAS_TEXT in str(err.value)


def _string_constants(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def test_schema_names_and_grids_are_written_out_only_where_they_are_defined():
    """``"grad_own_logit"`` only in storage_schema/layout.py, ``logspace`` grids only in grids.py."""
    holders: dict[str, set[str]] = {"grad_own_logit": set(), "logspace": set()}
    for package in ("analyze", "extract", "storage_schema", "probestore"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if "grad_own_logit" in _string_constants(path):
                holders["grad_own_logit"].add(rel)
            if "np.logspace(" in path.read_text():
                holders["logspace"].add(rel)
    assert holders["grad_own_logit"] == {"storage_schema/layout.py"}
    assert holders["logspace"] == {"analyze/solvers/grids.py"}


def test_gradients_and_runner_do_not_import_each_other_for_the_loader():
    imports = {}
    for name in ("gradients", "runner"):
        tree = ast.parse((ROOT / "extract" / f"{name}.py").read_text())
        imports[name] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "extract.runner" not in imports["gradients"]
    assert "extract.loading" in imports["gradients"] and "extract.loading" in imports["runner"]
    for name in ("gradients", "runner"):  # no import hidden inside a function either
        tree = ast.parse((ROOT / "extract" / f"{name}.py").read_text())
        inner = [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
                 if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("extract.")]
        assert not inner, [n.module for n in inner]
