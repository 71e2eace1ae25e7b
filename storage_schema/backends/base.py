"""The interface a storage backend implements.

Nodes are addressed by ``/``-joined paths relative to the store root (``""`` is the
root). Names have been validated by ``storage_schema.names`` before they get here.
Attribute values are JSON-compatible (dicts, lists, str, int, float, bool, None).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

#: How numeric arrays are compressed: a writer's trade of time for disk. Readers never
#: need to know (each format records its codecs), so this is not part of the schema.
#: ``fast`` (default): lz4 (Zarr) / lzf (HDF5), no byte shuffle; on ReLU features it
#: compresses ~1.3-2x at ~400 MB/s per core. ``small``: zstd (Zarr) / gzip (HDF5) with
#: byte shuffle, ~1.5-2.3x at ~100 MB/s per core. ``none``: raw chunks, for machines
#: where the forward pass keeps every core busy and disk is plentiful.
COMPRESSIONS = ("fast", "small", "none")

#: The fix every "damaged checkpoint" error names: a command that works (tested in
#: tests/test_repair.py). The store does not know which experiment file wrote it,
#: hence the CONFIG placeholder.
REPAIR_FIX = ("re-extract the damaged checkpoints with `probestore extract CONFIG --repair` "
              "(CONFIG: the experiment file that wrote this store)")
#: The fix for damage outside any checkpoint (dataset arrays, root metadata).
RECREATE_FIX = ("re-create the store with `probestore extract CONFIG --overwrite` "
                "(CONFIG: the experiment file that wrote this store)")


def damage_fix(node: str) -> str:
    """The fix for damage at ``node``: repair when it lies inside a checkpoint, else re-create."""
    return REPAIR_FIX if "/checkpoints/" in f"/{node}" else RECREATE_FIX


class Backend(ABC):
    """Low-level access to one store. Subclasses: ``ZarrBackend``, ``HDF5Backend``."""

    format_name: str = ""
    #: Whether different arrays may be written from several threads at once.
    concurrent_writes: bool = False

    def __init__(self, path: str | Path, *, read_only: bool) -> None:
        self.path = Path(path)
        self.read_only = read_only

    # --- lifecycle ---------------------------------------------------------------
    @classmethod
    @abstractmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> Backend:
        """Create an empty store at ``path`` (refusing an existing one unless ``overwrite``)."""

    @classmethod
    @abstractmethod
    def exists(cls, path: str | Path) -> bool:
        """Whether something that could be a store is at ``path``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles (a no-op where none are held)."""

    # --- attributes --------------------------------------------------------------
    @abstractmethod
    def get_attrs(self, node: str) -> dict[str, Any]:
        """All attributes of a group or array."""

    @abstractmethod
    def update_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        """Merge ``attrs`` into the node's attributes (atomically where the format allows)."""

    # --- structure ---------------------------------------------------------------
    @abstractmethod
    def require_group(self, node: str) -> None:
        """Create the group (and parents) if missing."""

    @abstractmethod
    def node_kind(self, node: str) -> str | None:
        """``"group"``, ``"array"`` or ``None`` when nothing is there."""

    @abstractmethod
    def list_children(self, node: str) -> tuple[list[str], list[str]]:
        """Sorted names of the child groups and child arrays of a group."""

    @abstractmethod
    def delete(self, node: str) -> None:
        """Remove a group or array and everything under it."""

    # --- arrays ------------------------------------------------------------------
    @abstractmethod
    def create_array(
        self,
        node: str,
        *,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        attrs: dict[str, Any] | None = None,
        compression: str = "fast",
    ) -> None:
        """Create a chunked array filled with the dtype's zero (``compression``: :data:`COMPRESSIONS`)."""

    @abstractmethod
    def array_meta(self, node: str) -> tuple[tuple[int, ...], np.dtype, tuple[int, ...]]:
        """``(shape, dtype, chunks)`` of an array."""

    @abstractmethod
    def write(self, node: str, values: np.ndarray, start: int = 0) -> None:
        """Write ``values`` into rows ``start : start + len(values)``."""

    @abstractmethod
    def read(self, node: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Read all rows, a slice, or sorted integer rows of an array."""

    @abstractmethod
    def to_dask(self, node: str):
        """A lazy dask array over the stored chunks (picklable for distributed workers)."""

    @abstractmethod
    def initialized_chunks(self, node: str) -> tuple[int, int]:
        """``(chunks present on disk, chunks in the grid)``: a complete array has all."""

    @abstractmethod
    def stored_bytes(self, node: str) -> int:
        """Bytes on disk used by a node and everything under it."""
