"""Compute concept measures for a whole dataset, in parallel, in dataset order.

Images are read from any object with ``__len__`` and ``__getitem__`` (a list, a
``(N, H, W[, 3])`` uint8 array, a lazy dataset that decodes JPEGs on access). They are
fetched and validated in the calling process, ``chunk_size`` at a time, and only the
pixel arrays are sent to the joblib (loky) workers: the dataset object itself never
has to be picklable, a bad image is reported with its index before any worker sees
it, and at most a few chunks are in memory at once (joblib dispatches lazily).
Results come back in submission order, so the output is identical whatever
``n_jobs`` is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs

from probestore.errors import ConfigError, DataError, did_you_mean
from probestore.progress import Log, Progress

from . import texture
from .presets import (
    CONCEPT_FAMILIES,
    DEFAULT_PRESET,
    check_preset,
    family_measure,
    preset_descriptions,
    resolve_texture_levels,
)

#: Descriptions under the default preset (``graziani2019``).
CONCEPT_DESCRIPTIONS: dict[str, str] = preset_descriptions(DEFAULT_PRESET)


def concept_descriptions(preset: str = DEFAULT_PRESET, texture_levels: int | None = None) -> dict[str, str]:
    """Descriptions of every concept under ``preset`` (what the store records).

    Parameters
    ----------
    preset : str
        ``"graziani2019"`` or ``"probestore_v1"`` (:mod:`extract.concepts.presets`).
    texture_levels : int or None
        The ``texture_levels`` passed to :func:`compute_concepts` (probestore_v1 only).

    Returns
    -------
    dict of str to str
        Concept name -> ``"<preset>: "`` + description with units and range.
    """
    return preset_descriptions(preset, texture_levels)


def _compute_chunk(
    images: list[np.ndarray], families: tuple[str, ...], preset: str, texture_levels: int | None
) -> np.ndarray:
    """Concepts of a list of validated images: ``(len(images), n_concepts)`` float64."""
    functions = [family_measure(preset, f, texture_levels) for f in families]
    n_concepts = sum(len(CONCEPT_FAMILIES[f]) for f in families)
    out = np.empty((len(images), n_concepts), dtype=np.float64)
    for row, image in enumerate(images):
        out[row] = np.concatenate([fn(image) for fn in functions])
    return out


def _check_families(families: Any) -> tuple[str, ...]:
    if isinstance(families, str):
        families = (families,)
    try:
        families = tuple(families)
    except TypeError:
        raise ConfigError(
            "families is not a list of family names",
            where="compute_concepts(families=...)",
            expected="a sequence drawn from " + ", ".join(CONCEPT_FAMILIES),
            got=repr(families),
        ) from None
    if not families:
        raise ConfigError(
            "no concept family requested",
            where="compute_concepts(families=...)",
            expected="at least one of " + ", ".join(CONCEPT_FAMILIES),
            got="an empty sequence",
        )
    for family in families:
        if family not in CONCEPT_FAMILIES:
            raise ConfigError(
                f"unknown concept family {family!r}",
                where="compute_concepts(families=...)",
                expected="one of " + ", ".join(CONCEPT_FAMILIES),
                got=repr(family),
                fix=did_you_mean(str(family), CONCEPT_FAMILIES) or "use one of the expected names",
            )
    return tuple(dict.fromkeys(families))  # drop repeats, keep order


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(
            f"bad {name}", where=f"compute_concepts({name}=...)", expected=bound, got=repr(value)
        )
    return int(value)


def check_image(image: Any, index: int, min_side: int = 1) -> np.ndarray:
    """Return ``image`` as a uint8 ``(H, W)`` or ``(H, W, 3)`` array, or raise DataError.

    Parameters
    ----------
    image : array_like
        One dataset item (PIL images are converted by ``np.asarray``).
    index : int
        Its position in the dataset, named in the error.
    min_side : int
        Smallest allowed height and width (2 when texture is computed).

    Returns
    -------
    ndarray of uint8
    """
    where = f"image {index} of the dataset"
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DataError(
            "image has the wrong dtype",
            where=where,
            expected="uint8 pixel values 0..255",
            got=str(array.dtype),
            fix="convert with np.clip(x, 0, 255).astype(np.uint8) (scale floats in [0, 1] by 255 first)",
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise DataError(
            "image has the wrong shape",
            where=where,
            expected="(H, W) greyscale or (H, W, 3) RGB, channels last",
            got=f"shape {array.shape}",
            fix="drop alpha / singleton channels, or move channels last with np.moveaxis(x, 0, -1)",
        )
    if min(array.shape[:2]) < min_side:
        raise DataError(
            "image is too small",
            where=where,
            expected=f"height and width >= {min_side}",
            got=f"shape {array.shape}",
        )
    return array


def _chunks(images: Sequence, chunk_size: int, min_side: int) -> Iterator[list[np.ndarray]]:
    n = len(images)
    for start in range(0, n, chunk_size):
        yield [
            check_image(images[i], i, min_side) for i in range(start, min(start + chunk_size, n))
        ]


def compute_concepts(
    images: Sequence,
    families: Sequence[str] = ("colour", "texture"),
    n_jobs: int = -1,
    progress: bool = True,
    chunk_size: int = 64,
    texture_levels: int | None = None,
    preset: str = DEFAULT_PRESET,
) -> dict[str, np.ndarray]:
    """Concept measures of every image, one float64 array per concept.

    Parameters
    ----------
    images : sequence of ndarray
        Any object with ``__len__`` and ``__getitem__(i)`` returning a uint8 image of
        shape ``(H, W)`` or ``(H, W, 3)``; sizes may differ between images.
    families : sequence of str
        Concept families among ``CONCEPT_FAMILIES`` ("colour", "texture", "shape").
    n_jobs : int
        joblib worker processes; -1 uses all cores, 1 runs in this process.
    progress : bool
        Show progress counted in images: a bar on a terminal, a timestamped line a
        minute elsewhere (:class:`probestore.progress.Progress`).
    chunk_size : int
        Images per task: larger amortises inter-process overhead, smaller bounds memory.
    texture_levels : int or None
        Grey levels for the GLCM of the ``probestore_v1`` preset, 2..256 (None: 32).
        Refused with ``graziani2019``, whose GLCM always has 256 levels.
    preset : str
        Which definitions to compute: ``"graziani2019"`` (the authors' code, default)
        or ``"probestore_v1"``; see :mod:`extract.concepts.presets` and
        docs/science.md §6.

    Returns
    -------
    dict of str to ndarray of float64, shape (len(images),)
        Keys in family order, then in ``CONCEPT_FAMILIES[family]`` order; values in
        dataset order. Empty arrays for an empty dataset.

    Raises
    ------
    ConfigError
        Unknown family or preset (with a did-you-mean), a bad ``n_jobs`` /
        ``chunk_size`` / ``texture_levels``, or ``texture_levels`` with graziani2019.
    DataError
        An image that is not uint8, not 2-D / RGB, or too small; names its index.
    """
    families = _check_families(families)
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
    preset = check_preset(preset)
    texture_levels = resolve_texture_levels(preset, texture_levels, "compute_concepts(texture_levels=...)")
    if not isinstance(n_jobs, (int, np.integer)) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise ConfigError(
            "bad n_jobs",
            where="compute_concepts(n_jobs=...)",
            expected="a non-zero integer (-1: all cores)",
            got=repr(n_jobs),
        )
    if not (hasattr(images, "__len__") and hasattr(images, "__getitem__")):
        raise DataError(
            "images is not an indexable dataset",
            where="compute_concepts(images=...)",
            expected="an object with __len__ and __getitem__ (list, array, dataset)",
            got=type(images).__name__,
            fix="wrap a generator with list(...) or pass a dataset object",
        )

    names = [name for f in families for name in CONCEPT_FAMILIES[f]]
    n = len(images)
    min_side = texture.MIN_SIDE if "texture" in families else 1
    chunks = _chunks(images, chunk_size, min_side)
    workers = min(effective_n_jobs(n_jobs), max(1, -(-n // chunk_size)))

    parts: list[np.ndarray] = []
    with Progress(n, enabled=progress, unit="image", log=Log("extract"), desc="concepts", each=False) as bar:
        if workers == 1:
            results = (_compute_chunk(chunk, families, preset, texture_levels) for chunk in chunks)
        else:
            parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator")
            results = parallel(
                delayed(_compute_chunk)(c, families, preset, texture_levels) for c in chunks
            )
        for part in results:
            parts.append(part)
            bar.update(len(part))

    table = np.concatenate(parts) if parts else np.empty((0, len(names)), dtype=np.float64)
    return {name: np.ascontiguousarray(table[:, j]) for j, name in enumerate(names)}
