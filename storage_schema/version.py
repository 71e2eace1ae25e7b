"""Schema versioning: a reader refuses a major version it does not know.

``schema_version`` is ``"MAJOR.MINOR"``. A minor bump only *adds* optional metadata or
arrays that old readers may ignore (for example per-layer gradient arrays); a major
bump changes the meaning or place of something that exists, so an old reader must stop
rather than misread (zarr's ``zarr_format`` does the same).
"""

from __future__ import annotations

from probestore.errors import SchemaVersionError, StoreFormatError

SCHEMA_VERSION = "1.3"
SUPPORTED_MAJOR_VERSIONS = (1,)
FORMAT_NAME = "probestore"


def parse_version(text: object, where: str) -> tuple[int, int]:
    """Parse ``"1.0"`` into ``(1, 0)``; anything else is a format error."""
    if not isinstance(text, str) or text.count(".") != 1:
        raise StoreFormatError(
            "unreadable schema_version", where=where, expected="a string 'MAJOR.MINOR'", got=repr(text)
        )
    major, minor = text.split(".")
    if not (major.isdigit() and minor.isdigit()):
        raise StoreFormatError(
            "unreadable schema_version", where=where, expected="a string 'MAJOR.MINOR'", got=repr(text)
        )
    return int(major), int(minor)


def check_version(text: object, where: str) -> tuple[int, int]:
    """Refuse stores whose major version this probestore does not support."""
    major, minor = parse_version(text, where)
    if major not in SUPPORTED_MAJOR_VERSIONS:
        supported = ", ".join(f"{m}.x" for m in SUPPORTED_MAJOR_VERSIONS)
        newer = major > max(SUPPORTED_MAJOR_VERSIONS)
        raise SchemaVersionError(
            f"unsupported store schema version {text}",
            where=where,
            expected=f"schema version {supported}",
            got=str(text),
            fix=(
                "upgrade probestore (pip install -U probestore) to read this newer store"
                if newer
                else "re-extract the store with this probestore version"
            ),
        )
    return major, minor
