"""Storage backends: one small interface (``Backend``), one implementation per format.

All schema semantics (what goes where, completion, validation) live in
``storage_schema.store``; a backend only moves attributes and array rows. Every backend
passes the same conformance suite (``tests/test_store_conformance.py``).
"""

from __future__ import annotations

from pathlib import Path

from probestore.errors import ConfigError
from storage_schema.backends.base import COMPRESSIONS, Backend

ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5")


def backend_for(path: str | Path) -> type[Backend]:
    """Choose the backend from the path suffix (``.zarr`` / ``.h5`` / ``.hdf5``)."""
    suffix = Path(path).suffix.lower()
    if suffix in ZARR_SUFFIXES:
        from storage_schema.backends.zarr_backend import ZarrBackend

        return ZarrBackend
    if suffix in HDF5_SUFFIXES:
        from storage_schema.backends.hdf5_backend import HDF5Backend

        return HDF5Backend
    raise ConfigError(
        "cannot tell the store format from the path",
        where=str(path),
        expected="a path ending in .zarr (directory store, the default) or .h5 / .hdf5 (one file)",
        got=repr(suffix or "no suffix"),
        fix=f"use {Path(path).with_suffix('.zarr')}",
    )


__all__ = ["Backend", "COMPRESSIONS", "backend_for", "ZARR_SUFFIXES", "HDF5_SUFFIXES"]
