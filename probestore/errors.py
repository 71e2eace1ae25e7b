"""One error type, one message shape, for every stage of probestore.

Every failure a user can cause (a bad path, an unknown layer, a corrupt checkpoint, a
store written by a newer probestore) is raised as a :class:`ProbestoreError` whose
message says *what* went wrong, *where* (file, array, config field), what was
*expected*, what was *got*, and *how to fix* it. The CLI prints ``str(error)`` on one
line and exits non-zero; library users can catch the subclasses.

The errors also fit Python's and scikit-learn's contract (like zarr's errors, which
subclass the built-ins they refine): :class:`ConfigError` and :class:`DataError` are
``ValueError`` subclasses and :class:`DataTypeError` is also a ``TypeError``, so code that catches
``ValueError`` around a scikit-learn estimator catches a probe's bad input too.

Modelled on zarr's ``errors.py`` and scikit-learn's ``InvalidParameterError``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ProbestoreError(Exception):
    """Base class: a user-facing error with what / where / expected / got / fix."""

    def __init__(
        self,
        what: str,
        *,
        where: str | None = None,
        expected: object = None,
        got: object = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.where = where
        self.expected = expected
        self.got = got
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"in {self.where}")
        if self.expected is not None:
            parts.append(f"expected {self.expected}")
        if self.got is not None:
            parts.append(f"got {self.got}")
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "; ".join(parts)

    def __reduce__(self):  # keep the fields when the error crosses a Dask worker boundary
        return (_rebuild, (type(self), self.what, self.where, self.expected, self.got, self.fix))


def _rebuild(cls, what, where, expected, got, fix):
    return cls(what, where=where, expected=expected, got=got, fix=fix)


class SchemaVersionError(ProbestoreError):
    """The store was written with a schema major version this reader does not know."""


class StoreFormatError(ProbestoreError):
    """The store violates SCHEMA.md: missing, mistyped or extra metadata; bad array shapes."""


class FingerprintMismatchError(ProbestoreError):
    """Two datasets (stores, targets, runs) that must be the same samples in the same order are not."""


class InvalidNameError(ProbestoreError):
    """A run / checkpoint / layer / target name that could escape the store or is not portable."""


class NotFoundError(ProbestoreError):
    """A run, checkpoint, layer or target that is not in the store (or not complete yet)."""


class ConfigError(ProbestoreError, ValueError):
    """An experiment or analysis configuration that cannot be used as written (a ``ValueError``)."""


class CheckpointError(ProbestoreError):
    """A model checkpoint that cannot be loaded safely or does not fit the model."""


class DataError(ProbestoreError, ValueError):
    """Input data that cannot be used: NaN/Inf, empty splits, a single class, wrong sizes (a ``ValueError``)."""


class DataTypeError(DataError, TypeError):
    """Input of a type that cannot be used (sparse where dense is needed, objects): a ``TypeError`` too,
    as scikit-learn raises for such input."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ``"did you mean 'x', 'y'?"`` for the closest candidates, or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if not close:
        return ""
    return "did you mean " + ", ".join(repr(c) for c in close) + "?"
