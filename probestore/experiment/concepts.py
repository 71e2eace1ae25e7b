"""``[concepts]``: the concept targets a store gets, and the TCAV example sets.

Families of measured concepts (colour, texture, shape; Graziani et al. 2019) under a
formula preset, user concepts from CSV files or example folders, the sample types of
the control task, and the concept / random example sets of TCAV
(``[concepts.sets]``, ``[concepts.random_sets]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probestore.errors import ConfigError, did_you_mean
from probestore.experiment.keys import Key, KeyTable, choices
from probestore.fields import check_keys, check_range, check_type
from probestore.paths import expand_path
from storage_schema.names import validate_name

__all__ = ["CONCEPT_FAMILY_NAMES", "CONCEPT_PRESETS", "CONCEPTS_KEYS", "CONCEPT_SET_KEYS", "RANDOM_SETS_KEYS",
           "ConceptOptions", "ConceptSetSpec", "parse_concepts"]

CONCEPT_FAMILY_NAMES = ("colour", "texture", "shape")
#: extract.concepts.presets.PRESETS, default first (kept here so parsing needs no scikit-image).
CONCEPT_PRESETS = ("graziani2019", "probestore_v1")

#: ``[concepts]`` (see :mod:`probestore.experiment.keys` to add a key).
CONCEPTS_KEYS = KeyTable("[concepts]", "The concept targets the store gets (measured per image, from CSV "
                         "files or example folders), the sample types of the control task, and the example "
                         "sets of TCAV.", {
    "families": Key("list of strings", "Concept families measured on every image (Graziani et al. 2019): "
                    "colour, texture, shape.", default="[]", allowed=choices(CONCEPT_FAMILY_NAMES),
                    example='["colour", "texture"]'),
    "preset": Key("string", "Whose formulas: the authors' published code, or probestore's earlier "
                  "definitions (docs/science.md section 6). Recorded in the store.", default='"graziani2019"',
                  allowed=choices(CONCEPT_PRESETS), example='"probestore_v1"'),
    "texture_levels": Key("integer", "GLCM grey levels, with `preset = \"probestore_v1\"` only.",
                          default="32 (probestore_v1)", allowed="2..256", example="32",
                          example_with='preset = "probestore_v1"'),
    "csv": Key("string or list of strings (path)", "User concepts: CSV files with a `sample_id` column and "
               "one column per concept.", default="[]", example='["my_concepts.csv"]', path=True),
    "folders": Key("table (paths)", "Binary concepts from example images: concept name = folder.",
                   default="{}", example='{ striped = "examples/striped" }', path=True),
    "n_jobs": Key("integer", "Processes measuring the concepts (-1: every core).", default="1",
                  allowed="-1 or >= 1", example="-1", hashed=False),
    "types": Key('integer or "auto"', "Sample types of the control task: k-means clusters of the raw "
                 "inputs (`auto`: about 10 samples per type in the smallest split).", default='"auto"',
                 allowed='"auto" or >= 2', example="50"),
    "sets": Key("table", "TCAV example sets, one entry each (see `[concepts.sets]` below).", default="{}",
                example='{ banded = "examples/banded" }', path=True),
    "random_sets": Key("table", "Shorthand for many random counterexample sets (see `[concepts.random_sets]` "
                       "below).", default="none", example="{ count = 20, size = 50 }"),
})
#: One entry of ``[concepts.sets]`` written as a table.
CONCEPT_SET_KEYS = KeyTable("[concepts.sets]", "One TCAV example set per key: `name = \"folder\"`, or "
                            "`name = { ... }` with these keys; a set is either a folder or a random draw.", {
    "folder": Key("string (path)", "A folder of images: copies of dataset images (matched by file name) become "
                  "rows of the store, other images go through the network as external examples.",
                  default="none (then `random` is required)", example='"examples/banded"', path=True),
    "random": Key("integer", "Size of a seeded random draw of the dataset's own train images.",
                  default="none (then `folder` is required)", allowed=">= 1", example="50"),
    "role": Key("string", "Concept examples, or a random counterexample set.",
                default='"random" for a random draw without `class`, else "concept"',
                allowed='"concept" | "random"', example='"random"', example_with='folder = "noise/0"'),
    "seed": Key("integer", "Seed of the draw (combined with the set name).", default="the [experiment] seed",
                example="7", example_with="random = 50"),
    "class": Key("string", "Draw only among the train images of this class (a class of the dataset as a "
                 "concept for another).", default="none", example='"banded"', example_with="random = 40"),
})
#: ``[concepts.random_sets]``.
RANDOM_SETS_KEYS = KeyTable("[concepts.random_sets]", "Random counterexample sets `random_0` .. "
                            "`random_{count-1}` of TCAV, each a seeded draw of train images.", {
    "count": Key("integer", "Number of sets.", allowed=">= 1", example="20", example_with="size = 50"),
    "size": Key("integer", "Images per set.", allowed=">= 1", example="50", example_with="count = 20"),
    "seed": Key("integer", "Seed of the draws.", default="the [experiment] seed", example="0",
                example_with="count = 2; size = 10"),
    "prefix": Key("string", "Name prefix of the sets.", default='"random_"', example='"noise_"',
                  example_with="count = 2; size = 10"),
})


def _path(value: str, where: str, base: str | Path | None = None) -> Path:
    """A config path with ``~`` and ``$VARS`` expanded (an unset variable is an error), relative
    to ``base`` (the experiment file's folder)."""
    return expand_path(value, where=where, base=base)


@dataclass(frozen=True)
class ConceptOptions:
    """The ``[concepts]`` table: which concept targets the store gets."""

    families: tuple[str, ...] = ()
    csv: tuple[str, ...] = ()
    folders: dict[str, str] = field(default_factory=dict)
    n_jobs: int = 1
    texture_levels: int | None = None  # probestore_v1 only (32 when not given)
    sets: dict[str, ConceptSetSpec] = field(default_factory=dict)
    preset: str = CONCEPT_PRESETS[0]
    types: int | str = "auto"


@dataclass(frozen=True)
class ConceptSetSpec:
    """One ``[concepts.sets]`` entry: concept examples or a random counterexample set (TCAV).

    Attributes
    ----------
    name : str
    role : {"concept", "random"}
    folder : str or None
        A folder of images: copies of dataset images (matched by file name) become rows
        of the store, any other image goes through the network as an external example.
    random : int or None
        Size of a seeded random draw of the dataset's own train images (no folder).
    of_class : str or None
        Draw only among the train images of this class (concept examples taken from a
        class of the dataset, e.g. "banded" textures as a concept for "chequered").
    seed : int
        Seed of the draw (experiment seed by default; combined with the set name).
    """

    name: str
    role: str = "concept"
    folder: str | None = None
    random: int | None = None
    seed: int = 0
    of_class: str | None = None


def parse_concepts(table: Any, where: str, raw: dict[str, Any], seed: int = 0,
                   base: str | Path | None = None) -> ConceptOptions:
    """``[concepts]``; paths relative to ``base`` (the experiment file's folder; None: the current directory)."""
    d = dict(check_keys(table, CONCEPTS_KEYS, where=where))
    families = d.setdefault("families", [])
    if isinstance(families, str):
        families = d["families"] = [families]
    check_type(families, list, where=f"{where}.families")
    for fam in families:
        check_type(fam, str, where=f"{where}.families")
        if fam not in CONCEPT_FAMILY_NAMES:
            raise ConfigError(f"unknown concept family {fam!r}", where=f"{where}.families",
                              expected=", ".join(CONCEPT_FAMILY_NAMES), got=repr(fam),
                              fix=did_you_mean(fam, CONCEPT_FAMILY_NAMES) or None)
    csvs = d.setdefault("csv", [])
    if isinstance(csvs, str):
        csvs = d["csv"] = [csvs]
    check_type(csvs, list, where=f"{where}.csv")
    for c in csvs:
        check_type(c, str, where=f"{where}.csv")
    folders = dict(check_type(d.setdefault("folders", {}), dict, where=f"{where}.folders"))
    for name, folder in folders.items():
        validate_name(name, "target")
        check_type(folder, str, where=f"{where}.folders.{name}")
    d.setdefault("n_jobs", 1)
    check_type(d["n_jobs"], int, where=f"{where}.n_jobs")
    if d["n_jobs"] == 0:
        raise ConfigError("n_jobs must not be 0", where=f"{where}.n_jobs",
                          expected="a positive count, or -1 for all cores", got=0)
    _parse_concept_preset(d, where)
    sets = _parse_concept_sets(d, where, seed, base)
    types = _parse_types(d.get("types", "auto"), f"{where}.types")  # hashed only when written
    raw["concepts"] = d
    return ConceptOptions(
        families=tuple(families), csv=tuple(str(_path(c, f"{where}.csv", base)) for c in csvs),
        folders={k: str(_path(v, f"{where}.folders.{k}", base)) for k, v in folders.items()}, n_jobs=d["n_jobs"],
        texture_levels=d.get("texture_levels"), sets=sets, preset=d["preset"], types=types)


def _parse_types(value: Any, where: str) -> int | str:
    """``[concepts] types``: ``"auto"`` or a number of k-means sample types (>= 2)."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("types must be \"auto\" or a whole number", where=where,
                          expected='"auto" or an integer >= 2', got=repr(value),
                          fix='types = "auto" (about 10 samples per type in the smallest split)')
    check_range(value, low=2, where=where)
    return int(value)


def _parse_concept_preset(d: dict[str, Any], where: str) -> None:
    """``preset`` (default graziani2019, always written so it is hashed) and ``texture_levels``.

    ``texture_levels`` belongs to probestore_v1 (default 32); with graziani2019 it is
    refused, since the authors' GLCM has 256 grey levels by construction.
    """
    preset = check_type(d.setdefault("preset", CONCEPT_PRESETS[0]), str, where=f"{where}.preset")
    if preset not in CONCEPT_PRESETS:
        raise ConfigError("unknown concept preset", where=f"{where}.preset",
                          expected=" or ".join(repr(p) for p in CONCEPT_PRESETS), got=repr(preset),
                          fix=did_you_mean(preset, CONCEPT_PRESETS) or f'preset = "{CONCEPT_PRESETS[0]}"')
    if preset == "graziani2019":
        if "texture_levels" in d:
            raise ConfigError("texture_levels does not apply to the graziani2019 preset",
                              where=f"{where}.texture_levels",
                              expected="no texture_levels (the authors' GLCM has 256 grey levels)",
                              got=repr(d["texture_levels"]),
                              fix='remove texture_levels, or set preset = "probestore_v1" to quantize')
        return
    d.setdefault("texture_levels", 32)
    check_type(d["texture_levels"], int, where=f"{where}.texture_levels")
    check_range(d["texture_levels"], low=2, high=256, where=f"{where}.texture_levels")


def _parse_concept_sets(d: dict[str, Any], where: str, seed: int,
                        base: str | Path | None = None) -> dict[str, ConceptSetSpec]:
    """``[concepts.sets]`` and ``[concepts.random_sets]`` (TCAV example sets).

    Forms::

        [concepts.sets]
        banded = "examples/banded"                          # concept examples (folder)
        noise_0 = { folder = "noise/0", role = "random" }   # a random counterexample folder
        random_a = { random = 50 }                          # 50 seeded dataset images
        banded = { random = 40, class = "banded" }          # 40 train images of one class
        [concepts.random_sets]                              # shorthand: random_0 .. random_{count-1}
        count = 20
        size = 50

    Both tables are left out of the hashed content when absent.
    """
    out: dict[str, ConceptSetSpec] = {}
    table = d.get("sets")
    if table is not None:
        check_type(table, dict, where=f"{where}.sets")
        for name, entry in table.items():
            w = f"{where}.sets.{name}"
            validate_name(name, "concept set")
            if isinstance(entry, str):
                entry = {"folder": entry}
            check_type(entry, dict, where=w)
            e = dict(check_keys(entry, CONCEPT_SET_KEYS, where=w))
            default_role = "random" if "random" in e and "class" not in e else "concept"
            role = check_type(e.get("role", default_role), str, where=f"{w}.role")
            if role not in ("concept", "random"):
                raise ConfigError("unknown role", where=f"{w}.role", expected="'concept' or 'random'",
                                  got=repr(role), fix=did_you_mean(role, ("concept", "random")) or None)
            if ("folder" in e) == ("random" in e):
                raise ConfigError("a concept set is either a folder or a random draw", where=w,
                                  expected='folder = "path" or random = N', got=sorted(e),
                                  fix='e.g. banded = "examples/banded" or random_0 = { random = 50 }')
            if "random" in e:
                check_type(e["random"], int, where=f"{w}.random")
                check_range(e["random"], low=1, where=f"{w}.random")
                if "class" in e:
                    check_type(e["class"], str, where=f"{w}.class")
            else:
                check_type(e["folder"], str, where=f"{w}.folder")
                if "class" in e:
                    raise ConfigError("'class' only restricts a random draw", where=f"{w}.class",
                                      fix='write { random = N, class = "..." }, or drop class')
            s = check_type(e.get("seed", seed), int, where=f"{w}.seed")
            out[name] = ConceptSetSpec(name, role, str(_path(e["folder"], f"{w}.folder", base)) if "folder" in e else None,
                                       e.get("random"), s, e.get("class"))
    rs = d.get("random_sets")
    if rs is not None:
        w = f"{where}.random_sets"
        r = dict(check_keys(check_type(rs, dict, where=w), RANDOM_SETS_KEYS, where=w,
                            required=RANDOM_SETS_KEYS.required))
        for key in ("count", "size"):
            check_type(r[key], int, where=f"{w}.{key}")
            check_range(r[key], low=1, where=f"{w}.{key}")
        prefix = check_type(r.get("prefix", "random_"), str, where=f"{w}.prefix")
        s = check_type(r.get("seed", seed), int, where=f"{w}.seed")
        for i in range(r["count"]):
            name = validate_name(f"{prefix}{i}", "concept set")
            if name in out:
                raise ConfigError(f"concept set {name!r} is defined twice", where=w,
                                  fix="rename the [concepts.sets] entry or change random_sets.prefix")
            out[name] = ConceptSetSpec(name, "random", None, r["size"], s)
    return out
