"""The registry of every key an experiment file accepts, one entry per key, beside its parser.

ADDING A KEY TO THE EXPERIMENT FILE? Add one ``Key(...)`` entry to the registry of its
table, in the module that parses that table (``EXPERIMENT_KEYS`` in ``document.py``,
``DATASET_KEYS`` in ``dataset.py``, ``SPLITS_KEYS`` in ``config.py``, ``MODEL_KEYS`` in ``model.py``,
``TRAINING_KEYS`` in ``training.py``, ``RUN_KEYS`` in ``runs.py``, ``EXTRACT_KEYS`` in
``extraction.py``, ``CONCEPTS_KEYS`` / ``CONCEPT_SET_KEYS`` / ``RANDOM_SETS_KEYS`` in
``concepts.py``, ``ANALYSIS_KEYS`` in ``analysis.py``), then regenerate the reference::

    make docs        # = python -m probestore.experiment.reference > docs/configuration.md

Why one registry: the parser refuses every key that is not in it (``check_keys(table,
DATASET_KEYS, ...)``), and ``docs/configuration.md`` is generated from it, so a key
cannot be accepted without being documented, nor documented without being accepted.
``tests/test_configuration_docs.py`` fails when the committed reference is stale, when
a registry and its dataclass disagree, and when a key's ``example`` is refused by the
parser (each example is parsed inside a minimal valid experiment file).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["REQUIRED", "Key", "KeyTable", "all_tables", "choices"]

#: ``Key.default`` of a key that must be given.
REQUIRED = "required"

_TABLES: list[KeyTable] = []


@dataclass(frozen=True)
class Key:
    """One key of an experiment table, as the reference documents it.

    Attributes
    ----------
    type : str
        As a user writes it in TOML: ``"string"``, ``"integer"``, ``"list of strings"``...
    meaning : str
        One line: what the key changes and why one would set it.
    default : str
        The value used when the key is absent, as TOML or in words; :data:`REQUIRED`.
    allowed : str
        Allowed values or range (empty: any value of the type).
    example : str
        A TOML value that the parser accepts (tested), e.g. ``'"mlp"'``.
    example_with : str
        Other ``key = value`` lines of the same table the example needs (e.g. ``std``
        beside ``mean``), ``;``-separated; tested with the example.
    hashed : bool
        Part of the config hash (changes stored numbers). False for where things live
        and how fast they run.
    path : bool
        A path: ``~`` and ``$VARS`` are expanded and a relative path is relative to the
        folder of the experiment file.
    """

    type: str
    meaning: str
    default: str = REQUIRED
    allowed: str = ""
    example: str = ""
    example_with: str = ""
    hashed: bool = True
    path: bool = False


@dataclass(frozen=True)
class KeyTable(Mapping[str, Key]):
    """The keys of one table: a read-only mapping ``name -> Key`` (iterates the names).

    Passing it to :func:`probestore.fields.check_keys` makes it the parser's list of
    allowed keys. Constructing one registers it for the reference.
    """

    header: str
    summary: str
    entries: Mapping[str, Key] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _TABLES.append(self)

    def __getitem__(self, name: str) -> Key:
        return self.entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __hash__(self) -> int:
        return hash(self.header)

    @property
    def required(self) -> tuple[str, ...]:
        """Names of the keys that must be given."""
        return tuple(k for k, v in self.entries.items() if v.default == REQUIRED)


def all_tables() -> list[KeyTable]:
    """Every registered table, in the order their modules were imported."""
    import probestore.experiment  # noqa: F401  (imports every parser module, which registers its tables)

    return list(_TABLES)


def choices(values: object) -> str:
    """``"a" | "b"`` for the ``allowed`` column, from the parser's own tuple of choices."""
    return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values)  # type: ignore[attr-defined]
