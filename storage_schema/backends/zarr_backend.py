"""Zarr v3 directory store: the default backend.

Each group and array is a directory with a ``zarr.json``; zarr-python writes every
file to a temporary name and renames it, so a killed writer leaves either the old or
the new file, never half of one. Attribute updates rewrite the node's ``zarr.json``
the same way. Plain zarr / xarray users can open the store without probestore.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs

from storage_schema.backends.base import Backend
from storage_schema.errors import NotFoundError, StoreFormatError

# Fixed-length unicode (sample ids) has no ratified Zarr v3 data-type spec yet; the
# representation is zarr-python's and SCHEMA.md documents it. Silence the warning.
warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")


def _codecs_for(dtype: np.dtype) -> dict[str, Any]:
    if dtype.kind in "fiub":
        # lz4 with byte shuffling: the point of a store is to read features thousands of
        # times faster than the network computes them, and to write them without slowing
        # the forward pass. lz4 compresses ~4x faster than zstd(3) and decodes faster,
        # at ~40% more disk (see BENCHMARKS.md).
        return {"compressors": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")}
    return {}


def _dimension_names(node: str, ndim: int) -> list[str]:
    """Name axes so that xarray can open the arrays: samples first, then features."""
    if node.endswith("/indices"):
        return ["index"][:ndim]
    names = ["sample", "feature"] + [f"dim_{i}" for i in range(2, ndim)]
    return names[:ndim]


class ZarrBackend(Backend):
    """A ``.zarr`` directory store (Zarr format 3)."""

    format_name = "zarr"

    def __init__(self, path: str | Path, *, read_only: bool) -> None:
        super().__init__(path, read_only=read_only)
        mode: Literal["r", "r+"] = "r" if read_only else "r+"
        try:
            self._root = zarr.open_group(str(self.path), mode=mode, zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise NotFoundError(
                "no Zarr store here", where=str(self.path), fix="check the path or create the store first"
            ) from exc
        except Exception as exc:  # unreadable zarr.json and similar
            raise StoreFormatError(
                "cannot open the Zarr store", where=str(self.path), got=f"{type(exc).__name__}: {exc}"
            ) from exc

    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> ZarrBackend:
        path = Path(path)
        if path.exists() and overwrite:
            shutil.rmtree(path)
        zarr.open_group(str(path), mode="w-", zarr_format=3)
        return cls(path, read_only=False)

    @classmethod
    def exists(cls, path: str | Path) -> bool:
        return (Path(path) / "zarr.json").exists()

    # --- helpers -----------------------------------------------------------------
    def _open(self, node: str):
        try:
            return self._root[node] if node else self._root
        except KeyError as exc:
            raise NotFoundError("missing node", where=f"{self.path}/{node}") from exc
        except Exception as exc:
            raise StoreFormatError(
                "unreadable metadata", where=f"{self.path}/{node}/zarr.json", got=f"{type(exc).__name__}: {exc}"
            ) from exc

    def _array(self, node: str) -> zarr.Array:
        obj = self._open(node)
        if not isinstance(obj, zarr.Array):
            raise StoreFormatError("expected an array, found a group", where=f"{self.path}/{node}")
        return obj

    # --- attributes --------------------------------------------------------------
    def get_attrs(self, node: str) -> dict[str, Any]:
        return dict(self._open(node).attrs)

    def update_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        self._open(node).attrs.update(attrs)

    # --- structure ---------------------------------------------------------------
    def require_group(self, node: str) -> None:
        self._root.require_group(node)

    def node_kind(self, node: str) -> str | None:
        meta = self.path / node / "zarr.json" if node else self.path / "zarr.json"
        if not meta.exists():
            return None
        obj = self._open(node)
        return "array" if isinstance(obj, zarr.Array) else "group"

    def list_children(self, node: str) -> tuple[list[str], list[str]]:
        group = self._open(node)
        if isinstance(group, zarr.Array):
            return [], []
        return sorted(group.group_keys()), sorted(group.array_keys())

    def delete(self, node: str) -> None:
        target = self.path / node
        if target.exists():
            shutil.rmtree(target)

    # --- arrays ------------------------------------------------------------------
    def create_array(self, node, *, shape, dtype, chunks, attrs=None) -> None:
        dtype = np.dtype(dtype)
        fill = "" if dtype.kind == "U" else 0
        self._root.create_array(
            node,
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            fill_value=fill,
            attributes=attrs or {},
            dimension_names=_dimension_names(node, len(shape)),
            overwrite=True,
            **_codecs_for(dtype),
        )

    def array_meta(self, node: str):
        arr = self._array(node)
        return tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks)

    def write(self, node: str, values: np.ndarray, start: int = 0) -> None:
        # Write every chunk, even all-zero ones: a complete block must have all of its
        # chunks on disk so that a missing chunk file can be told apart from zeros.
        arr = self._array(node).with_config({"write_empty_chunks": True})
        arr[start : start + len(values)] = values

    def read(self, node: str, rows=None) -> np.ndarray:
        arr = self._array(node)
        try:
            if rows is None:
                return np.asarray(arr[...])
            if isinstance(rows, slice):
                return np.asarray(arr[rows])
            return np.asarray(arr.get_orthogonal_selection((np.asarray(rows),)))
        except Exception as exc:
            raise StoreFormatError(
                "corrupted chunk data", where=f"{self.path}/{node}", got=f"{type(exc).__name__}: {exc}",
                fix="re-extract this checkpoint (probestore extract ... re-writes incomplete or damaged layers)",
            ) from exc

    def to_dask(self, node: str):
        import dask.array as da

        arr = zarr.open_array(str(self.path), path=node, mode="r", zarr_format=3)
        return da.from_zarr(arr)

    def initialized_chunks(self, node: str) -> tuple[int, int]:
        arr = self._array(node)
        return int(arr.nchunks_initialized), int(arr.nchunks)

    def stored_bytes(self, node: str) -> int:
        target = self.path / node if node else self.path
        if target.is_file():
            return target.stat().st_size
        return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
