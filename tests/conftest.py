"""Shared test fixtures and the one resolver of the real test data.

Real data (MNIST t10k, DTD) lives outside the repository: ``$PROBESTORE_DATA`` when
set (the same variable the experiment files use as their data root), otherwise
``../shared/data`` relative to the repository. A test that needs a dataset carries
``@needs_data(path)``: when the data are missing it *fails* with the places looked at,
so a clone without data cannot pass while testing less. Set
``PROBESTORE_ALLOW_MISSING_DATA=1`` to opt into skipping instead (a contributor's box).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOW_MISSING_ENV = "PROBESTORE_ALLOW_MISSING_DATA"


def shared_data_dir() -> Path:
    """The data root: ``$PROBESTORE_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("PROBESTORE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A path under the data root (it may not exist: mark the test with :func:`needs_data`)."""
    return shared_data_dir().joinpath(*parts)


MNIST_DIR = data_path("mnist-t10k")
DTD_DIR = data_path("dtd10")


def needs_data(*paths: Path) -> pytest.MarkDecorator:
    """Mark a test (or a module via ``pytestmark``) as needing these data paths."""
    return pytest.mark.needs_data(*paths)


def require_data(*paths: Path) -> None:
    """Fail (or, opted in, skip) the running test when a data path is missing."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if not missing:
        return
    why = (f"test data missing: {', '.join(missing)} (data root {shared_data_dir()}: set PROBESTORE_DATA "
           f"or put the shared data at ../shared/data beside the repository)")
    if os.environ.get(ALLOW_MISSING_ENV) == "1":
        pytest.skip(why + f"; skipped because {ALLOW_MISSING_ENV}=1")
    pytest.fail(why + f"; set {ALLOW_MISSING_ENV}=1 to skip such tests instead", pytrace=False)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="needs_data"):
        require_data(*mark.args)


# The storage backends every store test runs on (a new backend joins by adding its suffix).
BACKEND_SUFFIXES = [".zarr", ".h5"]


@pytest.fixture(params=BACKEND_SUFFIXES, ids=lambda s: s.lstrip("."))
def suffix(request) -> str:
    """The store file suffix of one backend: a test taking ``suffix`` runs once per backend."""
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _private_calibration_cache(tmp_path_factory):
    """``analyze --dry-run`` calibrates and caches per machine: tests keep it out of the user's home."""
    if "PROBESTORE_CACHE_DIR" not in os.environ:
        os.environ["PROBESTORE_CACHE_DIR"] = str(tmp_path_factory.mktemp("probestore-cache"))
    yield
