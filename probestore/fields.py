"""Small validators shared by every config and metadata parser.

Configs (TOML experiment files, CLI options) and store metadata (JSON attributes) are
untrusted input: they are checked field by field here so that every parser raises the
same documented error type with the same message shape, never a bare KeyError or
TypeError from deep inside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from probestore.errors import ConfigError, ProbestoreError, did_you_mean


def check_keys(
    mapping: Any,
    allowed: Iterable[str],
    *,
    where: str,
    required: Iterable[str] = (),
    error: type[ProbestoreError] = ConfigError,
) -> Mapping[str, Any]:
    """Refuse unknown keys (with a did-you-mean) and report missing required ones."""
    if not isinstance(mapping, Mapping):
        raise error("not a table", where=where, expected="a table of key = value", got=type(mapping).__name__)
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            raise error(
                f"unknown key {key!r}",
                where=where,
                expected="one of " + ", ".join(sorted(allowed)),
                got=repr(key),
                fix=did_you_mean(str(key), allowed) or "remove it",
            )
    for key in required:
        if key not in mapping:
            raise error(f"missing required key {key!r}", where=where, fix=f"add {key} = ...")
    return mapping


def check_type(
    value: Any,
    types: type | tuple[type, ...],
    *,
    where: str,
    error: type[ProbestoreError] = ConfigError,
) -> Any:
    """Check ``isinstance`` (refusing bool where a number is asked: TOML ``true`` is not 1)."""
    wanted = types if isinstance(types, tuple) else (types,)
    is_bool_sneaking = isinstance(value, bool) and bool not in wanted
    if is_bool_sneaking or not isinstance(value, wanted):
        names = " or ".join(t.__name__ for t in wanted)
        raise error("wrong type", where=where, expected=names, got=f"{type(value).__name__} {value!r}")
    return value


def check_range(
    value: float,
    *,
    where: str,
    low: float | None = None,
    high: float | None = None,
    error: type[ProbestoreError] = ConfigError,
) -> float:
    """Check ``low <= value <= high`` (either bound optional)."""
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise error("value out of range", where=where, expected=f"a value in [{lo}, {hi}]", got=value)
    return value
