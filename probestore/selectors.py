"""The one name selector: ``--layers`` / ``--runs`` / ``--checkpoints`` of every command.

Every option and config list that picks names (layers of a model or a store, runs,
checkpoints, classes, concepts, targets) goes through :func:`select`, so one spelling
means one thing everywhere:

* a pattern is an **exact name**, or an ``fnmatch`` **glob** (``*``, ``?``, ``[...]``)
  matched case-sensitively (``fnmatchcase``; ``*`` also crosses dots: ``layer*.relu``).
  An exact name wins even when it contains glob characters;
* the result keeps the **candidates' order** (the network's depth, the store's run
  order), whatever the order of the patterns, and lists each name once;
* a pattern that matches nothing is a :class:`NoMatchError` (a ``ConfigError``: a
  wrong option or config value, fixed by the user): ``no layer matches 'fc9'``, with
  the closest names as a did-you-mean and the known names as "expected".
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from probestore.errors import ConfigError, NotFoundError, did_you_mean

__all__ = ["NoMatchError", "check_matched", "is_glob", "matches", "no_match", "parse_patterns", "select"]

_GLOB_CHARS = "*?["
#: Known names shown in an error; more are counted, not listed (a ResNet has ~150 modules).
_SHOWN = 20


class NoMatchError(ConfigError, NotFoundError):
    """A name or glob given to select layers / runs / checkpoints that matches none of them.

    A :class:`~probestore.errors.ConfigError` (the option or config value is wrong) and,
    for callers that catch it, a :class:`~probestore.errors.NotFoundError`.
    """


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` uses ``fnmatch`` wildcards (``*``, ``?``, ``[``)."""
    return any(c in pattern for c in _GLOB_CHARS)


def matches(name: str, pattern: str) -> bool:
    """``name`` is ``pattern``, or matches it as a case-sensitive glob."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def parse_patterns(value: str | Sequence[str] | None) -> list[str] | None:
    """``"fc*,conv2"`` (a command-line option) or a list (a config file) -> patterns; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [p.strip() for p in items if p.strip()]


def select(candidates: Iterable[str], patterns: str | Sequence[str] | None, *, what: str, where: str,
           must_match: bool = True, hint: str | None = None) -> list[str]:
    """The candidates matching any of ``patterns``, in the candidates' order.

    Parameters
    ----------
    candidates : iterable of str
        The known names, in the order the result keeps.
    patterns : str, sequence of str or None
        Exact names or globs (a ``str`` is one pattern). None selects every candidate.
    what : str
        Singular noun for messages (``"layer"``, ``"run"``).
    where : str
        The option or config field (``"analyze --layers"``, ``"exp.toml [extract].layers"``).
    must_match : bool
        Raise when a pattern matches no candidate. False where the caller selects from
        several lists (the layers of each checkpoint) and checks the union afterwards
        with :func:`check_matched`.
    hint : str, optional
        How to list the names (``"`probestore inspect STORE` lists the layers"``).

    Raises
    ------
    NoMatchError
        ``must_match`` and a pattern matches no candidate.
    """
    names = list(candidates)
    if patterns is None:
        return names
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    if must_match:
        for p in pats:
            if not any(matches(n, p) for n in names):
                raise no_match(p, names, what=what, where=where, hint=hint)
    chosen = [n for n in names if any(matches(n, p) for p in pats)]
    return list(dict.fromkeys(chosen))


def check_matched(patterns: str | Sequence[str] | None, matched: Iterable[str], known: Iterable[str], *,
                  what: str, where: str, hint: str | None = None) -> None:
    """Refuse a pattern that matched none of ``matched`` (the names selected anywhere).

    For selections made piecewise (the layers of every checkpoint of every run): a
    pattern must match somewhere, not in each list. ``known`` are all names seen, for
    the message.
    """
    if patterns is None:
        return
    got = list(matched)
    for p in [patterns] if isinstance(patterns, str) else patterns:
        if not any(matches(n, p) for n in got):
            raise no_match(p, sorted(set(known)), what=what, where=where, hint=hint)


def no_match(pattern: str, known: Sequence[str], *, what: str, where: str,
             hint: str | None = None) -> NoMatchError:
    """The one error of a pattern that matches nothing: closest names, then the known ones."""
    plain = pattern.strip(_GLOB_CHARS + "]") or pattern
    close = did_you_mean(plain, known, n=5)
    if known:
        shown = ", ".join(repr(n) for n in known[:_SHOWN])
        more = f" (and {len(known) - _SHOWN} more)" if len(known) > _SHOWN else ""
        expected = f"one of {shown}{more}, or a glob"
    else:
        expected = f"a {what}, but there are none"
    fix = "; ".join(x for x in (close, hint) if x) or f"give exact {what} names or globs such as '{what}*'"
    return NoMatchError(f"no {what} matches {pattern!r}", where=where, expected=expected, got=repr(pattern),
                        fix=fix)
