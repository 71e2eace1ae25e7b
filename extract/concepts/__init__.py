"""Concept measures computed from pixels or supplied by the user (Graziani et al. 2019).

The targets of Regression Concept Vectors: colour (first-order statistics), texture
(GLCM, second-order statistics) and shape (foreground object) measures, one float per
image, plus user concepts read from a CSV or a folder of examples. Which formula each
concept name means is a *preset* (:mod:`.presets`): ``graziani2019`` (default, the
authors' published code, :mod:`.graziani2019`) or ``probestore_v1`` (:mod:`.colour`,
:mod:`.texture`, :mod:`.shape`). Pure numpy / scikit-image: nothing here imports torch,
so concepts can be computed on any box.
"""

from .compute import (
    CONCEPT_DESCRIPTIONS,
    CONCEPT_FAMILIES,
    check_image,
    compute_concepts,
    concept_descriptions,
)
from .presets import DEFAULT_PRESET, PRESETS
from .user import binary_concept_from_folder, load_concept_csv

__all__ = [
    "CONCEPT_DESCRIPTIONS",
    "CONCEPT_FAMILIES",
    "DEFAULT_PRESET",
    "PRESETS",
    "binary_concept_from_folder",
    "check_image",
    "compute_concepts",
    "concept_descriptions",
    "load_concept_csv",
]
