"""Names that carry their record: what ``runs()``, ``checkpoints()`` and ``layers()`` return.

The three listings of :class:`~storage_schema.store.ActivationStore` return the same kind
of thing, a :class:`Named`: a ``str`` equal to the name, whose other attributes are the
record's (``RunMeta``, ``CheckpointMeta``, ``BlockMeta``). Being a ``str`` is the point:
a returned value goes back into every API that takes a name (the store's methods, the
layout's paths, :func:`probestore.selectors.select`, ``json.dumps``, dict keys, f-strings,
comparisons with plain names) without ``.name``, while code that wants the metadata
reads ``.epoch``, ``.complete``, ``.architecture``... on the same object. Earlier code
that wrote ``ckpt.name`` keeps working (``.name`` is the name).

Equality and hashing are the name's, as for any ``str``: two checkpoints called
``epoch_0001`` of two runs compare equal, like their names do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

M = TypeVar("M")

__all__ = ["Named"]


class Named(str, Generic[M]):
    """A name (``str``) whose attributes are those of its metadata record.

    Parameters
    ----------
    name : str
        The name (what the ``str`` is).
    meta : record, optional
        The record (``RunMeta``, ``CheckpointMeta``, ``BlockMeta``).
    load : callable, optional
        Returns the record on first use instead (a run's metadata is read only when
        asked for, so listing runs never fails on one damaged run's attributes).
    """

    def __new__(cls, name: str, meta: M | None = None, *, load: Callable[[], M] | None = None) -> Named[M]:
        if meta is None and load is None:
            raise TypeError("Named needs its record (meta) or a function loading it (load)")
        self = super().__new__(cls, name)
        self.__dict__["_meta"] = meta
        self.__dict__["_load"] = load
        return self

    @property
    def meta(self) -> M:
        """The record itself (read on first use when the listing deferred it)."""
        meta = self.__dict__["_meta"]
        if meta is None:
            meta = self.__dict__["_meta"] = self.__dict__["_load"]()
            self.__dict__["_load"] = None
        return meta

    @property
    def name(self) -> str:
        """The plain name (a ``str``, not a ``Named``)."""
        return str.__str__(self)

    def __getattr__(self, attr: str) -> Any:
        # Only reached for attributes a str does not have (none of the records' fields is one).
        if attr.startswith("__") or attr in ("_meta", "_load"):
            raise AttributeError(attr)
        return getattr(self.meta, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only (like the str it is)")

    def __str__(self) -> str:
        return str.__str__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable for dask workers: the record travels loaded, never the store handle.
        return (_rebuild, (self.name, self.meta))


def _rebuild(name: str, meta: Any) -> Named[Any]:
    return Named(name, meta)
