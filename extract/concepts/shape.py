"""Shape concepts of a digit-like object, preset ``probestore_v1`` (G19 §4; RCV paper [12]).

Not the authors' definitions (those are :mod:`.graziani2019`, the default preset: the
whole min-max-thresholded mask): probestore's own, kept as an option (docs/science.md §6).

Three measures of the largest foreground object in a greyscale image: area,
eccentricity and perimeter, measured with ``skimage.measure.regionprops``.

Foreground rule: ``pixel > FOREGROUND_FRACTION * max(image)`` with the fraction 0.5.
A fixed fraction of the maximum is used rather than Otsu's threshold because it is
defined for every image (Otsu is undefined on a constant image and unstable on
nearly empty ones), it is invariant to the image's overall brightness, and on MNIST's
bright-stroke-on-black digits it keeps the stroke core, as the RCV paper's masks do.
An all-zero image has no foreground. RGB images are converted with
``skimage.color.rgb2gray`` first.

The object is the largest 8-connected region (``connectivity=2``: digit strokes often
touch only diagonally); on a tie the region met first in raster order wins, so the
result is deterministic. An image with no foreground gives area 0, eccentricity 0,
perimeter 0 (not NaN), so the concept arrays stay finite for the probes.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.measure import label, regionprops

NAMES: tuple[str, ...] = ("area", "eccentricity", "perimeter")

#: Foreground is ``pixel > FOREGROUND_FRACTION * max(image)``.
FOREGROUND_FRACTION = 0.5
#: 8-connectivity for the connected regions.
CONNECTIVITY = 2

_OBJ = (
    f"of the largest 8-connected region of pixels > {FOREGROUND_FRACTION:g} * image max; "
    "0 when the image has no foreground"
)

DESCRIPTIONS: dict[str, str] = {
    "area": "pixel count " + _OBJ + "; pixels, range [0, H*W]",
    "eccentricity": (
        "eccentricity of the ellipse with the region's second moments (0 circle, ->1 line) "
        + _OBJ
        + "; unitless, range [0, 1)"
    ),
    "perimeter": (
        "perimeter estimate of skimage regionprops (4-neighbourhood contour, diagonal steps "
        "sqrt(2)) " + _OBJ + "; pixels, range [0, ~4*H*W]"
    ),
}


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask ``image > FOREGROUND_FRACTION * max(image)``; all False when max is 0.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W) or (H, W, 3)

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    grey = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64)
    peak = grey.max()
    if peak <= 0:
        return np.zeros(grey.shape, dtype=bool)
    return grey > FOREGROUND_FRACTION * peak


def largest_region(mask: np.ndarray) -> np.ndarray:
    """Mask of the largest ``CONNECTIVITY``-connected region of ``mask`` (ties: first label)."""
    labels = label(mask, connectivity=CONNECTIVITY)
    sizes = np.bincount(labels.ravel())
    if sizes.size <= 1:  # background only
        return np.zeros(mask.shape, dtype=bool)
    return labels == 1 + int(np.argmax(sizes[1:]))


def shape_concepts(image: np.ndarray) -> np.ndarray:
    """Area, eccentricity and perimeter of the largest foreground object, in ``NAMES`` order.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W) or (H, W, 3)
        A digit-like image: a bright object on a dark background.

    Returns
    -------
    ndarray of float64, shape (3,)
        ``[area, eccentricity, perimeter]``; zeros when there is no foreground.
    """
    region = largest_region(foreground_mask(image))
    if not region.any():
        return np.zeros(len(NAMES), dtype=np.float64)
    props = regionprops(region.astype(np.uint8))[0]
    return np.array([props.area, props.eccentricity, props.perimeter], dtype=np.float64)
