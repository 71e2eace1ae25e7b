"""Texture concepts (second-order pixel statistics), preset ``probestore_v1`` (G19 §3).

Not the authors' definitions (those are :mod:`.graziani2019`, the default preset:
256 levels, angle 0 only): probestore's own, kept as an option (docs/science.md §6).

Six Haralick-style properties of the grey-level co-occurrence matrix (GLCM), computed
with scikit-image so that the numbers match what a reader would get by hand:

* greyscale: RGB images go through ``skimage.color.rgb2gray`` (ITU-R 709 luma), grey
  ``uint8`` images are divided by 255; both give ``g`` in [0, 1];
* quantization to ``levels`` grey levels: ``q = min(floor(g * levels), levels - 1)``.
  Few levels keep the GLCM dense enough to be meaningful on small images and make
  the measures insensitive to JPEG noise; 32 is the default;
* ``graycomatrix`` at distance 1 and angles 0, pi/4, pi/2, 3pi/4, symmetric and
  normalised; each property is the mean over the four angles (rotation invariant).

Ranges: energy, ASM, homogeneity in (0, 1]; dissimilarity in [0, levels - 1];
contrast in [0, (levels - 1)^2]; correlation in [-1, 1]. Contrast and dissimilarity
are in units of quantized grey levels, so they depend on ``levels``.

Constant images: their GLCM has zero variance, so correlation is 0/0. scikit-image
(>= 0.19; checked on 0.26) defines it as 1.0 and this module keeps that value: the
measure is always finite, and a constant image is "perfectly correlated" with its
shifted self. Images need at least 2 pixels along each axis so that every angle has
at least one pixel pair (otherwise that angle's GLCM is empty and the average wrong).
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.feature import graycomatrix, graycoprops

NAMES: tuple[str, ...] = (
    "energy",
    "ASM",
    "dissimilarity",
    "homogeneity",
    "contrast",
    "correlation",
)

DEFAULT_LEVELS = 32
DISTANCES: tuple[int, ...] = (1,)
ANGLES: tuple[float, ...] = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
#: The smallest image side for which every angle has at least one pixel pair.
MIN_SIDE = 2

_GLCM = "GLCM of the greyscale image quantized to {levels} levels, distance 1, mean over angles 0/45/90/135 deg, symmetric, normalised"

_DESCRIPTION_TEMPLATES: dict[str, str] = {
    "energy": "sqrt(ASM); unitless, range (0, 1]; " + _GLCM,
    "ASM": "angular second moment sum(P^2); unitless, range (0, 1]; " + _GLCM,
    "dissimilarity": "sum(P |i - j|); grey levels, range [0, levels - 1]; " + _GLCM,
    "homogeneity": "sum(P / (1 + (i - j)^2)); unitless, range (0, 1]; " + _GLCM,
    "contrast": "sum(P (i - j)^2); squared grey levels, range [0, (levels - 1)^2]; " + _GLCM,
    "correlation": (
        "GLCM correlation; unitless, range [-1, 1], 1.0 for a constant image (scikit-image's "
        "convention); " + _GLCM
    ),
}


def descriptions(levels: int = DEFAULT_LEVELS) -> dict[str, str]:
    """Concept name -> description (units, range, how), for images quantized to ``levels``."""
    return {k: v.format(levels=levels) for k, v in _DESCRIPTION_TEMPLATES.items()}


DESCRIPTIONS: dict[str, str] = descriptions(DEFAULT_LEVELS)


def quantize(image: np.ndarray, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """Greyscale ``image`` quantized to integers ``0 .. levels - 1`` (see module docstring).

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W) or (H, W, 3)
    levels : int
        Number of grey levels, 2..256.

    Returns
    -------
    ndarray of uint8, shape (H, W)
    """
    grey = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64) / 255.0
    return np.minimum(np.floor(grey * levels), levels - 1).astype(np.uint8)


def texture_concepts(image: np.ndarray, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """The six GLCM texture concepts of one image, in the order of ``NAMES``.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W) or (H, W, 3), H and W >= 2
    levels : int
        Number of grey levels the image is quantized to before the GLCM.

    Returns
    -------
    ndarray of float64, shape (6,)
        energy, ASM, dissimilarity, homogeneity, contrast, correlation, each averaged
        over the four angles.
    """
    glcm = graycomatrix(
        quantize(image, levels),
        distances=list(DISTANCES),
        angles=list(ANGLES),
        levels=levels,
        symmetric=True,
        normed=True,
    )
    return np.array([graycoprops(glcm, prop).mean() for prop in NAMES], dtype=np.float64)
