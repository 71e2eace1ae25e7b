"""The one path expansion of every config reader: ``~``, ``$VARS`` and a base folder.

An experiment file is shared between machines, so its paths are often written as
``"$DATA/mnist"`` or ``"~/runs/x.zarr"``. Every command that reads a path from a
config file expands it here, so a path means the same thing to ``probestore extract``
and ``probestore analyze --config``. An unset variable is an error that names it,
never a literal ``$DATA`` folder created in the current directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from probestore.errors import ConfigError

__all__ = ["expand_path", "unset_variables"]

#: ``$NAME`` or ``${NAME}`` (what :func:`os.path.expandvars` expands on POSIX).
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def unset_variables(value: str | os.PathLike[str]) -> list[str]:
    """Names of the environment variables ``value`` uses that are not set, in order."""
    return [a or b for a, b in _VAR.findall(os.fspath(value)) if (a or b) not in os.environ]


def expand_path(value: str | os.PathLike[str], *, where: str,
                base: str | os.PathLike[str] | None = None) -> Path:
    """``value`` with ``~`` and ``$VARS`` expanded, relative to ``base`` when given.

    Parameters
    ----------
    value : str or path-like
        As written in the config file.
    where : str
        The config field, for the error message (``"exp.toml [experiment].store"``).
    base : path-like, optional
        Folder a relative path is relative to (default: left relative, i.e. to the
        current directory). Experiment files pass their own folder
        (:func:`probestore.experiment.document.file_base`), like every build tool.

    Raises
    ------
    ConfigError
        The path uses an environment variable that is not set (each one is named).
    """
    raw = os.fspath(value)
    unset = unset_variables(raw)
    if unset:
        names = ", ".join(f"${n}" for n in unset)
        raise ConfigError(
            f"environment variable{'s' if len(unset) > 1 else ''} {names} not set", where=where,
            expected="a path whose variables are all set", got=raw,
            fix=f"export {unset[0]}=/some/folder before running, or write the path without it",
        )
    path = Path(os.path.expanduser(os.path.expandvars(raw)))
    if base is not None and not path.is_absolute():
        # Lexically normalized, so that "experiments/../out/x.zarr" reads "out/x.zarr"
        # in messages and in the store's records.
        path = Path(os.path.normpath(Path(base) / path))
    return path
