"""Named definitions of the concept measures: which formula each concept name means.

An RCV's R² says how *linearly* a layer encodes a measure, so two definitions of
"contrast" (256 grey levels at one angle, or 32 levels averaged over four angles) are
two different probes: on DTD they correlate at 0.3-0.7 for several texture measures
(docs/science.md §6). The preset is therefore part of the experiment (hashed with the
config, recorded in the store) and never mixed within one store.

* ``graziani2019`` (default): the authors' published code, reproduced exactly
  (:mod:`extract.concepts.graziani2019`).
* ``probestore_v1``: probestore's own definitions before issue 11 (:mod:`.colour`,
  :mod:`.texture`, :mod:`.shape`): disjoint HSV classes on scikit-image's HSV, a
  rotation-averaged GLCM at ``texture_levels`` grey levels (32), the largest
  8-connected object. Kept so that stores and results made with them can be redone.

Both presets measure the same 20 concept names (``CONCEPT_FAMILIES``), so reports and
probes need not know which one was used; descriptions start with the preset name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from probestore.errors import ConfigError, did_you_mean

from . import colour, graziani2019, shape, texture

GRAZIANI2019 = "graziani2019"
PROBESTORE_V1 = "probestore_v1"
PRESETS: tuple[str, ...] = (GRAZIANI2019, PROBESTORE_V1)
DEFAULT_PRESET = GRAZIANI2019

CONCEPT_FAMILIES: dict[str, list[str]] = {
    "colour": list(colour.NAMES),
    "texture": list(texture.NAMES),
    "shape": list(shape.NAMES),
}
# Both presets must give the same names in the same order, or stores would differ in layout.
assert graziani2019.COLOUR_NAMES == colour.NAMES
assert graziani2019.TEXTURE_NAMES == texture.NAMES
assert graziani2019.SHAPE_NAMES == shape.NAMES

Measure = Callable[[np.ndarray], np.ndarray]


def check_preset(preset: object, where: str = "compute_concepts(preset=...)") -> str:
    """Return ``preset`` if it names a preset, else raise ConfigError with a did-you-mean."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(
            "unknown concept preset",
            where=where,
            expected=" or ".join(repr(p) for p in PRESETS),
            got=repr(preset),
            fix=did_you_mean(str(preset), PRESETS) or f"use {DEFAULT_PRESET!r} (the authors' definitions)",
        )
    return preset


def resolve_texture_levels(preset: str, texture_levels: object, where: str) -> int | None:
    """The GLCM grey levels a preset uses: ``None`` for graziani2019, 2..256 (default 32) else.

    The authors' GLCM has 256 levels by construction (``img_as_ubyte``), so a
    ``texture_levels`` given with ``graziani2019`` is refused rather than ignored.
    """
    if preset == GRAZIANI2019:
        if texture_levels is not None:
            raise ConfigError(
                "texture_levels does not apply to the graziani2019 preset",
                where=where,
                expected="no texture_levels (the authors' GLCM always has 256 grey levels)",
                got=repr(texture_levels),
                fix=f"remove texture_levels, or choose preset = {PROBESTORE_V1!r} to quantize",
            )
        return None
    if texture_levels is None:
        return texture.DEFAULT_LEVELS
    if isinstance(texture_levels, (int, np.integer)) and not isinstance(texture_levels, bool):
        if 2 <= texture_levels <= 256:
            return int(texture_levels)
    raise ConfigError("bad texture_levels", where=where, expected="an integer in [2, 256]",
                      got=repr(texture_levels))


def family_measure(preset: str, family: str, texture_levels: int | None) -> Measure:
    """The function image -> values of one family under one preset (picklable for joblib)."""
    if preset == GRAZIANI2019:
        return {"colour": graziani2019.colour_concepts, "texture": graziani2019.texture_concepts,
                "shape": graziani2019.shape_concepts}[family]
    if family == "texture":
        return _V1Texture(texture_levels or texture.DEFAULT_LEVELS)
    return {"colour": colour.colour_concepts, "shape": shape.shape_concepts}[family]


class _V1Texture:
    """probestore_v1 texture at a fixed number of levels (a class, so joblib can pickle it)."""

    def __init__(self, levels: int) -> None:
        self.levels = levels

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return texture.texture_concepts(image, self.levels)


def preset_descriptions(preset: str = DEFAULT_PRESET, texture_levels: int | None = None) -> dict[str, str]:
    """Concept name -> ``"<preset>: <meaning, units, range>"`` (what the store records)."""
    check_preset(preset, "concept_descriptions(preset=...)")
    levels = resolve_texture_levels(preset, texture_levels, "concept_descriptions(texture_levels=...)")
    if preset == GRAZIANI2019:
        base = graziani2019.DESCRIPTIONS
    else:
        base = {**colour.DESCRIPTIONS, **texture.descriptions(levels or texture.DEFAULT_LEVELS),
                **shape.DESCRIPTIONS}
    return {name: f"{preset}: {base[name]}" for family in CONCEPT_FAMILIES.values() for name in family}
