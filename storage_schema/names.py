"""Names of runs, checkpoints, layers and targets become paths inside a store.

They are validated *before* they are joined into a path, so that a name taken from a
config file, a checkpoint file name or a store received from someone else can never
escape the store (``..``, ``/``, absolute paths) or clash with zarr's own files.
"""

from __future__ import annotations

import re

from probestore.errors import InvalidNameError

# Dots are allowed because PyTorch module names are dotted ("layer1.0.relu"), "#"
# because one call of a module run several times per forward is stored as
# "layer4.1.relu#1"; "/" is not, because it separates groups in both Zarr and HDF5.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=:#-]{0,199}$")
_RESERVED = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"}


def is_valid_name(name: object) -> bool:
    """Whether ``name`` may be used as one path component of a store."""
    return (
        isinstance(name, str)
        and bool(NAME_PATTERN.match(name))
        and ".." not in name
        and name not in _RESERVED
    )


def validate_name(name: object, kind: str) -> str:
    """Return ``name`` unchanged, or raise :class:`InvalidNameError` saying why not."""
    if is_valid_name(name):
        return name  # type: ignore[return-value]
    raise InvalidNameError(
        f"invalid {kind} name {name!r}",
        where=f"{kind} name",
        expected=(
            "1-200 characters of letters, digits and _ . + = : # - , not starting with '.', '-' or '#',"
            " without '..' or '/'"
        ),
        got=repr(name),
        fix=f"rename the {kind} (for example {sanitize_name(str(name))!r})",
    )


def sanitize_name(raw: str) -> str:
    """Map any string to a valid name: bad characters and ``..`` become ``_``."""
    text = re.sub(r"[^A-Za-z0-9_.+=:#-]", "_", raw)
    while ".." in text:
        text = text.replace("..", "_")
    if not text or not re.match(r"[A-Za-z0-9_]", text[0]):
        text = "_" + text
    text = text[:200]
    return text if text not in _RESERVED else "_" + text
