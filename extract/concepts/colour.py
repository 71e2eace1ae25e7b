"""Colour concepts (first-order pixel statistics), preset ``probestore_v1`` (G19 §3).

Not the authors' definitions (those are :mod:`.graziani2019`, the default preset):
probestore's own, kept as an option. See docs/science.md §6 for the differences.

Eleven measures per image: the fraction of pixels in each of eight HSV hue ranges,
whiteness, blackness and the Hasler & Süsstrunk (2003) colourfulness. The paper
quantizes HSV space into hue bins and uses saturation / value ranges for white and
black (its Fig. 2a); it does not print the bin edges, so they are fixed here as module
constants and recorded with every concept (``DESCRIPTIONS``) so a store says exactly
what was measured.

Pixel classes (disjoint, so ``sum(hue fractions) + whiteness + blackness <= 1``):

* black:     ``V < BLACK_MAX_VALUE``
* white:     ``S < CHROMA_MIN_SATURATION`` and ``V >= WHITE_MIN_VALUE``
* chromatic: ``S >= CHROMA_MIN_SATURATION`` and ``V >= CHROMA_MIN_VALUE`` -> one hue bin
* the rest (greys of middle value) count in none of the eleven fractions.

Every fraction is divided by the total number of pixels (the paper's
``#blue pixels / #pixels``), not by the number of chromatic pixels, so a mostly grey
image has small hue fractions rather than noisy ones.

A greyscale ``(H, W)`` image is accepted and treated as ``R = G = B``: its saturation
is 0 everywhere, so all eight hue fractions and the colourfulness are 0 while
whiteness and blackness are still meaningful.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2hsv

#: Hue bins in degrees, half-open ``[start, stop)``; red wraps around 0/360.
HUE_BINS_DEG: dict[str, tuple[float, float]] = {
    "red": (345.0, 15.0),
    "orange": (15.0, 45.0),
    "yellow": (45.0, 75.0),
    "green": (75.0, 165.0),
    "cyan": (165.0, 195.0),
    "blue": (195.0, 255.0),
    "purple": (255.0, 285.0),
    "magenta": (285.0, 345.0),
}

#: A pixel is chromatic (counted in a hue bin) when S and V are both at least these.
CHROMA_MIN_SATURATION = 0.2
CHROMA_MIN_VALUE = 0.2
#: White: unsaturated (``S < CHROMA_MIN_SATURATION``) and bright.
WHITE_MIN_VALUE = 0.8
#: Black: dark, whatever the hue and saturation (hue is meaningless there).
BLACK_MAX_VALUE = 0.2

HUE_NAMES: tuple[str, ...] = tuple(HUE_BINS_DEG)
NAMES: tuple[str, ...] = HUE_NAMES + ("whiteness", "blackness", "colourfulness")

DESCRIPTIONS: dict[str, str] = {
    **{
        name: (
            f"fraction of all pixels with HSV hue in [{lo:g}, {hi:g}) degrees"
            f"{' (wrapping through 0)' if lo > hi else ''}, saturation >= "
            f"{CHROMA_MIN_SATURATION:g} and value >= {CHROMA_MIN_VALUE:g}; unitless, range [0, 1]"
        )
        for name, (lo, hi) in HUE_BINS_DEG.items()
    },
    "whiteness": (
        f"fraction of pixels with HSV saturation < {CHROMA_MIN_SATURATION:g} and value >= "
        f"{WHITE_MIN_VALUE:g}; unitless, range [0, 1]"
    ),
    "blackness": (
        f"fraction of pixels with HSV value < {BLACK_MAX_VALUE:g}; unitless, range [0, 1]"
    ),
    "colourfulness": (
        "Hasler & Suesstrunk 2003 M(3): sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + "
        "mean_yb^2), rg = R - G, yb = (R + G)/2 - B, population std; RGB in 0..255 units, "
        "range [0, ~300], 0 for any grey image"
    ),
}

# Upper edges of the bins in order (red first); hue >= the last edge is red again.
_EDGES = np.array([hi for _, hi in HUE_BINS_DEG.values()])
# The bins must tile the hue circle, or searchsorted would silently misfile hues.
assert all(
    a[1] == b[0]
    for a, b in zip(HUE_BINS_DEG.values(), list(HUE_BINS_DEG.values())[1:] + [HUE_BINS_DEG["red"]])
), "HUE_BINS_DEG must be contiguous, in hue order, starting with red"


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def hue_bin_index(hue_deg: np.ndarray) -> np.ndarray:
    """Map hues in degrees ``[0, 360)`` to the index of their bin in ``HUE_NAMES``.

    Kept separate from :func:`colour_concepts` so the wrap-around of red can be
    tested on exact edge values without constructing images.
    """
    idx = np.searchsorted(_EDGES, np.asarray(hue_deg, dtype=np.float64), side="right")
    idx[idx == len(_EDGES)] = 0  # [345, 360) wraps into red
    return idx


def colourfulness(image: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness ``M^(3)`` of an RGB (or grey) image.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3) or (H, W)
        Pixel values in 0..255; the metric is defined in these units.

    Returns
    -------
    float
        ``sqrt(std_rg**2 + std_yb**2) + 0.3 * sqrt(mean_rg**2 + mean_yb**2)`` with
        population (``ddof=0``) standard deviations; 0 for any grey image.
    """
    rgb = _as_rgb(image).astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def colour_concepts(image: np.ndarray) -> np.ndarray:
    """The eleven colour concepts of one image, in the order of ``NAMES``.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3) or (H, W)
        RGB image, or a greyscale one (treated as ``R = G = B``; see module docstring).

    Returns
    -------
    ndarray of float64, shape (11,)
        Eight hue fractions, whiteness, blackness, colourfulness.
    """
    rgb = _as_rgb(image)
    hsv = rgb2hsv(rgb)
    h, s, v = hsv[..., 0].ravel(), hsv[..., 1].ravel(), hsv[..., 2].ravel()
    n = h.size
    chromatic = (s >= CHROMA_MIN_SATURATION) & (v >= CHROMA_MIN_VALUE)
    counts = np.bincount(hue_bin_index(h[chromatic] * 360.0), minlength=len(HUE_NAMES))
    out = np.empty(len(NAMES), dtype=np.float64)
    out[: len(HUE_NAMES)] = counts / n
    out[len(HUE_NAMES)] = np.count_nonzero((s < CHROMA_MIN_SATURATION) & (v >= WHITE_MIN_VALUE)) / n
    out[len(HUE_NAMES) + 1] = np.count_nonzero(v < BLACK_MAX_VALUE) / n
    out[len(HUE_NAMES) + 2] = colourfulness(rgb)
    return out
