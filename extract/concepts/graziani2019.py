"""The concept measures exactly as Graziani et al. (2019) computed them (preset ``graziani2019``).

Source: the authors' published code, ``flawed_utils.py`` of
github.com/maragraziani/intentionally_flawed_models (colour and texture, DTD), the same
functions in ``color_analysis.py`` / ``texture_analysis.py`` of maragraziani/rcvtool, and
``binarize_image`` / ``get_region_measure`` of maragraziani/ConceptAttribution
(``lib/rcv_tool.py``; the shape measures of the RCV paper that G19 §4 cites as [12]).
Each measure here reproduces what that code *computes* from a uint8 RGB image, including
three quirks (documented in docs/science.md §6, where each is weighed): the red range
loses its upper half, colourfulness reads the RGB channels as BGR, and the hue ranges
share their end points. A result that differs from the authors' code is a bug here.

OpenCV is not a dependency: the authors' ``cv2.cvtColor(..., COLOR_BGR2HSV)`` on uint8
images is reproduced by :func:`opencv_hsv`, OpenCV's own fixed-point formula (its
``RGB2HSV_b``), which equals OpenCV 4.14 on all 2^24 RGB colours. A floating-point HSV
(``skimage.color.rgb2hsv``) with rescaled thresholds is *not* equivalent: 4.0% of all
RGB colours then land in a different set of the ten colour classes, because OpenCV
rounds hue and saturation through 12-bit lookup tables.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops
from skimage.util import img_as_ubyte

# ----------------------------------------------------------------------------- colour

#: OpenCV 8-bit hue ranges (H = degrees / 2, 0..179), both ends inclusive (``cv2.inRange``).
#: The authors' red is ``[165, 180] or [0, 10]`` but their ``cv2.bitwise_or(mask1, mask1,
#: mask2)`` passes ``mask2`` as the *output* argument, so only ``[0, 10]`` is counted.
HUE_RANGES_CV: dict[str, tuple[int, int]] = {
    "red": (0, 10),
    "orange": (10, 25),
    "yellow": (25, 40),
    "green": (40, 75),
    "cyan": (75, 100),  # the authors' "cyano"
    "blue": (100, 125),
    "purple": (125, 145),
    "magenta": (145, 165),
}
#: A pixel counts in a hue range when also ``S >= 50`` and ``V >= 77`` (OpenCV 0..255 units).
CHROMA_MIN_S = 50
CHROMA_MIN_V = 77
#: White: ``S <= 50`` and ``V >= 190``; black: ``S <= 100`` and ``V <= 100`` (any hue).
WHITE_MAX_S = 50
WHITE_MIN_V = 190
BLACK_MAX_S = 100
BLACK_MAX_V = 100

HUE_NAMES: tuple[str, ...] = tuple(HUE_RANGES_CV)
COLOUR_NAMES: tuple[str, ...] = HUE_NAMES + ("whiteness", "blackness", "colourfulness")

_HSV_SHIFT = 12
_DIVISORS = np.arange(1, 256, dtype=np.float64)
#: OpenCV's tables: ``round((255 << 12) / v)`` and ``round((180 << 12) / (6 diff))``.
_S_DIV = np.concatenate([[0], np.rint((255 << _HSV_SHIFT) / _DIVISORS)]).astype(np.int64)
_H_DIV = np.concatenate([[0], np.rint((180 << _HSV_SHIFT) / (6 * _DIVISORS))]).astype(np.int64)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def opencv_hsv(rgb: np.ndarray) -> np.ndarray:
    """HSV of uint8 RGB pixels exactly as ``cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)`` gives it.

    OpenCV's 8-bit formula: ``V = max``, ``S = round(255 (V - min) / V)`` and
    ``H = hue in degrees / 2`` (0..179), both divisions done with 12-bit fixed-point
    tables and the ties of the max resolved in the order R, G, B.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (..., 3)
        Red, green, blue (the authors convert RGB to BGR first, so this is the same).

    Returns
    -------
    ndarray of int64, shape (..., 3)
        H in 0..179, S and V in 0..255.
    """
    c = np.asarray(rgb).astype(np.int64)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    v = c.max(axis=-1)
    diff = v - c.min(axis=-1)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _S_DIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _H_DIV[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1)


def colorfulness(image: np.ndarray) -> float:
    """The authors' ``colorfulness``: Hasler & Suesstrunk's M(3) on abs values, R and B swapped.

    Their code splits an RGB image as ``(B, G, R) = cv2.split(img)``, so its "R" is the
    blue channel and its "B" the red one, and it takes absolute values before the
    statistics: ``rg = |b - g|``, ``yb = |(b + g)/2 - r|``, then
    ``sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)`` (population std).
    """
    rgb = _as_rgb(image).astype(np.float64)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = np.abs(blue - green)
    yb = np.abs(0.5 * (blue + green) - red)
    return float(np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


def colour_concepts(image: np.ndarray) -> np.ndarray:
    """The eleven colour concepts of one image, in the order of ``COLOUR_NAMES``.

    Each fraction is ``#pixels in range / (H * W)``, as the authors' ``colorness``. A
    greyscale ``(H, W)`` image (which their code cannot take) is read as ``R = G = B``:
    S = 0, so only whiteness and blackness can be non-zero.
    """
    h, s, v = np.moveaxis(opencv_hsv(_as_rgb(image)), -1, 0)
    n = h.size
    chroma = (s >= CHROMA_MIN_S) & (v >= CHROMA_MIN_V)
    out = np.empty(len(COLOUR_NAMES), dtype=np.float64)
    for k, (lo, hi) in enumerate(HUE_RANGES_CV.values()):
        out[k] = np.count_nonzero(chroma & (h >= lo) & (h <= hi)) / n
    out[len(HUE_NAMES)] = np.count_nonzero((s <= WHITE_MAX_S) & (v >= WHITE_MIN_V)) / n
    out[len(HUE_NAMES) + 1] = np.count_nonzero((s <= BLACK_MAX_S) & (v <= BLACK_MAX_V)) / n
    out[len(HUE_NAMES) + 2] = colorfulness(image)
    return out


# ----------------------------------------------------------------------------- texture

TEXTURE_NAMES: tuple[str, ...] = ("energy", "ASM", "dissimilarity", "homogeneity", "contrast", "correlation")


def grey_ubyte(image: np.ndarray) -> np.ndarray:
    """``img_as_ubyte(rgb2gray(image))``: luma 0.2125 R + 0.7154 G + 0.0721 B, rounded to 0..255.

    A greyscale uint8 image is returned as it is (the authors' scikit-image of 2019 let
    ``rgb2gray`` pass 2-D images through; ``img_as_ubyte`` of a uint8 image is a no-op).
    """
    if image.ndim == 2:
        return np.ascontiguousarray(image, dtype=np.uint8)
    return img_as_ubyte(rgb2gray(image))


def texture_concepts(image: np.ndarray) -> np.ndarray:
    """The six GLCM properties of one image, in ``TEXTURE_NAMES`` order.

    ``graycomatrix(grey_ubyte(image), [1], [0], symmetric=True, normed=True)``: 256 grey
    levels, one pixel to the right (angle 0 only), then ``graycoprops``.
    """
    glcm = graycomatrix(grey_ubyte(image), [1], [0], levels=256, symmetric=True, normed=True)
    return np.array([graycoprops(glcm, prop)[0, 0] for prop in TEXTURE_NAMES], dtype=np.float64)


# ----------------------------------------------------------------------------- shape

SHAPE_NAMES: tuple[str, ...] = ("area", "eccentricity", "perimeter")


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """The authors' ``binarize_image``: ``(x - min) / (max - min) > 0.5``; all False if constant.

    RGB images go through ``rgb2gray`` first (the authors' shape code only saw greyscale
    MNIST; on RGB it would threshold every channel into a 3-D mask).
    """
    grey = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64)
    low, high = grey.min(), grey.max()
    if high <= low:  # their code divides 0 by 0 here: NaN > 0.5 is False everywhere
        return np.zeros(grey.shape, dtype=bool)
    return (grey - low) / (high - low) > 0.5


def shape_concepts(image: np.ndarray) -> np.ndarray:
    """Area, eccentricity, perimeter of the *whole* foreground mask as one region.

    ``regionprops(mask)[0]`` with every foreground pixel labelled 1, however many
    separate pieces it has. Zeros when there is no foreground (their code raises).
    """
    mask = foreground_mask(image)
    if not mask.any():
        return np.zeros(len(SHAPE_NAMES), dtype=np.float64)
    props = regionprops(mask.astype(np.uint8))[0]
    return np.array([props.area, props.eccentricity, props.perimeter], dtype=np.float64)


# ----------------------------------------------------------------------------- descriptions

_SRC = "Graziani et al. 2019 code"
_CHROMA = f"OpenCV 8-bit HSV, S >= {CHROMA_MIN_S} and V >= {CHROMA_MIN_V} (of 255)"
_GLCM = ("GLCM of img_as_ubyte(rgb2gray(image)) at 256 grey levels, distance 1, angle 0 only, "
         "symmetric, normalised (" + _SRC + ")")
_MASK = ("of the whole foreground mask (all pieces as one region), foreground = min-max scaled "
         "grey > 0.5; 0 when the image is constant (" + _SRC + ")")

DESCRIPTIONS: dict[str, str] = {
    **{
        name: (f"fraction of all pixels with OpenCV hue H in [{lo}, {hi}] (degrees / 2, ends "
               f"included), {_CHROMA}; unitless, range [0, 1] ({_SRC}"
               + ("; their red range [165, 180] is lost to a cv2.bitwise_or argument slip)"
                  if name == "red" else ")"))
        for name, (lo, hi) in HUE_RANGES_CV.items()
    },
    "whiteness": (f"fraction of pixels with OpenCV HSV S <= {WHITE_MAX_S} and V >= {WHITE_MIN_V} "
                  f"(of 255); unitless, range [0, 1] ({_SRC})"),
    "blackness": (f"fraction of pixels with OpenCV HSV S <= {BLACK_MAX_S} and V <= {BLACK_MAX_V} "
                  f"(of 255); unitless, range [0, 1] ({_SRC})"),
    "colourfulness": ("Hasler & Suesstrunk M(3) as the authors' code computes it: rg = |B - G|, "
                      "yb = |(B + G)/2 - R| (their cv2.split reads RGB as BGR), sqrt(std_rg^2 + "
                      "std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2), population std; 0..255 units"),
    "energy": "sqrt(ASM); unitless, range (0, 1]; " + _GLCM,
    "ASM": "angular second moment sum(P^2); unitless, range (0, 1]; " + _GLCM,
    "dissimilarity": "sum(P |i - j|); grey levels, range [0, 255]; " + _GLCM,
    "homogeneity": "sum(P / (1 + (i - j)^2)); unitless, range (0, 1]; " + _GLCM,
    "contrast": "sum(P (i - j)^2); squared grey levels, range [0, 255^2]; " + _GLCM,
    "correlation": ("GLCM correlation; unitless, range [-1, 1], 1.0 for a constant image "
                    "(scikit-image's convention); " + _GLCM),
    "area": "pixel count " + _MASK + "; pixels",
    "eccentricity": ("eccentricity of the ellipse with the mask's second moments (0 circle, ->1 "
                     "line) " + _MASK + "; unitless, range [0, 1)"),
    "perimeter": ("skimage regionprops perimeter (4-neighbourhood contour, diagonal steps "
                  "sqrt(2)) " + _MASK + "; pixels"),
}
